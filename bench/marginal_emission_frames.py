"""The marginal model's two MS2 emissions on the same grid cells and the same frames: which part of a difference is
the emission and which the frame interval.

The count emission (`MarginalRadius(emission="counts")`, the loading counts in the compound state) needs frames 60 s
apart with the default kernel, so on 30-s data `fit-radius --emission counts` fits every second frame. This script
simulates one acceptance-grid cell of `check_marginal_radius.py` (same parameters and seed), and fits r_c with σ_loc
given: the Gaussian emission on every frame and on every `--step`-th frame, and the count emission on every
`--step`-th frame; the truth-state MLE beside. One JSON line per cell (point estimates only: no intervals).

    python bench/marginal_emission_frames.py --cell "default, r_c 150, sigma_loc 20" --seed 103
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from check_marginal_radius import SIGMA_LOC_NM, grid_cells

from xai_hsg.marginal import MarginalRadius, decimate
from xai_hsg.radius import RadiusMLE
from xai_hsg.simulate import SimParams, simulate


def run(cell: str, seed: int, n: int = 300, frames: int = 241, step: int = 2) -> dict:
    "r_c (nm) of each emission × frame spacing on one grid cell (σ_loc given), with the truth-state MLE."
    match = [changes for name, changes, s in grid_cells() if name == cell and s == seed]
    if not match:
        raise SystemExit(f"no grid cell {cell!r} with seed {seed}")
    base = dict(n_frames=frames, dt_s=60.0, r_c_nm=150.0, sigma_loc_nm=SIGMA_LOC_NM, k_off_per_s=1 / 600)
    params = SimParams(**{**base, **match[0]})
    arrays = simulate(n, params, seed=seed).to_arrays()
    row = dict(cell=cell, seed=seed, n_traces=n, dt_s=params.dt_s, step=step, r_c_true=params.r_c_nm)
    row["sigma_loc_true"] = params.sigma_loc_nm
    row["truth_state_mle"] = RadiusMLE(sigma_loc_nm=params.sigma_loc_nm, n_boot=0).fit(arrays).r_c_nm_
    coarse = decimate(arrays, step)
    for key, data, emission in (
        ("gaussian_all_frames", arrays, "gaussian"),
        ("gaussian_every_step", coarse, "gaussian"),
        ("counts_every_step", coarse, "counts"),
    ):
        t0 = time.perf_counter()
        est = MarginalRadius(sigma_loc_nm=params.sigma_loc_nm, emission=emission).fit(data)
        row[key] = est.r_c_nm_
        row[f"{key}_k_on"] = est.k_on_per_s_
        row[f"{key}_seconds"] = time.perf_counter() - t0
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", required=True, help='a grid cell name, e.g. "default, r_c 150, sigma_loc 20"')
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n", type=int, default=300, help="traces")
    ap.add_argument("--step", type=int, default=2, help="fit every step-th frame (the count emission's spacing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", default=None, help="append the row here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    row = run(args.cell, args.seed, args.n, step=args.step)
    print(json.dumps(row), flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
