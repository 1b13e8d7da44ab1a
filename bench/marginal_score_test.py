"""Is the marginal likelihood consistent with the data at the truth? A score test on one simulated cell.

Under a correctly specified model the expected score at the true parameters is zero. This script simulates `--n`
traces of the fast-switching cell (ON periods of 5 min, r_c 150 nm, σ_loc 20 nm given), sets the parameters to the
truth as the frame-level model sees it (r_c and k_on: the truth-state MLE on the same traces; k_off: the frame-level
rate of the true path; loading rate, amplitude and MS2 noise: the simulator's), and reports for each log parameter
z = Σ_b s_b / √(Σ_b s_b²), s_b the per-trace score (central differences). With `--condition-frames H` the score is the
one of log p(y_{H..T−1} | y_{0..H−1}, distances): it leaves out the initial window, whose pre-trace history the model
approximates (the `model-consistent` variant has no loadings before the first frame at all). z ≈ N(0, 1) for a
consistent likelihood; a z of −3 on r_c says that the likelihood at the truth pulls the radius down.

Variants as in `marginal_bias_diagnosis.py` (`simulator`, `small-loadings`, `noiseless`, `model-consistent`). One JSON
line per (variant, truncation), appended to `--jsonl` when given.

    python bench/marginal_score_test.py --variant simulator --dt 60 --frames 121 --max-switches 2 -1
    python bench/marginal_score_test.py --variant model-consistent --dt 30 --frames 241 --max-switches 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import torch
from marginal_bias_diagnosis import cell_params, model_consistent_ms2

from xai_hsg.marginal import MarginalConfig, MarginalData, MarginalParams, marginal_loglik
from xai_hsg.radius import RadiusMLE
from xai_hsg.simulate import simulate
from xai_hsg.tracks import TraceArrays

NAMES = ("r_c_nm", "k_on_per_s", "k_off_per_s", "load_amp_per_s")


def frame_level_truth(arrays: TraceArrays, p) -> MarginalParams:
    "The parameters as the frame-level model sees the simulated truth (see the module docstring)."
    ts = RadiusMLE(sigma_loc_nm=p.sigma_loc_nm, n_boot=0).fit(arrays)
    s = arrays.state.astype(float)
    on_before = s[:, :-1] == 1
    p10 = float(((s[:, 1:] == 0) & on_before).sum() / on_before.sum())
    f_on = float(np.clip(s[:, 0].mean(), 1e-6, 1 - 1e-6))
    return MarginalParams(
        ts.r_c_nm_,
        ts.k_on_per_s_,
        -math.log(1 - p10) / p.dt_s,
        p.nu_on_per_s * p.amplitude,
        p.amplitude,
        p.sigma_ms2,
        1e-9,
        f_on / (1 - f_on),
    )


def score_z(full: MarginalData, head: MarginalData | None, theta: torch.Tensor, h: float = 1e-3) -> dict:
    "z of each parameter in `NAMES` (the conditional score when `head`, the first frames' data, is given)."
    loglik = lambda th: marginal_loglik(full, th) - (0.0 if head is None else marginal_loglik(head, th))
    out = {}
    with torch.no_grad():
        for name in NAMES:
            e = torch.zeros_like(theta)
            e[MarginalParams.LOG_NAMES.index(name)] = h
            s = ((loglik(theta + e) - loglik(theta - e)) / (2 * h)).numpy()
            out[name] = float(s.sum() / math.sqrt((s**2).sum()))
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--variant", default="simulator", choices=("simulator", "small-loadings", "noiseless", "model-consistent")
    )
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dt", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=241)
    ap.add_argument("--max-switches", type=int, nargs="+", default=[2], help="truncation m; -1: all compound states")
    ap.add_argument("--condition-frames", type=int, default=30, help="H (0: the unconditional score)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = cell_params(args.variant, 150.0).replace(dt_s=args.dt, n_frames=args.frames)
    arrays = simulate(args.n, p, seed=args.seed).to_arrays()
    if args.variant == "model-consistent":
        arrays = dataclasses.replace(arrays, ms2=model_consistent_ms2(arrays.state.astype(float), p, args.seed))
    truth = frame_level_truth(arrays, p)
    H = args.condition_frames
    head = None
    if H > 0:
        head = TraceArrays(
            distance_nm=arrays.distance_nm[:, :H], dt_s=p.dt_s, vector_nm=arrays.vector_nm[:, :H], ms2=arrays.ms2[:, :H]
        )
    rows = []
    for m in args.max_switches:
        t0 = time.perf_counter()
        cfg = MarginalConfig(p.t_rise_s, p.t_plateau_s, max_switches=None if m < 0 else m)
        full = MarginalData.from_arrays(arrays, p.sigma_loc_nm, cfg)
        head_data = None if head is None else MarginalData.from_arrays(head, p.sigma_loc_nm, cfg)
        row = dict(variant=args.variant, n_traces=args.n, seed=args.seed, dt_s=p.dt_s, n_frames=p.n_frames)
        row.update(max_switches=None if m < 0 else m, n_states=full.states.n_states, condition_frames=H)
        row.update(truth={k: getattr(truth, k) for k in NAMES}, z=score_z(full, head_data, truth.to_log()))
        row["seconds"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
