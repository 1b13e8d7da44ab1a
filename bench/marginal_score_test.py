"""Is the marginal likelihood consistent with the data at the truth? A score test on one simulated cell.

Under a correctly specified model the expected score at the true parameters is zero. This script simulates `--n`
traces of the fast-switching cell (ON periods of 5 min, r_c 150 nm, σ_loc 20 nm given), sets the parameters to the
truth as the frame-level model sees it (r_c and k_on: the truth-state MLE on the same traces; k_off: the frame-level
rate of the true path; loading rate, amplitude and MS2 noise: the simulator's), and reports for each log parameter
z = Σ_b s_b / √(Σ_b s_b²), s_b the per-trace score (central differences). With `--condition-frames H` the score is the
one of log p(y_{H..T−1} | y_{0..H−1}, distances): it leaves out the initial window, whose pre-trace history the model
approximates (the `model-consistent` variant has no loadings before the first frame at all). Under a consistent
likelihood each z is N(0, ≤ 1) (≤: the truth is the same traces' truth-state MLE, which absorbs part of the score).

Read r_c's *efficient* z (`r_c_nm_efficient`), not its raw z: the data pin k_on·r_c³ far better than r_c, so r_c's raw
score is mostly the part that k_on would absorb, and its raw z can sit near 0 while the profile likelihood of r_c falls
by several nats toward the truth. The efficient score u_b = s_{b,r} − I_rn·I_nn⁻¹·s_{b,n} (I = Σ_b s_b s_bᵀ over every
fitted parameter) is what is left once the others have absorbed what they can: the test the profile likelihood sees.

Variants as in `marginal_bias_diagnosis.py` (`simulator`, `small-loadings`, `noiseless`, `model-consistent`,
`model-drawn`: the promoter path too drawn from the model's own chain, so that only the truncation separates data and
model). One JSON line per (variant, truncation), appended to `--jsonl` when given; `--combine` prints the rows of
`--jsonl` combined over seeds (Stouffer's Σz/√k per variant).

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
from marginal_bias_diagnosis import cell_params, model_consistent_ms2, model_drawn

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
    """z of each parameter in `NAMES` and the efficient score's z of r_c (the conditional scores when `head`, the first
    frames' data, is given). Per-trace scores s_b of every fitted log parameter (all but ν_off) by central differences;
    the efficient score of r_c is u_b = s_{b,r} − I_rn·I_nn⁻¹·s_{b,n} with I = Σ_b s_b s_bᵀ: what is left of r_c's
    score once the other parameters (k_on above all: the data pin k_on·r_c³ far better than r_c) absorb what they
    can. It is the test that a profile likelihood sees; a raw z of r_c can be small while the profile falls steeply."""
    loglik = lambda th: marginal_loglik(full, th) - (0.0 if head is None else marginal_loglik(head, th))
    names = [n for n in MarginalParams.LOG_NAMES if n != "nu_off_fraction"]
    cols = []
    with torch.no_grad():
        for name in names:
            e = torch.zeros_like(theta)
            e[MarginalParams.LOG_NAMES.index(name)] = h
            cols.append(((loglik(theta + e) - loglik(theta - e)) / (2 * h)).numpy())
    S = np.stack(cols, 1)  # [B, P]
    z = lambda v: float(v.sum() / math.sqrt((v**2).sum()))
    out = {name: z(S[:, names.index(name)]) for name in NAMES}
    info = S.T @ S
    r = names.index("r_c_nm")
    rest = [i for i in range(len(names)) if i != r]
    u = S[:, r] - S[:, rest] @ np.linalg.solve(info[np.ix_(rest, rest)], info[rest, r])
    out["r_c_nm_efficient"] = z(u)
    return out


def combine(rows: list[dict]) -> list[dict]:
    """Per (variant, frame interval, truncation, conditioning): the seeds' z combined as Σz/√k (Stouffer), which is
    N(0, ≤ 1) under a consistent likelihood when each z is (the seeds are independent simulations)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r["dt_s"], r["max_switches"], r["condition_frames"]), []).append(r)
    out = []
    for (variant, dt_s, m, H), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        k = len(rs)
        z = {
            name: sum(r["z"][name] for r in rs) / math.sqrt(k) for name in rs[0]["z"] if all(name in r["z"] for r in rs)
        }
        out.append(
            dict(variant=variant, dt_s=dt_s, max_switches=m, condition_frames=H, seeds=[r["seed"] for r in rs], z=z)
        )
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--variant",
        default="simulator",
        choices=("simulator", "small-loadings", "noiseless", "model-consistent", "model-drawn"),
    )
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dt", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=241)
    ap.add_argument("--max-switches", type=int, nargs="+", default=[2], help="truncation m; -1: all compound states")
    ap.add_argument("--condition-frames", type=int, default=30, help="H (0: the unconditional score)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--combine", action="store_true", help="print the rows of --jsonl combined over seeds, run nothing")
    args = ap.parse_args(argv)
    if args.combine:
        with open(args.jsonl) as f:
            out = combine([json.loads(line) for line in f if line.strip()])
        for row in out:
            print(json.dumps(row))
        return out
    torch.set_num_threads(args.threads)
    p = cell_params(args.variant, 150.0).replace(dt_s=args.dt, n_frames=args.frames)
    arrays = simulate(args.n, p, seed=args.seed).to_arrays()
    if args.variant == "model-consistent":
        arrays = dataclasses.replace(arrays, ms2=model_consistent_ms2(arrays.state.astype(float), p, args.seed))
    elif args.variant == "model-drawn":
        arrays = model_drawn(arrays, p, args.seed)
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
