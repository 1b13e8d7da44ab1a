"""Tests of xai_hsg.marginal: the kernel moments against Monte Carlo, the forward algorithm against brute-force
enumeration of promoter paths (with missing MS2 and missing distances, emission orders 0–2), the truncated compound state
against the full one, the gradient against finite differences, posterior states, recovery of r_c from distances and
MS2 alone, and a radius that does not move when the Poisson loading noise is made negligible."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from xai_hsg.marginal import (
    CountStates,
    MarginalConfig,
    MarginalData,
    MarginalParams,
    MarginalRadius,
    _step_logp,
    compound_states,
    count_states,
    counts_loglik,
    fit_marginal,
    interval_gate,
    kernel_weights,
    marginal_loglik,
    scan_radius_start,
    trapezoid_kernel,
)
from xai_hsg.radius import RadiusMLE
from xai_hsg.simulate import SimParams, simulate
from xai_hsg.tracks import TraceArrays

torch.set_num_threads(1)
PARAMS = MarginalParams(150.0, 0.02, 0.01, 0.01, 0.7, 0.8, 0.05, ms2_baseline=0.3)  # an MS2 offset: in every mean


def tiny_arrays(B=3, T=6, dt=60.0, seed=1) -> TraceArrays:
    "Random distances and MS2 with a missing distance, a three-frame distance gap and missing MS2 frames."
    rng = np.random.default_rng(seed)
    d = rng.uniform(50, 300, (B, T))
    d[0, 2] = np.nan
    d[1, 1:4] = np.nan
    ms2 = rng.normal(1, 1, (B, T))
    ms2[0, 3] = ms2[2, 0] = np.nan
    return TraceArrays(distance_nm=d, dt_s=dt, ms2=ms2)


def _joint(w: dict, frames: list, kw, p: MarginalParams, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of y at `frames` given the loading levels w[u], term by term (from the moment formulas); frame
    t's Pol II signal times b_t = exp(−β·t·Δt), β the bleach rate."""
    lags = range(kw.n_lags)
    scale = p.load_amp_per_s * dt
    b = {t: math.exp(-p.bleach_rate_per_h * t * dt / 3600) for t in frames}
    mean = np.array([p.ms2_baseline + b[t] * scale * sum(kw.kappa[l] * w[t - l] for l in lags) for t in frames])
    cov = np.zeros((len(frames), len(frames)))
    for i, ti in enumerate(frames):
        for j, tj in enumerate(frames):
            if ti == tj:
                cov[i, j] = p.sigma_ms2**2 + b[ti] ** 2 * p.amplitude * scale * sum(
                    kw.kappa2[l] * w[ti - l] for l in lags
                )
            else:
                d, early = abs(ti - tj), min(ti, tj)
                cross = p.amplitude * scale * sum(kw.cross[d - 1][l] * w[early - l] for l in lags)
                cov[i, j] = b[ti] * b[tj] * cross
    return mean, cov


def brute_force(data: MarginalData, p: MarginalParams, ms2: np.ndarray) -> np.ndarray:
    """log L per trace by enumerating every promoter path over the W − 1 + T intervals, written from the equations:
    each observed frame conditioned on the q = min(order, run of observed frames before it) frames before it."""
    kw, W, dt, order = data.kernel, data.states.window, data.dt_s, data.emission_order
    g = interval_gate(data, torch.tensor(math.log(p.r_c_nm))).detach().numpy()
    f = p.nu_off_fraction
    out = []
    for b in range(ms2.shape[0]):
        T = ms2.shape[1]
        p01 = 1 - math.exp(-p.k_on_per_s * dt * g[b].mean())
        p10 = 1 - math.exp(-p.k_off_per_s * dt)
        total = 0.0
        for path in itertools.product([0, 1], repeat=W - 1 + T):
            s = dict(zip(range(-W + 1, T), path))
            pi_on = p01 / (p01 + p10) if data.tied_initial else p.init_on_odds / (1 + p.init_on_odds)
            lp = math.log(pi_on if s[-W + 1] else 1 - pi_on)
            for u in range(-W + 2, T):
                q01 = p01 if u <= 0 else 1 - math.exp(-p.k_on_per_s * dt * g[b, u - 1])
                lp += math.log([[1 - q01, q01], [p10, 1 - p10]][s[u - 1]][s[u]])
            w = {u: f + (1 - f) * s[u] for u in s}  # relative loading level per interval
            run = 0
            for t in range(T):
                y = ms2[b, t]
                q = min(order, run) if t > 0 else 0
                run = run + 1 if np.isfinite(y) else 0
                if not np.isfinite(y):
                    continue
                mean, cov = _joint(w, [t - j for j in range(q + 1)], kw, p, dt)
                k = np.linalg.solve(cov[1:, 1:], cov[1:, 0]) if q else np.zeros(0)
                mu = mean[0] + k @ (ms2[b, t - np.arange(1, q + 1)] - mean[1:])
                var = cov[0, 0] - k @ cov[1:, 0]
                lp += -0.5 * (math.log(2 * math.pi * var) + (y - mu) ** 2 / var)
            total += math.exp(lp)
        out.append(math.log(total))
    return np.array(out)


def test_kernel_weights_integrals():
    kw = kernel_weights(30.0, 120.0, 240.0)
    assert kw.n_lags == 12
    assert np.isclose(kw.kappa.sum() * 30, 300.0) and np.isclose(kw.kappa2.sum() * 30, 280.0)
    grid = np.linspace(0, 360, 360_001)
    lag1 = np.trapezoid(trapezoid_kernel(grid, 120, 240) * trapezoid_kernel(grid + 30, 120, 240), grid)
    assert np.isclose(kw.rho.sum() * 30, lag1, rtol=1e-4)  # ∫K(τ)K(τ+Δt)dτ
    with pytest.raises(ValueError):
        kernel_weights(0.0, 120.0, 240.0)


