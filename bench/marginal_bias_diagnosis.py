"""Where the marginal model's low radius at fast switching comes from: the same fit on variants of one simulated cell.

The cell: fast switching (ON periods of 5 min), 30-s frames, 241 frames, r_c 150 nm, σ_loc 20 nm given (`--k-off`,
`--r-c` and `--sigma-loc` change it: `--k-off 2.78e-4` is the simulator's default, ON periods of 1 h). `MarginalRadius`
(the `fit-radius` engine, σ_loc given so that its estimate is out of the question) beside the truth-state `RadiusMLE`.
Variants of the MS2 the fit reads (distances and the promoter path are the simulator's in every variant):

- `simulator`: the simulator's MS2 (Pol II loadings of 0.5 at 0.5/min, Gaussian noise σ = 1);
- `small-loadings`: 20× the loadings at 1/20 the amplitude (the same mean signal; Poisson noise negligible);
- `noiseless`: small loadings and σ = 0.1 (switch times well located by MS2);
- `model-consistent`: MS2 regenerated from the frame states exactly as the model assumes (the state of frame t holds
  over the interval (t − 1, t], loadings Poisson within it at uniform times), small loadings, σ = 1;
- `model-drawn`: the promoter path *and* the MS2 drawn from the model itself: the chain of `marginal_loglik` on the
  simulated distances (OFF→ON with probability 1 − exp(−k_on·Δt·ḡ) from the model's own gate ḡ, ON→OFF with
  exp(−k_off·Δt) kept), the emission's mean a·Δt·Σ_l κ_l·s_{t−l} plus Gaussian noise σ = 1 (the small-loading limit).
  The only approximation left between data and fit is the truncation, so a fit that misses here misses by the
  information in the data (or a fault of the fit), not by a difference between simulator and model.

`--profile` adds the profile log-likelihood at a few radii (k_on and the rest refitted at each); `--fit-sigma-loc`
fits with σ_loc values other than the truth and reports each fit's MS2 log-likelihood (does MS2 pin σ_loc?). One JSON
line per fit.

    python bench/marginal_bias_diagnosis.py --variants simulator small-loadings --n 300 --seed 101
    python bench/marginal_bias_diagnosis.py --variants model-consistent --n 1200 --seed 101
    python bench/marginal_bias_diagnosis.py --variants model-drawn --n 1000 --seed 7 --profile 120 150
    python bench/marginal_bias_diagnosis.py --k-off 2.78e-4 --seed 103 --fit-sigma-loc 10 20 30 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import torch

from xai_hsg.marginal import (
    MarginalConfig,
    MarginalData,
    MarginalRadius,
    _refit,
    interval_gate,
    kernel_weights,
    marginal_loglik,
    trapezoid_kernel,
)
from xai_hsg.radius import RadiusMLE
from xai_hsg.simulate import SimParams, simulate
from xai_hsg.tracks import TraceArrays

VARIANTS = ("simulator", "small-loadings", "noiseless", "model-consistent", "model-drawn")


def cell_params(variant: str, r_c_nm: float, k_off_per_s: float = 1 / 300, sigma_loc_nm: float = 20.0) -> SimParams:
    "The cell (fast switching by default), with the loadings and noise of `variant`."
    p = dict(n_frames=241, dt_s=30.0, r_c_nm=r_c_nm, sigma_loc_nm=sigma_loc_nm, k_off_per_s=k_off_per_s)
    if variant != "simulator":
        p.update(nu_on_per_s=20 * 0.5 / 60, amplitude=0.5 / 20)
    if variant == "noiseless":
        p.update(sigma_ms2=0.1)
    return SimParams(**p)


def model_consistent_ms2(state: np.ndarray, p: SimParams, seed: int) -> np.ndarray:
    "MS2 [B, T] from frame states as the model reads them: interval (t − 1, t] ON iff frame t is ON."
    rng = np.random.default_rng(seed)
    B, T = state.shape
    t_s = np.arange(T) * p.dt_s
    y = np.zeros((B, T))
    for b in range(B):
        for u in np.flatnonzero(state[b, 1:]) + 1:
            for tau in rng.uniform((u - 1) * p.dt_s, u * p.dt_s, rng.poisson(p.nu_on_per_s * p.dt_s)):
                y[b] += p.amplitude * trapezoid_kernel(t_s - tau, p.t_rise_s, p.t_plateau_s)
    return y + rng.normal(0.0, p.sigma_ms2, y.shape)


def model_drawn(arrays: TraceArrays, p: SimParams, seed: int) -> TraceArrays:
    "`arrays` with the promoter path and the MS2 drawn from the marginal model itself (the `model-drawn` variant)."
    data = MarginalData.from_arrays(arrays, p.sigma_loc_nm, MarginalConfig(p.t_rise_s, p.t_plateau_s))
    with torch.no_grad():
        gate = interval_gate(data, torch.tensor(math.log(p.r_c_nm), dtype=torch.float64)).numpy()
    rng = np.random.default_rng(seed + 1000)
    B, T = arrays.distance_nm.shape
    state = np.zeros((B, T))
    for t in range(1, T):
        p_on = np.where(
            state[:, t - 1] == 0, -np.expm1(-p.k_on * p.dt_s * gate[:, t - 1]), np.exp(-p.k_off_per_s * p.dt_s)
        )
        state[:, t] = rng.random(B) < p_on
    kappa = kernel_weights(p.dt_s, p.t_rise_s, p.t_plateau_s).kappa
    mean = sum(kappa[lag] * np.pad(state, ((0, 0), (lag, 0)))[:, :T] for lag in range(len(kappa)))
    ms2 = p.nu_on_per_s * p.amplitude * p.dt_s * mean + rng.normal(0.0, p.sigma_ms2, (B, T))
    return dataclasses.replace(arrays, state=state.astype(arrays.state.dtype), ms2=ms2)


def run(
    variant: str,
    n: int,
    seed: int,
    max_switches: int,
    r_c_nm: float,
    profile: list[float],
    k_off_per_s: float = 1 / 300,
    sigma_loc_nm: float = 20.0,
    sigma_fit_nm: float | None = None,
) -> dict:
    p = cell_params(variant, r_c_nm, k_off_per_s, sigma_loc_nm)
    arrays = simulate(n, p, seed=seed).to_arrays()
    if variant == "model-consistent":
        arrays = dataclasses.replace(arrays, ms2=model_consistent_ms2(arrays.state.astype(float), p, seed))
    elif variant == "model-drawn":
        arrays = model_drawn(arrays, p, seed)
    truth = RadiusMLE(sigma_loc_nm=p.sigma_loc_nm, n_boot=0).fit(arrays).r_c_nm_
    t0 = time.perf_counter()
    sigma_fit = p.sigma_loc_nm if sigma_fit_nm is None else sigma_fit_nm
    est = MarginalRadius(sigma_loc_nm=sigma_fit, max_switches=max_switches).fit(arrays)
    data = est._data(arrays)
    total = lambda e: float(marginal_loglik(data, e.params_.to_log()).sum())
    best = total(est)
    row = dict(variant=variant, n_traces=n, seed=seed, max_switches=max_switches, r_c_true=r_c_nm, k_on_true=p.k_on)
    row.update(k_off_true=p.k_off_per_s, sigma_loc_true=p.sigma_loc_nm, sigma_loc_given=sigma_fit)
    row.update(bridge_anchor=est.anchor_, loglik=best)
    row.update(truth_state_mle=truth, fit_seconds=time.perf_counter() - t0, **est.params_.to_dict())
    if profile:
        row["profile_drop"] = {
            f"{r:g}": best - total(_refit(est, arrays, max_iter=40, r_c_nm=r)) for r in profile
        }  # nats below the maximum; the 90% interval's cut is 1.35
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["simulator"])
    ap.add_argument("--n", type=int, default=300, help="traces")
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--r-c", type=float, default=150.0, help="true contact radius, nm")
    ap.add_argument("--k-off", type=float, default=1 / 300, help="ON->OFF rate, 1/s (1/3600: the simulator's default)")
    ap.add_argument("--sigma-loc", type=float, default=20.0, help="true localization noise, nm (given to the fit)")
    ap.add_argument(
        "--fit-sigma-loc",
        nargs="*",
        type=float,
        default=[],
        help="give the fit these σ_loc (nm) instead of the true one, one fit each: the MS2 log-likelihood (loglik) "
        "profiled over σ_loc",
    )
    ap.add_argument("--max-switches", type=int, default=2, help="compound-state truncation m")
    ap.add_argument("--profile", nargs="*", type=float, default=[], help="radii (nm) of the profile likelihood")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for v in args.variants:
        for s_fit in args.fit_sigma_loc or [None]:
            rows.append(
                run(v, args.n, args.seed, args.max_switches, args.r_c, args.profile, args.k_off, args.sigma_loc, s_fit)
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
