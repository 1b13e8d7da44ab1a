"""Where the marginal model's bridges are anchored: the observed ends of each interval, or the smoothed true vectors.

The marginal model multiplies the intervals' OFF→ON laws along a promoter path. Bridged on its own two observed ends
(`anchor="observed"`), each interval's contact probability is a correct conditional given those two frames, but the
product is not the law of the path given all the distances: neighbouring frames also say where the true end was, and
two intervals that share a frame share its error. `anchor="smoothed"` (the default) bridges on the Kalman–RTS
smoothed vectors (`xai_hsg.neural_radius.smoothed_ends`). This script reports, on one simulated cell, r_c's efficient
score z at the frame-level truth (as `marginal_score_test.py`: N(0, ≤ 1) under a consistent likelihood) for both
anchors on the same traces, and with `--fit` both fits of r_c (σ_loc given, or estimated with `--estimate-sigma` as
`fit-radius` does). `--variance-kept 0.5` keeps one slow Rouse mode (an Ornstein–Uhlenbeck E–P vector: Markov motion,
no sub-frame modes; use `--msd-exponent 1` with it). One JSON line per run.

    python bench/marginal_smoothed_ends.py --seed 1 --dt 60 --frames 121 --n 4000 --sigma-loc 40
    python bench/marginal_smoothed_ends.py --seed 101 --dt 30 --frames 241 --n 300 --estimate-sigma --fit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from marginal_bias_diagnosis import cell_params
from marginal_score_test import frame_level_truth, score_z

from xai_hsg.identify import estimate_sigma_loc
from xai_hsg.marginal import MarginalRadius
from xai_hsg.radius import RadiusMLE
from xai_hsg.simulate import simulate

ANCHORS = ("observed", "smoothed")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dt", type=float, default=60.0)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--sigma-loc", type=float, default=20.0)
    ap.add_argument("--r-c", type=float, default=150.0)
    ap.add_argument("--k-off", type=float, default=1 / 300, help="ON→OFF rate (1/s)")
    ap.add_argument("--variance-kept", type=float, default=0.999, help="Rouse modes kept (0.5: one slow mode, ~OU)")
    ap.add_argument("--msd-exponent", type=float, default=0.5, help="the bridge's MSD exponent inside a frame")
    ap.add_argument("--estimate-sigma", action="store_true", help="σ_loc from the vectors (as fit-radius does)")
    ap.add_argument("--fit", action="store_true", help="also fit r_c with both anchors (slower)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = cell_params("simulator", args.r_c).replace(
        dt_s=args.dt, n_frames=args.frames, sigma_loc_nm=args.sigma_loc, k_off_per_s=args.k_off
    )
    p = p.replace(variance_kept=args.variance_kept)
    arrays = simulate(args.n, p, seed=args.seed).to_arrays()
    truth = frame_level_truth(arrays, p)
    if args.msd_exponent != 0.5:  # the truth-state MLE under the same bridge
        ts = RadiusMLE(sigma_loc_nm=p.sigma_loc_nm, n_boot=0, msd_exponent=args.msd_exponent).fit(arrays)
        truth = dataclasses.replace(truth, r_c_nm=ts.r_c_nm_, k_on_per_s=ts.k_on_per_s_)
    sigma = estimate_sigma_loc(arrays, n_boot=0).sigma_loc_nm if args.estimate_sigma else p.sigma_loc_nm
    row = dict(n_traces=args.n, seed=args.seed, dt_s=p.dt_s, n_frames=p.n_frames, sigma_loc_nm=p.sigma_loc_nm)
    row.update(k_off_per_s=p.k_off_per_s, variance_kept=p.variance_kept, msd_exponent=args.msd_exponent)
    row.update(r_c_true=p.r_c_nm, truth_state_mle=truth.r_c_nm, sigma_loc_used_nm=sigma)
    for anchor in ANCHORS:
        t0 = time.perf_counter()
        est = MarginalRadius(sigma, p.t_rise_s, p.t_plateau_s, max_switches=2, anchor=anchor)
        data = est._data(arrays)
        if args.msd_exponent != 0.5:
            data = data._replace(terms=_terms(arrays, sigma, anchor, args.msd_exponent))
        row[f"{anchor}_z_efficient"] = score_z(data, None, truth.to_log())["r_c_nm_efficient"]
        row[f"{anchor}_anchor_used"] = data.terms.anchor
        if args.fit:
            est._data = lambda a, d=data: d  # fit on these tensors
            row[f"{anchor}_r_c_nm"] = est.fit(arrays).r_c_nm_
        row[f"{anchor}_seconds"] = time.perf_counter() - t0
    print(json.dumps(row), flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def _terms(arrays, sigma_loc_nm: float, anchor: str, msd_exponent: float):
    from xai_hsg.neural_radius import interval_terms

    return interval_terms(arrays, sigma_loc_nm, msd_exponent=msd_exponent, anchor=anchor)


if __name__ == "__main__":
    main()