def test_kernel_moments_match_monte_carlo():
    "Mean, variance and lag-1 covariance of A·ΣK over Poisson loadings of a fixed promoter path (uniform times)."
    kw = kernel_weights(60.0, 120.0, 240.0)
    rng = np.random.default_rng(0)
    s = (np.arange(10) % 5 < 3).astype(float)
    nu, A, dt, n = 0.04, 0.3, 60.0, 30_000
    y = np.zeros((n, 2))
    for u in range(10):
        k = rng.poisson(nu * dt * s[u], n)
        for i in range(k.max()):
            tj = (u - 1 + rng.random(n)) * dt
            for j, t in enumerate((8, 9)):
                y[:, j] += (k > i) * A * trapezoid_kernel(t * dt - tj, 120.0, 240.0)
    lags = lambda t: s[t - np.arange(kw.n_lags)]
    assert np.isclose(y[:, 1].mean(), nu * A * dt * kw.kappa @ lags(9), rtol=0.02)
    assert np.isclose(y[:, 1].var(), A * nu * A * dt * kw.kappa2 @ lags(9), rtol=0.05)
    assert np.isclose(np.cov(y.T)[0, 1], A * nu * A * dt * kw.rho @ lags(8), rtol=0.05)


@pytest.mark.parametrize("order,tied,bleach", [(0, True, 0), (1, True, 0), (2, True, 0), (2, False, 0), (2, False, 20)])
def test_forward_equals_brute_force(order, tied, bleach):
    """Tied: the initial state from the contact chain's stationary law; free: P(ON) from `init_on_odds` (here 0.3).
    `bleach` (1/h): the Pol II signal decays (a fifth of it left at the last frame: every frame's emission differs)."""
    arrays = tiny_arrays()
    cfg = MarginalConfig(
        50.0, 80.0, emission_order=order, max_switches=None, tied_initial=tied, signal_decay=bleach > 0
    )
    data = MarginalData.from_arrays(arrays, 20.0, cfg)
    params = MarginalParams(**{**PARAMS.to_dict(), "init_on_odds": 0.3 / 0.7, "bleach_rate_per_h": float(bleach)})
    ll = marginal_loglik(data, params.to_log()).numpy()
    np.testing.assert_allclose(ll, brute_force(data, params, arrays.ms2), rtol=0, atol=1e-10)


def test_compound_states_counts_and_successors():
    "Every step from a kept state lands on a kept state: the true successor, or it with the oldest switch dropped."
    assert compound_states(12).n_states == 4096
    assert compound_states(12, 2).n_states == 2 * (1 + 11 + 55)
    W, m = 6, 1
    cs = compound_states(W, m)
    kept = set(cs.codes.tolist())
    n_switches = lambda code: sum(((code >> i) & 1) != ((code >> (i - 1)) & 1) for i in range(1, W))
    for i, code in enumerate(cs.codes):
        for s in (0, 1):
            nxt = ((int(code) << 1) | s) & (2**W - 1)
            got = int(cs.codes[cs.succ[i, s]])
            assert cs.merged[i, s] == (nxt not in kept)
            if nxt in kept:
                assert got == nxt
            else:  # same newest bits up to the oldest switch, one switch fewer, the newest bit (the state) kept
                assert n_switches(nxt) == m + 1 and n_switches(got) == m and got & 1 == s
                oldest = max(j for j in range(1, W) if ((nxt >> j) & 1) != ((nxt >> (j - 1)) & 1))
                assert got & ((1 << oldest) - 1) == nxt & ((1 << oldest) - 1)
    assert not compound_states(W).merged.any()
    with pytest.raises(ValueError):
        compound_states(0)


def test_truncation_against_full_state_space():
    """m switches per window (merged steps) against all 2^W states on simulated traces (ON ≈ 10 frames): the
    likelihood per frame approaches the full one as m grows, and the fitted radius and k_off with it."""
    p = SimParams(n_frames=121, dt_s=60.0, r_c_nm=150.0, sigma_loc_nm=20.0, k_off_per_s=1 / 600)
    arrays = simulate(40, p, seed=3, threads=1).to_arrays()
    theta = MarginalParams(150.0, p.k_on, p.k_off_per_s, p.nu_on_per_s * p.amplitude, p.amplitude, 1.0).to_log()
    ll = {}
    for m in (None, 1, 2, 3):
        data = MarginalData.from_arrays(arrays, 20.0, MarginalConfig(window=7, max_switches=m))
        ll[m] = float(marginal_loglik(data, theta).sum()) / int(data.y_obs.sum())
    gap = {m: abs(ll[None] - ll[m]) for m in (1, 2, 3)}
    assert gap[1] > gap[3] and gap[2] < 1e-3 and gap[3] < 1e-4, gap  # nats per frame


def test_gradient_matches_finite_differences():
    "Every entry of θ, the bleach rate included (a decaying signal)."
    cfg = MarginalConfig(window=7, max_switches=2, signal_decay=True)
    data = MarginalData.from_arrays(tiny_arrays(B=4, T=12), 20.0, cfg)
    theta = dataclasses.replace(PARAMS, bleach_rate_per_h=3.0).to_log().requires_grad_()
    marginal_loglik(data, theta).sum().backward()
    h = 1e-3  # ḡ is float32 (the bridge table): a smaller step measures its rounding
    f = lambda th: float(marginal_loglik(data, th).sum())
    fd = [
        (f(theta.detach() + h * e) - f(theta.detach() - h * e)) / (2 * h)
        for e in torch.eye(len(theta), dtype=torch.float64)
    ]
    np.testing.assert_allclose(theta.grad.numpy(), fd, rtol=1e-4, atol=1e-6)


