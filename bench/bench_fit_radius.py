"""Benchmark: `xai-hsg fit-radius` on 2,000 traces x 241 frames vs the seeds' design on the same tracks.

Ours: `radius.fit_radius` on a tracks file (read + validate, held-out split, maximum likelihood, bootstrap
interval). Baseline: the seeds' design (`models.SeedsGateModel`, state task, per-trace max-normalised distance,
sigmoid gate x input, sparsity penalty) trained for `--baseline-epochs` epochs. Both run in this process, on the
same file; printed: wall time of each, their ratio, and the radius each reports against the simulated truth.
Goal (issue): ours within 10 minutes on 2 CPU cores.

    python bench/bench_fit_radius.py [--n 2000] [--frames 241] [--boot 200] [--baseline-epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xai_hsg import models, radius
from xai_hsg.simulate import SimParams, write_simulation
from xai_hsg.tracks import read_tracks


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=241)
    ap.add_argument("--rc", type=float, default=150.0)
    ap.add_argument("--sigma-loc", type=float, default=20.0)
    ap.add_argument("--k-off", type=float, default=1 / 300, help="ON->OFF rate, 1/s (5-min ON periods)")
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--baseline-epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    params = SimParams(n_frames=args.frames, r_c_nm=args.rc, sigma_loc_nm=args.sigma_loc, k_off_per_s=args.k_off)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tracks_path, _ = write_simulation(Path(tmp), args.n, params, seed=args.seed)
        print(
            f"simulated and wrote {args.n} traces x {args.frames} frames in {time.perf_counter() - t0:.1f} s "
            f"(r_c = {args.rc:g} nm, sigma_loc = {args.sigma_loc:g} nm)"
        )

        t0 = time.perf_counter()
        fit = radius.fit_radius(
            tracks_path, Path(tmp) / "fit.json", sigma_loc_nm=args.sigma_loc, n_boot=args.boot, seed=args.seed
        )
        t_ours = time.perf_counter() - t0

        t0 = time.perf_counter()
        arrays = read_tracks(tracks_path).to_arrays()
        data = models.to_tensors(arrays)
        seeds = models.SeedsGateModel(task="state")
        hist = models.train(seeds, data, models.TrainConfig(epochs=args.baseline_epochs, seed=args.seed, verbose=False))
        t_base = time.perf_counter() - t0

    lo, hi = fit["r_c_interval_nm"]
    r_ours = fit["r_c_nm"]
    print(
        f"  ours (fit-radius, {args.boot} bootstraps): {t_ours:8.1f} s   r_c = {r_ours:.1f} nm "
        f"[{lo:.1f}, {hi:.1f}] (truth {args.rc:g} nm)   budget 600 s: {'met' if t_ours <= 600 else 'MISSED'}"
    )
    print(
        f"  seeds' design ({args.baseline_epochs} epochs):  {t_base:8.1f} s   r_c = {hist['radius_nm'][-1]:.1f} nm-equivalent"
    )
    print(
        f"  time ratio (seeds' design / ours): {t_base / t_ours:.2f}x;  "
        f"relative error ours {abs(r_ours / args.rc - 1):.1%}, seeds' design {abs(hist['radius_nm'][-1] / args.rc - 1):.1%}"
    )


if __name__ == "__main__":
    main()