def test_no_ms2_sums_to_one_and_bad_config():
    arrays = tiny_arrays().replace(ms2=np.full((3, 6), np.nan))
    data = MarginalData.from_arrays(arrays, 20.0, MarginalConfig(50.0, 80.0, window=4, max_switches=None))
    assert torch.allclose(marginal_loglik(data, PARAMS.to_log()), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="emission_order"):
        MarginalConfig(emission_order=-1)
    with pytest.raises(ValueError, match="too short for the kernel"):
        MarginalConfig(window=6).states(60.0)  # L = 6 and order 2 need W >= 7
    with pytest.raises(ValueError, match="max_states"):
        MarginalConfig(max_switches=None).states(20.0)
    with pytest.raises(ValueError, match="ms2"):
        MarginalData.from_arrays(TraceArrays(distance_nm=np.ones((2, 5)) * 100, dt_s=30.0), 20.0, MarginalConfig())
    with pytest.raises(ValueError):
        MarginalParams(-1.0, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="signal_decay"):  # a bleach rate the data were not built to read
        marginal_loglik(data, dataclasses.replace(PARAMS, bleach_rate_per_h=1.0).to_log())
    with pytest.raises(ValueError, match="bleach_rate_per_h"):
        MarginalRadius(20.0, bleach_rate_per_h="yes")


def sim60(n, seed, **changes):
    "One-minute frames (L = 6, order 2: W = 7, all 128 compound states), r_c 150 nm, σ_loc 20 nm, ON periods of ~10 min."
    p = SimParams(n_frames=121, dt_s=60.0, r_c_nm=150.0, sigma_loc_nm=20.0, k_off_per_s=1 / 600, **changes)
    return simulate(n, p, seed=seed, threads=1).to_arrays()


def test_posterior_states_and_score():
    arrays = sim60(60, seed=5)
    p = SimParams(r_c_nm=150.0)
    truth = MarginalParams(150.0, p.k_on, 1 / 600, p.nu_on_per_s * p.amplitude, p.amplitude, p.sigma_ms2)
    est = MarginalRadius(sigma_loc_nm=20.0, max_switches=None, start=truth, max_iter=1)
    est.params_ = truth  # score and posterior at the true parameters (no fit)
    post = est.posterior_states(arrays)
    assert post.p_on.shape == arrays.ms2.shape and np.all((post.p_on >= -1e-9) & (post.p_on <= 1 + 1e-9))
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(arrays.state.ravel() > 0.5, post.p_on.ravel())
    assert auc > 0.9  # measured 0.97
    assert np.allclose(post.expected_loadings, p.nu_on_per_s * 60.0 * post.p_on, rtol=1e-6, atol=1e-9)
    worse = MarginalRadius(sigma_loc_nm=20.0, max_switches=None)
    worse.params_ = MarginalParams(**{**truth.to_dict(), "sigma_ms2": 2.0})
    assert est.score(arrays) > worse.score(arrays)
    with pytest.raises(RuntimeError):
        MarginalRadius(sigma_loc_nm=20.0).score(arrays)


@pytest.fixture(scope="module")
def fits60():
    """Marginal fits (no state, σ_loc given) of 300 traces × 121 one-minute frames: realistic Poisson loading noise
    (ν = 0.5/min, A = 0.5) and negligible Poisson noise (50× the loadings at 1/50 the amplitude: same mean signal), each
    with the Gaussian and with the count emission."""
    out = {}
    for name, changes in (("realistic", {}), ("negligible", dict(nu_on_per_s=25 / 60, amplitude=0.01))):
        arrays = sim60(300, seed=1, **changes)
        truth = RadiusMLE(sigma_loc_nm=20.0, n_boot=0).fit(arrays)
        for emission in ("gaussian", "counts"):
            est = MarginalRadius(sigma_loc_nm=20.0, max_switches=None, emission=emission).fit(arrays)
            out[name if emission == "gaussian" else f"{name} counts"] = (est, truth)
    return out


@pytest.mark.slow
def test_fit_recovers_radius(fits60):
    """Measured (2026-12-06, 2 shared CPU cores): Gaussian emission realistic 165.7 nm (+10 %), negligible Poisson
    158.7 nm (+6 %); count emission 156.2 and 156.8 nm; truth-state MLE 151.4 nm; HMM state calls 333–382 nm.
    30–50 L-BFGS evaluations, 20–30 s per Gaussian fit and 90–140 s per count fit on a busy machine."""
    for name, tol in (
        ("negligible", 0.10),
        ("realistic", 0.15),
        ("realistic counts", 0.08),
        ("negligible counts", 0.08),
    ):
        est, truth = fits60[name]
        assert abs(est.r_c_nm_ / 150.0 - 1) < tol, (name, est.r_c_nm_)
        assert abs(truth.r_c_nm_ / 150.0 - 1) < 0.1
        assert abs(est.sigma_ms2_ - 1.0) < 0.05
    summary = fits60["realistic"][0].summary().to_dict()
    assert summary["n_states"] == 128 and summary["params"]["r_c_nm"] == fits60["realistic"][0].r_c_nm_
    counts = fits60["realistic counts"][0].summary().to_dict()
    assert counts["emission"] == "counts" and counts["n_states"] == 2 * 3**6
    # counts carry the loading amplitude apart from the rate: A = 0.56 for the simulation's 0.5
    assert abs(fits60["realistic counts"][0].amplitude_ / 0.5 - 1) < 0.2


@pytest.mark.slow
def test_radius_barely_moves_with_poisson_noise(fits60):
    """The issue's test of the emission: realistic against negligible Poisson loading noise, the radius must not move.
    Gaussian emission (moments matched): 165.7 → 158.7 nm, 4.4 %. Count emission: 156.2 → 156.8 nm, 0.4 % (the issue's
    prototype: ≤ 3 %)."""
    r = {k: v[0].r_c_nm_ for k, v in fits60.items()}
    assert abs(r["realistic"] / r["negligible"] - 1) < 0.1, r
    assert abs(r["realistic counts"] / r["negligible counts"] - 1) < 0.03, r
    # sparse loadings: the counts explain the MS2 better than the matched Gaussian (+0.0004 nats per frame measured);
    # dense ones: no worse (the last count level then carries the conditional mean)
    ll = {k: v[0].loglik_per_frame_ for k, v in fits60.items()}
    assert ll["realistic counts"] > ll["realistic"] and ll["negligible counts"] > ll["negligible"] - 1e-4, ll


def _counts_brute_force(data: MarginalData, theta: torch.Tensor) -> torch.Tensor:
    """Σ over promoter paths s_(−L..T−1) and loading counts n_(−L+1..T−1) of p(path) p(counts | path) p(MS2 | counts),
    the counts Poisson (levels 0 and ≥ 1 at max_count 1, the second emitting at its conditional mean)."""
    L, kw = data.states.window, data.kernel
    r_c, k_on, k_off, a, A, sigma, f, odds = theta[:8].exp()
    baseline, bleach = float(theta[8]), float(theta[9])
    lam = [float(a / A * data.dt_s * f), float(a / A * data.dt_s)]
    level_p = [[math.exp(-x), 1 - math.exp(-x)] for x in lam]  # P(n = 0), P(n ≥ 1)
    tail_mean = lam[1] / (1 - math.exp(-lam[1]))  # E[n | n ≥ 1] while ON
    logp, init, _ = _step_logp(theta, interval_gate(data, theta[0]), data.dt_s)
    P, P0 = logp.exp().numpy(), init.exp().numpy()
    pi = [1 / (1 + float(odds)), float(odds) / (1 + float(odds))]
    B, T = data.y.shape
    out = []
    for b in range(B):
        total = 0.0
        for s in itertools.product((0, 1), repeat=L + T):
            ps = pi[s[0]] * np.prod([P0[b, 2 * s[u] + s[u + 1]] for u in range(L)])
            ps *= np.prod([P[b, t - 1, 2 * s[L + t - 1] + s[L + t]] for t in range(1, T)])
            for n in itertools.product((0, 1), repeat=L + T - 1):
                pn = np.prod([level_p[s[j + 1]][n[j]] for j in range(L + T - 1)])
                py = 1.0
                for t in range(T):
                    if data.y_obs[b, t]:
                        k = [n[L - 1 + t - l] * tail_mean for l in range(L)]
                        decay = math.exp(-bleach * t * data.dt_s / 3600)  # the signal's factor at frame t
                        m = baseline + decay * float(A) * sum(k[l] * kw.kappa[l] for l in range(L))
                        v = float(sigma) ** 2 + decay**2 * float(A) ** 2 * sum(
                            k[l] * (kw.kappa2[l] - kw.kappa[l] ** 2) for l in range(L)
                        )
                        py *= math.exp(-0.5 * (float(data.y[b, t]) - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
                total += ps * pn * py
        out.append(math.log(total))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("bleach", [0.0, 20.0])
def test_counts_forward_equals_brute_force(bleach):
    """Two frame intervals in the kernel (L = 2), counts 0 / ≥ 1, four frames, MS2 frames and distances missing; with
    and without a decaying signal (`bleach`, 1/h)."""
    arrays = tiny_arrays(B=3, T=4)
    cfg = MarginalConfig(60.0, 60.0, emission="counts", max_count=1, signal_decay=bleach > 0)
    data = MarginalData.from_arrays(arrays, 20.0, cfg)
    assert isinstance(data.states, CountStates) and data.states.n_states == 8
    p = MarginalParams(150.0, 0.01, 0.005, 0.02, 0.6, 0.8, 0.05, 0.5, ms2_baseline=-0.2, bleach_rate_per_h=bleach)
    theta = p.to_log()
    torch.testing.assert_close(counts_loglik(data, theta), _counts_brute_force(data, theta), rtol=1e-10, atol=0)
    torch.testing.assert_close(marginal_loglik(data, theta), counts_loglik(data, theta))  # the dispatch


def test_counts_gradient_and_config():
    cfg = MarginalConfig(emission="counts", signal_decay=True)
    data = MarginalData.from_arrays(tiny_arrays(B=4, T=12), 20.0, cfg)
    assert data.states.window == 6 and data.states.n_states == 2 * 3**6
    theta = dataclasses.replace(PARAMS, bleach_rate_per_h=3.0).to_log().requires_grad_()
    counts_loglik(data, theta).sum().backward()
    h = 1e-3  # ḡ is float32 (the bridge table)
    f = lambda th: float(counts_loglik(data, th).sum())
    fd = [
        (f(theta.detach() + h * e) - f(theta.detach() - h * e)) / (2 * h)
        for e in torch.eye(len(theta), dtype=torch.float64)
    ]
    np.testing.assert_allclose(theta.grad.numpy(), fd, rtol=1e-4, atol=1e-6)
    assert MarginalConfig(emission="counts").frame_step(30.0) == 2  # 2·3^12 states would not fit: 60-s frames
    assert MarginalConfig(emission="counts").order_for(60.0) == 0
    with pytest.raises(ValueError, match="emission"):
        MarginalConfig(emission="poisson")
    with pytest.raises(ValueError, match="max_count"):
        MarginalConfig(emission="counts", max_count=0)
    cs = count_states(3, 2)
    assert cs.n_states == 54 and (cs.counts[5] == [2, 1, 0]).all() and cs.on.sum() == 27


def _sim_file(tmp_path, n, frames, seed, **changes):
    from xai_hsg.simulate import save_simulation

    p = SimParams(n_frames=frames, dt_s=60.0, sigma_loc_nm=20.0, k_off_per_s=1 / 600, **changes)
    tracks, _ = save_simulation(simulate(n, p, seed=seed, threads=1), tmp_path / "sim")
    return tracks


@pytest.mark.slow
def test_fit_radius_without_state_cli(tmp_path):
    """`xai-hsg fit-radius` with no state option runs the marginal model, estimates σ_loc, writes fit.json and the
    posterior states. Measured (150 traces × 241 one-minute frames, r_c 150 nm, seed 5): r_c 124.9 nm [94.5, 164.9],
    σ_loc 25.1 nm [0, 36.9] (true 20), ≈ 45 s."""
    import json

    import pandas as pd

    from xai_hsg.cli import main

    tracks = _sim_file(tmp_path, 150, 241, seed=5, r_c_nm=150.0)
    out, states = tmp_path / "fit.json", tmp_path / "states.csv"
    assert main(["fit-radius", str(tracks), "--out", str(out), "--states", str(states)]) == 0
    res = json.loads(out.read_text())
    lo, hi = res["r_c_interval_nm"]
    assert res["state_from"] == "none" and res["identifiability"]["identifiable"]
    assert res["bridge_anchor"] == "smoothed"  # vectors and σ_loc > 0: the default anchoring applies
    assert lo < 150.0 < hi and hi / lo < 3
    assert "given" not in res["sigma_loc"] and res["sigma_loc"]["lo_nm"] <= res["sigma_loc_nm"]
    assert res["heldout"]["test_gain_nats_per_frame"] > 0  # distances help predict held-out MS2
    assert set(res["parameters"]["parameters"]) >= {"r_c_nm", "k_on_per_s", "k_off_per_s", "sigma_ms2"}
    table = pd.read_csv(states)
    assert list(table.columns) == ["trace_id", "t_s", "p_on", "expected_loadings"] and len(table) == 150 * 241
    assert table.p_on.between(0, 1).all()


@pytest.mark.slow
def test_fit_radius_count_emission_cli(tmp_path):
    """`--emission counts` through the command, σ_loc given, on a construct with a 3-min kernel (1-min rise, 2-min
    plateau, given as `--t-rise-s` / `--t-plateau-s`; 250 traces × 241 one-minute frames): fit.json names the emission
    and its 2·3^3 states, and the posterior states are written (~1 min; the default 6-min kernel has 2·3^6 states at
    one-minute frames and the same command took ~5 min; at 30-s frames the count states need frames 60 s apart:
    `test_counts_gradient_and_config`)."""
    import json

    import pandas as pd

    from xai_hsg.cli import main

    tracks = _sim_file(tmp_path, 250, 241, seed=5, r_c_nm=150.0, t_rise_s=60.0, t_plateau_s=120.0)
    out, states = tmp_path / "fit.json", tmp_path / "states.csv"
    args = ["fit-radius", str(tracks), "--out", str(out), "--sigma-loc", "20", "--emission", "counts"]
    args += ["--t-rise-s", "60", "--t-plateau-s", "120"]
    assert main(args + ["--states", str(states)]) == 0
    res = json.loads(out.read_text())
    assert res["emission"] == "counts" and res["fit"]["emission"] == "counts" and res["fit"]["n_states"] == 54
    assert res["frame_step"] == 1 and res["sigma_loc"] == {"given": 20.0}
    lo, hi = res["r_c_interval_nm"]
    assert lo < 150.0 < hi and hi / lo < 3, (lo, res["r_c_nm"], hi)
    table = pd.read_csv(states)
    assert len(table) == 250 * 241 and table.p_on.between(0, 1).all()


@pytest.mark.slow
def test_fit_radius_without_state_refuses_a_radius_the_data_do_not_determine(tmp_path, capsys):
    "r_c = 5 nm: almost no activation; the command names the reasons, exits 1 and writes no fit.json."
    from xai_hsg.cli import main

    tracks = _sim_file(tmp_path, 100, 121, seed=2, r_c_nm=5.0, k_on_per_s=0.01)
    out = tmp_path / "fit.json"
    assert main(["fit-radius", str(tracks), "--out", str(out), "--sigma-loc", "20"]) == 1
    err = capsys.readouterr().err
    assert "not identifiable" in err and "expected OFF→ON switches" in err and not out.exists()


@pytest.mark.slow
def test_fit_radius_without_state_refuses_an_always_in_contact_radius(tmp_path, capsys):
    "r_c = 3,000 nm: every distance is inside the radius, activation does not depend on distance; not identifiable."
    from xai_hsg.cli import main

    tracks = _sim_file(tmp_path, 100, 121, seed=3, r_c_nm=3000.0, k_on_per_s=1 / 1200)
    out = tmp_path / "fit.json"
    assert main(["fit-radius", str(tracks), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not identifiable" in err and not out.exists()


@pytest.mark.slow
def test_anchor_is_validated_and_reported():
    "`MarginalRadius(anchor=...)` accepts the two anchorings only; the fit reports the one its data allowed."
    with pytest.raises(ValueError, match="anchor"):
        MarginalRadius(sigma_loc_nm=20.0, anchor="kalman")
    arrays = sim60(20, seed=2)
    assert MarginalRadius(sigma_loc_nm=20.0, max_iter=3).fit(arrays).anchor_ == "smoothed"
    assert MarginalRadius(sigma_loc_nm=0.0, max_iter=3).fit(arrays).anchor_ == "observed"  # nothing to smooth
    est = MarginalRadius(sigma_loc_nm=20.0, max_iter=3, anchor="observed").fit(arrays)
    assert est.anchor_ == "observed"


def test_a_bad_setting_is_an_error_not_a_verdict():
    """`fit_marginal` reports what the data leave undetermined as `DegenerateFitError` ("not identifiable", exit 1 of
    the CLI); a bad setting of the caller is a plain `ValueError` naming the setting, before any fit."""
    from xai_hsg.marginal import fit_marginal
    from xai_hsg.radius import DegenerateFitError

    arrays = sim60(5, seed=2)
    for kw, name in [
        (dict(max_iter=0), "max_iter"),
        (dict(anchor="kalman"), "anchor"),
        (dict(sigma_loc_nm=-1.0), "sigma_loc"),
    ]:
        with pytest.raises(ValueError, match=name) as err:
            fit_marginal(arrays, **{"sigma_loc_nm": 20.0, **kw})
        assert not isinstance(err.value, DegenerateFitError), kw


def test_fit_marginal_never_reads_the_state_and_scores_its_posterior():
    """`fit_marginal` on arrays: a shuffled `state` column changes nothing but the reported F1 of the posterior's ON
    frames against it (the state is read only to score the posterior, on simulations)."""
    from xai_hsg.marginal import fit_marginal

    # at σ_ms2 = 1, 100 traces × 121 frames do not bound r_c from below (the profile stays within the cut down to point
    # contact): less MS2 noise locates the switches
    arrays = sim60(100, seed=4, sigma_ms2=0.3)
    kw = dict(sigma_loc_nm=20.0, test_fraction=0.0, max_iter=15)
    res = fit_marginal(arrays, **kw)
    shuffled = arrays.replace(
        state=np.random.default_rng(0).permutation(arrays.state.ravel()).reshape(arrays.state.shape)
    )
    res_shuffled = fit_marginal(shuffled, **kw)
    assert res["r_c_nm"] == res_shuffled["r_c_nm"] and res["r_c_interval_nm"] == res_shuffled["r_c_interval_nm"]
    f1, f1_shuffled = res["posterior_state_f1"], res_shuffled["posterior_state_f1"]
    assert 0.5 < f1 <= 1 and f1 > f1_shuffled + 0.2, (f1, f1_shuffled)
    assert "posterior_state_f1" not in fit_marginal(arrays.replace(state=None), **kw)
    assert res["bridge_anchor"] == "smoothed" and not res["warnings"]
    distances_only = fit_marginal(arrays.replace(vector_nm=None), **kw)  # nothing to smooth: said, not silent
    assert distances_only["bridge_anchor"] == "observed"
    assert any("without E-P vectors" in w for w in distances_only["warnings"]), distances_only["warnings"]


def test_emission_order_from_the_kernel_and_states_built_without_all_codes():
    "Default order max(2, ⌈L/3⌉): 2 at 60-s, 4 at 30-s, 6 at 20-s frames (6-min kernel); a given order wins."
    cfg = MarginalConfig()
    assert [cfg.order_for(dt) for dt in (60.0, 30.0, 20.0)] == [2, 4, 6]
    assert MarginalConfig(emission_order=1).order_for(30.0) == 1
    assert MarginalData.from_arrays(tiny_arrays(dt=30.0), 20.0, cfg).emission_order == 4
    for window, m in [(5, 0), (9, 2), (12, 3), (7, None)]:  # the truncated codes, built from switch positions
        codes = np.arange(2**window)
        bits = (codes[:, None] >> np.arange(window)) & 1
        n_switch = (bits[:, 1:] != bits[:, :-1]).sum(1)
        want = codes if m is None else codes[n_switch <= m]
        np.testing.assert_array_equal(compound_states(window, m).codes, want)
    assert compound_states(23, 2).n_states == 2 * (1 + 22 + 231)


def test_start_far_above_every_distance_is_scanned_back():
    "A start where the gate is 1 everywhere (no gradient in r_c) moves into the distances and raises the likelihood."
    arrays = sim60(40, seed=5)
    data = MarginalData.from_arrays(arrays, 20.0, MarginalConfig())
    far = MarginalParams(5000.0, 1e-3, 1 / 600, 0.005, 0.5, 1.0)
    moved = scan_radius_start(data, arrays, far)
    d = arrays.distance_nm[arrays.mask]
    assert np.percentile(d, 2) - 1e-9 <= moved.r_c_nm <= np.percentile(d, 98) + 1e-9
    with torch.no_grad():
        assert marginal_loglik(data, moved.to_log()).sum() > marginal_loglik(data, far.to_log()).sum()


def test_profile_search_lands_on_the_crossing_of_a_quadratic_profile():
    """√drop is linear in log r_c for a quadratic profile: the next point, extrapolated from one inside the cut or
    interpolated in a bracket, is the crossing itself, on either side and for unequal curvatures."""
    from xai_hsg.marginal import _next_log_r

    x_hat, target = math.log(120.0), 1.35
    for curvature, sign in ((3.0, -1), (11.0, 1)):
        drop = lambda x, c=curvature: c * (x - x_hat) ** 2
        crossing = x_hat + sign * math.sqrt(target / curvature)
        inside = x_hat + sign * 0.6 * math.sqrt(target / curvature)
        assert _next_log_r(x_hat, [(inside, drop(inside))], target, 4.0) == pytest.approx(crossing)
        outside = x_hat + sign * 2.0
        tried = [(inside, drop(inside)), (outside, drop(outside))]
        assert _next_log_r(x_hat, tried, target, 4.0) == pytest.approx(crossing)
    # flat so far: at most step_cap times farther out
    assert _next_log_r(x_hat, [(x_hat + 0.2, 1e-6)], target, 4.0) == pytest.approx(x_hat + 0.8)


@pytest.mark.slow
def test_profile_interval_ends_sit_at_the_cut_and_the_adjustment_widens_it():
    """The profile interval's ends: r_c held there, the other parameters refitted longer, the log-likelihood lies the
    cut below the maximum (within the search's tolerance); a smaller adjustment c (a sandwich wider than the model's
    own variance) only widens the interval."""
    from xai_hsg.marginal import _refit

    arrays = sim60(100, seed=5)
    est = MarginalRadius(sigma_loc_nm=20.0, max_switches=None, max_iter=40).fit(arrays)
    unc = est.uncertainty(arrays)
    prof = est.profile(arrays, unc)
    assert prof.lo_nm < est.r_c_nm_ < prof.hi_nm and not prof.open_sides, prof
    assert 0 < prof.adjustment <= 1 and prof.max_exceeded_nats < 1e-3
    data = est._data(arrays)
    loglik = lambda e: float(marginal_loglik(data, e._theta().detach()).sum())
    for end in (prof.lo_nm, prof.hi_nm):
        drop = loglik(est) - loglik(_refit(est, arrays, max_iter=60, r_c_nm=end))
        assert abs(drop * prof.adjustment / prof.cut - 1) < 0.25, (end, drop, prof)
    wider = est.profile(arrays, dataclasses.replace(unc, adjustment=prof.adjustment / 2))
    assert wider.lo_nm < prof.lo_nm and wider.hi_nm > prof.hi_nm


@pytest.mark.slow
def test_a_preconditioned_refit_reaches_the_plain_refits_optimum_in_fewer_evaluations():
    """The interval's refits (another σ_loc, r_c held) searched in coordinates the fit's Hessian makes round
    (`_preconditioner`) end where plain L-BFGS run to convergence ends, in a fraction of its evaluations; a Hessian that
    is not positive definite gives no preconditioner (plain L-BFGS)."""
    from xai_hsg.marginal import _preconditioner, _refit

    arrays = sim60(100, seed=5)
    est = MarginalRadius(sigma_loc_nm=20.0, max_iter=60).fit(arrays)
    unc = est.uncertainty(arrays)
    assert unc.loss_hessian is not None and np.all(np.linalg.eigvalsh(unc.loss_hessian) > 0)
    loglik = lambda e: float(marginal_loglik(e._data(arrays), e._theta()).sum())
    for kw in (dict(sigma_loc_nm=35.0), dict(r_c_nm=1.2 * est.r_c_nm_)):
        fast = _refit(est, arrays, unc=unc, **kw)
        plain = _refit(est, arrays, max_iter=150, **kw)
        # the same maximum: within 0.01 nats (the ridge is flat: r_c moves ~0.5% for 0.001 nats at 100 traces)
        assert loglik(fast) > loglik(plain) - 0.01, (kw, loglik(fast), loglik(plain))
        assert fast.r_c_nm_ == pytest.approx(plain.r_c_nm_, rel=0.01), (kw, fast.r_c_nm_, plain.r_c_nm_)
        assert fast.n_evals_ < plain.n_evals_ / 3, (kw, fast.n_evals_, plain.n_evals_)
    free = est._free()
    assert _preconditioner(dataclasses.replace(unc, loss_hessian=-unc.loss_hessian), free) is None


def test_frames_too_short_for_the_compound_state_are_fitted_frames_apart():
    """At 10-15 s frames the 6-min kernel needs more than `MAX_WINDOW` frames of memory: the config names the step
    that fits, `states` refuses with that advice, and `fit_marginal` fits every k-th frame (`decimate`), saying so."""
    from xai_hsg.marginal import MAX_WINDOW, decimate, fit_marginal

    cfg = MarginalConfig()
    assert [cfg.frame_step(dt) for dt in (5.0, 10.0, 15.0, 20.0, 30.0, 60.0)] == [4, 2, 2, 1, 1, 1]
    assert cfg.size(10.0)[1] > MAX_WINDOW >= cfg.size(20.0)[1]
    with pytest.raises(ValueError, match="decimate"):
        cfg.states(15.0)
    p = SimParams(n_frames=481, dt_s=15.0, r_c_nm=150.0, sigma_loc_nm=20.0, k_off_per_s=1 / 600, sigma_ms2=0.3)
    arrays = simulate(100, p, seed=7, threads=1).to_arrays()  # 2 h: enough switches to bound r_c
    kw = dict(sigma_loc_nm=20.0, test_fraction=0.0, max_iter=8)
    res = fit_marginal(arrays, **kw)
    assert res["frame_step"] == 2 and res["fitted_dt_s"] == 30.0 and res["dt_s"] == 15.0 and res["n_frames"] == 481
    assert any("apart are fitted" in w for w in res["warnings"])
    assert 75 < res["r_c_nm"] < 300, res["r_c_nm"]  # truth 150 nm; the fit itself is tested at full frame rates
    coarse = decimate(arrays, 2)
    assert coarse.n_frames == 241 and np.array_equal(coarse.ms2, arrays.ms2[:, ::2])


def test_chunks_of_traces_give_the_fit_posterior_and_sandwich_of_one_pass(monkeypatch):
    """`trace_chunks` bounds autograd's memory: with chunks of 7 traces the fit, the posterior states and the sandwich
    intervals equal those of one pass over all 30 traces (float64 sums in another order)."""
    import xai_hsg.marginal as marginal

    arrays = sim60(30, seed=8)
    kw = dict(sigma_loc_nm=20.0, max_iter=6)
    one = MarginalRadius(**kw).fit(arrays)
    post_one, unc_one = one.posterior_states(arrays).p_on, one.uncertainty(arrays).se_log
    data = MarginalData.from_arrays(arrays, 20.0, MarginalConfig())
    monkeypatch.setattr(marginal, "MAX_CHUNK_CELLS", 7 * arrays.n_frames * data.states.n_states)
    assert [p.y.shape[0] for p in marginal.trace_chunks(data)] == [7, 7, 7, 7, 2]
    chunked = MarginalRadius(**kw).fit(arrays)
    assert chunked.r_c_nm_ == pytest.approx(one.r_c_nm_, rel=1e-7) and chunked.n_evals_ == one.n_evals_
    np.testing.assert_allclose(chunked.posterior_states(arrays).p_on, post_one, atol=1e-6)
    np.testing.assert_allclose(chunked.uncertainty(arrays).se_log, unc_one, rtol=1e-4, equal_nan=True)


def test_ms2_baseline_follows_an_offset_and_leaves_offset_free_traces_alone():
    "The OFF level moves by exactly the offset added to MS2; without an offset it is near 0 and nothing is subtracted."
    from xai_hsg.marginal import estimate_ms2_baseline

    p = SimParams(n_frames=121, dt_s=60.0, sigma_loc_nm=20.0, k_off_per_s=1 / 600, r_c_nm=150.0)
    base = {
        b: estimate_ms2_baseline(simulate(300, dataclasses.replace(p, ms2_background=b), seed=5).to_arrays())
        for b in (0, 2, -1)
    }
    assert base[0].subtracted == 0.0 and abs(base[0].level) < 0.05 and base[0].method == "auto"
    for b in (2, -1):
        assert base[b].level - base[0].level == pytest.approx(b, abs=1e-9) and base[b].subtracted == base[b].level
    assert base[0].se < 0.01 and 0.9 < base[0].sd_off < 1.1  # the simulator's σ_ms2 = 1
    arrays = simulate(30, p, seed=5).to_arrays()
    assert estimate_ms2_baseline(arrays, given=0.25).subtracted == 0.25
    always_on = arrays.replace(ms2=np.full_like(arrays.ms2, np.nan))
    with pytest.raises(ValueError):
        estimate_ms2_baseline(always_on)
    with pytest.raises(ValueError, match="ms2_baseline"):
        fit_marginal(arrays, sigma_loc_nm=20.0, ms2_baseline="zero")


@pytest.mark.slow
def test_fit_radius_reads_and_subtracts_an_ms2_offset(tmp_path, capsys):
    """MS2 with 2 noise-σ added to every frame: with the baseline held at 0 the fit reported no transcription signal
    (r_c 1,400 nm); `fit-radius` reads the OFF level, fits what is left, says so, and recovers the radius, the same as
    without the offset. Measured (300 traces × 121 one-minute frames, seed 5, σ_loc given): baseline 2.011 [2.001,
    2.022], r_c 133.9 nm [94.6, 173.2] with and without the offset (136.0 nm [97.3, 174.9] with it held at 0)."""
    import json

    from xai_hsg.cli import main

    tracks = _sim_file(tmp_path, 300, 121, seed=5, r_c_nm=150.0, ms2_background=2.0)
    out = tmp_path / "fit.json"
    assert main(["fit-radius", str(tracks), "--out", str(out), "--sigma-loc", "20"]) == 0
    res = json.loads(out.read_text())
    base = res["ms2_baseline"]
    assert base["method"] == "fit" and base["fitted"] and abs(base["subtracted"] - 2.0) < 0.1
    # +0.011 above the offset, as on the same traces without it (0.011 [0.001, 0.022]): a small bias of the fitted
    # baseline on this simulator (its interval misses the truth on both; cause not examined), not the offset
    assert abs(base["estimate"] - 2.0) < 0.03 and base["hi"] - base["lo"] < 0.1
    assert any("baseline" in w for w in res["warnings"]) and "baseline" in capsys.readouterr().err
    lo, hi = res["r_c_interval_nm"]
    assert lo < 150.0 < hi and hi / lo < 3


@pytest.mark.slow
def test_fit_radius_fits_a_bleaching_signal(tmp_path):
    """MS2 whose Pol II signal halves every hour (300 traces × 121 one-minute frames, r_c 150 nm, σ_loc 20 nm given): by
    default (`--bleaching auto`) the score test finds the decay and the rate is fitted, its interval covers the truth,
    a warning names it, and r_c's interval covers 150 nm; with the rate held at 0 the same traces gave "not
    identifiable" (2026-12-07). Measured: z = 6.8, rate 0.671 [0.550, 0.791] per hour (true 0.693), r_c 119.2 nm
    [36.5, 173.5]; ~60–90 s."""
    import json

    from xai_hsg.cli import main

    rate = math.log(2) / 3600
    tracks = _sim_file(tmp_path, 300, 121, seed=5, r_c_nm=150.0, bleach_rate_per_s=rate)
    out = tmp_path / "fit.json"
    assert main(["fit-radius", str(tracks), "--out", str(out), "--sigma-loc", "20"]) == 0
    res = json.loads(out.read_text())
    decay = res["bleaching"]
    assert decay["mode"] == "auto" and decay["fitted"] and abs(decay["score_z"]) > 3, decay
    assert decay["lo"] < rate * 3600 < decay["hi"], decay
    assert any("photobleaching" in w for w in res["warnings"])
    lo, hi = res["r_c_interval_nm"]
    assert lo < 150.0 < hi, (lo, res["r_c_nm"], hi)
