"""The simulator against theory and against its plain reference implementation.

All tests use fixed seeds, so they are deterministic; tolerances are set at about 4 standard errors of the
statistic (stated per test), so a correct simulator passes by a wide margin while the errors they guard against
(wrong mode variances, no contact gating, a wrong kernel, a wrong loading rate) move the statistic by far more."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from xai_hsg.contact import maxwell_cdf
from xai_hsg.simulate import (
    SimParams,
    SimulationData,
    _trapezoid,
    contact_probability,
    load_simulation,
    mean_ms2_theory,
    msd_theory,
    on_fraction_theory,
    rouse_modes,
    save_simulation,
    simulate,
    simulate_reference,
    write_simulation,
)

# A polymer 50x faster with the same variance (D and k both x50): the fast-polymer limit of the two-state formula.
FAST_POLYMER = SimParams(
    diffusion_nm2_per_s=2810.0 * 50,
    spring_rate_per_s=50 / 0.177,
    r_c_nm=150.0,
    k_on_per_s=1 / 300,
    k_off_per_s=1 / 1800,
)


@pytest.fixture(scope="module")
def stationary():
    "Many short traces: frame 0 of each is an independent stationary draw."
    return simulate(3000, SimParams(n_frames=3), seed=11)


@pytest.fixture(scope="module")
def fast_limit():
    return simulate(200, FAST_POLYMER, seed=5)


@pytest.fixture(scope="module")
def pair():
    "The vectorised and the reference simulator on the same (default) parameters."
    p = SimParams(n_frames=301)
    return simulate(400, p, seed=1), simulate_reference(60, p, seed=2)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "field,value",
    [
        ("k_off_per_s", -1.0),
        ("k_on_per_s", -0.1),
        ("nu_on_per_s", -1e-3),
        ("r_c_nm", 0.0),
        ("r_c_nm", -5.0),
        ("dt_s", 0.0),
        ("dt_s", float("nan")),
        ("sigma_loc_nm", -1.0),
        ("n_frames", 1),
        ("n_frames", 10.5),
        ("t_rise_s", 0.0),
        ("variance_kept", 1.5),
        ("separation_beads", 334),
        ("diffusion_nm2_per_s", float("inf")),
        ("amplitude", "big"),
    ],
)
def test_bad_params_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SimParams\.{field}"):
        SimParams(**{field: value})


def test_bad_run_arguments():
    with pytest.raises(ValueError, match="n_traces"):
        simulate(0)
    with pytest.raises(ValueError, match="seed"):
        simulate(2, seed=-1)
    with pytest.raises(ValueError, match="unknown field"):
        SimParams.from_dict({"r_c": 3.0})
    assert SimParams.from_dict(SimParams(r_c_nm=80.0).to_dict()) == SimParams(r_c_nm=80.0)


def test_defaults_follow_yang_et_al_in_seconds():
    p = SimParams()
    # k_on = 20/min * (90/90)^1.5 * (30/100)^3 = 0.54/min = 0.009/s
    assert p.k_on == pytest.approx(0.009) and p.k_off_per_s == pytest.approx(1 / 3600)
    assert p.duration_s == 18000.0 and p.dt_s == 30.0
    m = rouse_modes(p)
    assert m.var_full_nm2 == pytest.approx(90 * 2810 * 0.177)  # s D / k
    assert 0.999 <= m.fraction_kept < 0.9995 and m.n_modes < p.n_beads - 1
    assert np.all(np.diff(m.rate_per_s) > 0)


def test_chunks_and_threads(monkeypatch):
    "Chunks of traces have their own streams spawned from the seed: the numbers do not depend on the threads."
    import xai_hsg.simulate as sim

    monkeypatch.setattr(sim, "CHUNK_TRACES", 8)  # 30 traces: chunks of 8, 8, 8, 6
    p = SimParams(n_frames=40)
    a, b = simulate(30, p, seed=8, threads=1), simulate(30, p, seed=8, threads=3)
    for f in ("xyz_nm", "ms2", "state", "loading_counts", "initial_state"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.n_traces == 30 and len(a.loading_times_s) == len(a.candidate_times_s) == 30 and a.seed == 8
    for i in (0, 9, 29):  # ragged truth stays with its trace
        np.testing.assert_allclose(
            a.ms2_clean[i],
            p.amplitude * sum(_trapezoid(a.t_s - x, p.t_rise_s, p.t_plateau_s) for x in a.loading_times_s[i]),
            atol=1e-4,
        )
    assert not np.array_equal(a.xyz_nm[:8], a.xyz_nm[8:16])  # the chunks' streams differ
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            simulate(2, threads=bad)


def test_bench_runs_and_reports(tmp_path):
    "The report's bookkeeping, checked without timing: what ran, how the reference is scaled, how the ratio is formed."
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_simulate.py"
    spec = importlib.util.spec_from_file_location("bench_simulate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(
        [
            "--n",
            "20",
            "--n-frames",
            "30",
            "--n-ref",
            "2",
            "--repeat",
            "2",
            "--threads",
            "1",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    written = json.loads((tmp_path / "b.json").read_text())
    assert list(written) == list(out) and written["speedup"] == pytest.approx(out["speedup"])
    assert list(out) == list(bench.FIELDS)  # the documented fields, no more (CPU)
    # the runs simulate what they say: 20 x 30 vectorised, 2 x 30 reference, the same model (modes)
    assert out["vectorised_trace_frames"] == 20 * 30 and out["reference_trace_frames_measured"] == 2 * 30
    assert out["reference_trace_frames_measured"] * 20 / 2 == out["vectorised_trace_frames"]
    assert out["reference_n_modes"] == out["n_modes"] and out["n_slow_modes"] == 15
    # the reference's time is scaled per trace; the ratio and throughputs are formed from the reported times
    assert out["reference_s_scaled"] == pytest.approx(out["reference_s_measured"] * 20 / 2)
    assert len(out["vectorised_s_all_runs"]) == 2 and out["vectorised_s"] == min(out["vectorised_s_all_runs"])
    assert out["speedup"] == pytest.approx(out["reference_s_scaled"] / out["vectorised_s"])
    assert out["vectorised_trace_frames_per_s"] == pytest.approx(600 / out["vectorised_s"])
    assert out["reference_trace_frames_per_s"] == pytest.approx(600 / out["reference_s_scaled"])


def test_deterministic_per_seed():
    a, b, c = simulate(4, seed=3), simulate(4, seed=3), simulate(4, seed=4)
    for f in ("xyz_nm", "ms2", "state", "loading_counts"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.xyz_nm, c.xyz_nm)
    r1, r2 = simulate_reference(2, seed=3), simulate_reference(2, seed=3)
    np.testing.assert_array_equal(r1.ms2, r2.ms2)


# ---------------------------------------------------------------- polymer


def test_stationary_variance_and_gaussianity(stationary):
    p = SimParams(n_frames=3)
    var = rouse_modes(p).var_kept_nm2
    x = stationary.xyz_true_nm[:, 0, :].astype(float).ravel()  # 9000 independent N(0, var) draws
    # SE of a variance estimate from n draws: var*sqrt(2/n) = 1.5%; tolerance 6% (4 SE)
    assert x.var() == pytest.approx(var, rel=4 * math.sqrt(2 / x.size))
    assert stats.kstest(x / math.sqrt(var), "norm").pvalue > 1e-3
    obs = stationary.xyz_nm[:, 0, :].astype(float).ravel()  # + N(0, 2 sigma_loc^2) per axis
    assert obs.var() == pytest.approx(var + 2 * p.sigma_loc_nm**2, rel=4 * math.sqrt(2 / obs.size))
    # a wrong mode variance (e.g. D/k instead of D/(k lambda_p)) would be off by orders of magnitude; check both ends
    assert not x.var() == pytest.approx(var * 1.1, rel=4 * math.sqrt(2 / x.size))


def test_contact_probability_matches_maxwell(stationary):
    d = stationary.distance_true_nm[:, 0].astype(float)
    sigma = math.sqrt(rouse_modes(SimParams()).var_kept_nm2)
    assert stats.kstest(d, lambda r: maxwell_cdf(r, sigma)).pvalue > 1e-3
    for rc in (100.0, 250.0):
        pc = contact_probability(SimParams(r_c_nm=rc))
        se = math.sqrt(pc * (1 - pc) / d.size)  # binomial SE; tolerance 4 SE
        assert abs((d < rc).mean() - pc) < 4 * se, (rc, (d < rc).mean(), pc)


def test_msd_rouse_slope():
    p = SimParams(n_frames=101)
    res = simulate(300, p, seed=7)
    x = res.xyz_true_nm.astype(float)
    lags = np.arange(1, 11)  # 30-300 s
    msd = np.array([np.mean(np.sum((x[:, l:] - x[:, :-l]) ** 2, -1)) for l in lags])
    theory = msd_theory(lags * p.dt_s, p)
    # 300 traces x ~100 windows: the MSD mean is known to a few %; 10% tolerance
    np.testing.assert_allclose(msd, theory, rtol=0.10)
    slope = np.polyfit(np.log(lags), np.log(msd), 1)[0]
    slope_theory = np.polyfit(np.log(lags), np.log(theory), 1)[0]
    assert 0.45 < slope_theory < 0.55 and abs(slope - slope_theory) < 0.05, (slope, slope_theory)
    # localization noise adds 2 * 3 * 2 sigma_loc^2 to every lag
    obs = res.xyz_nm.astype(float)
    msd_obs = np.mean(np.sum((obs[:, 1:] - obs[:, :-1]) ** 2, -1))
    assert msd_obs == pytest.approx(theory[0] + 12 * p.sigma_loc_nm**2, rel=0.10)


def test_mode_selection_minimises_slow_modes():
    "Cost-aware choice: >= variance_kept of Var(r) with the fewest slow modes (rate * dt < FRESH_DECAY), then the fewest fast."
    from xai_hsg.simulate import FRESH_DECAY

    for p in (SimParams(), SimParams(dt_s=5.0), SimParams(variance_kept=0.99), SimParams(separation_beads=31)):
        m = rouse_modes(p)
        assert m.fraction_kept >= p.variance_kept - 1e-12
        N, k = p.n_beads, p.spring_rate_per_s  # every mode, from the formulas
        a = N // 2 - p.separation_beads // 2
        b = a + p.separation_beads
        q = np.arange(1, N)
        lam = 2 * (1 - np.cos(np.pi * q / N))
        var = (
            2
            / N
            * (np.cos((a + 0.5) * q * np.pi / N) - np.cos((b + 0.5) * q * np.pi / N)) ** 2
            * p.diffusion_nm2_per_s
            / (k * lam)
        )
        assert var.sum() == pytest.approx(m.var_full_nm2)
        slow = k * lam * p.dt_s < FRESH_DECAY
        kept = np.isin(q, m.p)
        n_slow = int((kept & slow).sum())
        # one slow mode fewer cannot reach the target even with every fast mode
        if n_slow:
            best = np.sort(var[slow])[::-1][: n_slow - 1].sum() + var[~slow].sum()
            assert best < p.variance_kept * var.sum()
        # the kept slow modes are the largest ones; one fast mode fewer misses the target
        assert var[kept & slow].min(initial=np.inf) >= var[~kept & slow].max(initial=0)
        if (kept & ~slow).any():
            assert m.var_kept_nm2 - var[kept & ~slow].min() < p.variance_kept * var.sum()
    # the even modes (E and P placed symmetrically) hold little variance: the default keeps 15 of the 33 slow modes
    m, p = rouse_modes(SimParams()), SimParams()
    assert int(np.sum(m.rate_per_s * p.dt_s < FRESH_DECAY)) == 15


def _polymer_at(t_c, n, seed=0):
    "r from the simulator's polymer step at frames 0, 30, 60, 90 s and at candidate times `t_c` (the same in every trace)."
    import torch

    from xai_hsg.simulate import _polymer

    p = SimParams(n_frames=4)
    t_frames = torch.arange(4, dtype=torch.float64) * p.dt_s
    t_cand = torch.tensor(t_c, dtype=torch.float64).expand(n, -1).contiguous()
    g = torch.Generator()
    g.manual_seed(seed)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as `simulate` would for this size (small steps)
    try:
        r_f, r_c = _polymer(
            g, t_frames, p.dt_s, t_cand, torch.ones_like(t_cand, dtype=torch.bool), rouse_modes(p), torch.float32
        )
    finally:
        torch.set_num_threads(before)
    return p, np.r_[t_frames.numpy(), t_c], torch.cat([r_f, r_c], 1).double().numpy()


@pytest.mark.slow
@pytest.mark.parametrize(
    "t_c",
    [
        [0.2, 10.0, 10.7, 29.5, 31.0, 75.0],  # near a frame; close; either side; alone
        list(np.linspace(1.0, 58.0, 24)),
    ],
)  # dense: k_on ~ 0.4/s (r_c = 30 nm)
def test_polymer_at_candidates_has_the_rouse_covariance(t_c):
    """The exact law at the frames and at candidates, also for candidates sharing an interval, a frame, or next to one:
    the variogram Var(r_i - r_j) of every pair of points against 2 sum_p c_p^2 std_p^2 (1 - e^{-theta_p |t_i - t_j|})."""
    from xai_hsg.simulate import FRESH_DECAY

    p, t, r = _polymer_at(t_c, 40000 if len(t_c) < 10 else 8000)
    m = rouse_modes(p)
    lag = np.abs(t[:, None] - t[None, :])
    theory = 2 * np.sum(m.coef**2 * m.std_nm**2 * -np.expm1(-m.rate_per_s * lag[..., None]), -1)
    x = r.transpose(0, 2, 1).reshape(-1, len(t))  # 120,000 (24,000 for the dense set) samples per point
    emp = np.mean((x[:, :, None] - x[:, None, :]) ** 2, 0)
    iu = np.triu_indices(len(t), 1)
    # a variogram estimate from n Gaussian samples has SE sqrt(2/n) = 0.4% (n = 120,000; 0.9% for 24,000); tolerance
    # 5 SE (the pairs share samples). Dropping the frames' correlation, a shared frame or the candidates' joint law
    # moves the short lags by far more.
    tol = 5 * math.sqrt(2 / len(x))
    np.testing.assert_allclose(emp[iu], theory[iu], rtol=tol)
    np.testing.assert_allclose(x.var(0), m.var_kept_nm2, rtol=tol)  # stationary variance at every point
    # power: at the shortest lag the fast modes' share of the variogram is large, so an error of a few % in their
    # law would fail the tolerance
    fast = m.rate_per_s * p.dt_s >= FRESH_DECAY
    theory_fast = 2 * np.sum((m.coef**2 * m.std_nm**2 * -np.expm1(-m.rate_per_s * lag[..., None]))[..., fast], -1)
    k = np.argmin(lag[iu])
    assert theory_fast[iu][k] > 0.5 * theory[iu][k]


def test_banded_gaussian_draws_its_covariance():
    "Chains of 6 points with covariance banded 2 wide (as the fast modes at candidates): samples have that covariance."
    import torch

    from xai_hsg.simulate import _banded_gaussian

    m, n_chains = 6, 20000
    t = np.array([0.0, 0.5, 3.0, 3.2, 9.0, 9.05])
    C = np.exp(-np.abs(t[:, None] - t[None, :]) / 2.0) * (np.abs(np.arange(m)[:, None] - np.arange(m)[None, :]) <= 2)
    assert np.linalg.eigvalsh(C).min() > 0  # a valid banded covariance
    start = np.tile(np.maximum(np.arange(m) - 2, 0), n_chains) + np.repeat(np.arange(n_chains) * m, m)
    band = np.zeros((m, 3))
    band[:, 0] = 1.0
    for d in (1, 2):
        band[d:, d] = C[np.arange(d, m), np.arange(m - d)]
    g = torch.Generator()
    g.manual_seed(0)
    x = _banded_gaussian(
        g,
        torch.zeros(m * n_chains, 3, dtype=torch.float64),
        torch.ones(m * n_chains, dtype=torch.float64),
        torch.tensor(np.tile(band, (n_chains, 1))),
        torch.tensor(start),
        dict(dtype=torch.float32),
    )
    x = x.numpy().reshape(n_chains, m, 3).transpose(0, 2, 1).reshape(-1, m)  # 60,000 draws of the 6-vector
    # covariance entries from 60,000 draws: SE <= sqrt(2/60000) = 0.006; tolerance 0.03 (5 SE)
    np.testing.assert_allclose(np.cov(x.T), C, atol=0.03)
    # a singular covariance (two points at the same time): finite draws, equal at the two points
    band1 = np.array([[1.0, 0.0], [1.0, 1.0]])
    y = _banded_gaussian(
        g,
        torch.zeros(2, 3, dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
        torch.tensor(band1),
        torch.tensor([0, 0]),
        dict(dtype=torch.float32),
    )
    assert torch.isfinite(y).all() and torch.allclose(y[0], y[1], atol=1e-5)


# ---------------------------------------------------------------- promoter, Pol II, MS2


def test_on_fraction_fast_polymer_limit(fast_limit):
    p = FAST_POLYMER
    theory = on_fraction_theory(p)  # k_on Pc / (k_on Pc + k_off)
    sim = fast_limit.on_fraction.mean()
    # ~200 traces x 10 switching times each: SE of the ON fraction ~0.015; tolerance 0.05 absolute.
    # Without contact gating the ON fraction would be k_on/(k_on+k_off) = 0.86, far outside.
    assert 0.2 < theory < 0.8 and abs(sim - theory) < 0.05, (sim, theory)
    assert abs(fast_limit.state.mean() - sim) < 0.01


def test_loadings_and_mean_ms2(fast_limit):
    p, res = FAST_POLYMER, fast_limit
    # loadings per frame: Poisson with mean nu_on * dt * (ON fraction of the frame), given the promoter path
    expected = p.nu_on_per_s * p.dt_s * res.on_fraction.astype(float).sum()
    assert res.loading_counts.sum() == pytest.approx(expected, rel=4 / math.sqrt(expected))
    # mean MS2 = A nu_on P(ON) (T_rise/2 + T_plateau): against the simulated P(ON) (tests kernel + loading) ...
    kernel_area = p.t_rise_s / 2 + p.t_plateau_s
    m = res.ms2_clean.astype(float).mean()
    assert m == pytest.approx(p.amplitude * p.nu_on_per_s * res.on_fraction.mean() * kernel_area, rel=0.05)
    # ... and against the closed form (adds the promoter's fast-polymer law; 0.05/0.5 relative on P(ON))
    assert m == pytest.approx(mean_ms2_theory(p), rel=0.12)
    assert res.ms2.astype(float).mean() == pytest.approx(m, abs=4 * p.sigma_ms2 / math.sqrt(res.ms2.size))


def test_truth_fields_are_consistent():
    "Per-frame truth recomputed from the event times, the slow obvious way."
    res = simulate(6, SimParams(n_frames=120), seed=9)
    p, t = res.params, res.t_s
    for i in range(res.n_traces):
        lt = res.loading_times_s[i]
        clean = p.amplitude * sum(_trapezoid(t - x, p.t_rise_s, p.t_plateau_s) for x in lt) + p.ms2_background
        np.testing.assert_allclose(res.ms2_clean[i], clean, atol=1e-4)
        counts = [np.sum((lt >= x - p.dt_s / 2) & (lt < x + p.dt_s / 2)) for x in t]
        np.testing.assert_array_equal(res.loading_counts[i], counts)
        sw = res.switch_times_s[i]
        state = (res.initial_state[i] + np.searchsorted(sw, t, side="right")) % 2
        np.testing.assert_array_equal(res.state[i], state)
        acc = res.candidate_accepted[i]
        np.testing.assert_array_equal(acc, res.candidate_distance_nm[i] < p.r_c_nm)
        assert np.all(
            np.isin(
                sw[np.diff(np.r_[res.initial_state[i], (res.initial_state[i] + 1 + np.arange(len(sw))) % 2]) > 0],
                res.candidate_times_s[i][acc],
            )
        )  # every OFF->ON flip is an accepted candidate
    np.testing.assert_allclose(res.distance_true_nm, np.linalg.norm(res.xyz_true_nm, axis=-1), rtol=1e-5)


def test_soft_contact_acceptance():
    p = SimParams(n_frames=301, contact_width_nm=40.0, r_c_nm=150.0)
    res = simulate(100, p, seed=4)
    d = np.concatenate(res.candidate_distance_nm)
    acc = np.concatenate(res.candidate_accepted)
    prob = 1 / (1 + np.exp(-(p.r_c_nm - d) / p.contact_width_nm))
    assert abs(acc.sum() - prob.sum()) < 4 * math.sqrt(np.sum(prob * (1 - prob)))
    assert np.any(acc & (d > p.r_c_nm))  # soft: some beyond r_c accepted


# ---------------------------------------------------------------- fast vs reference


@pytest.mark.slow
def test_fast_and_reference_agree_in_distribution(pair):
    fast, ref = pair
    # frames 10 apart (300 s, past the E-P relaxation time) to keep KS samples close to independent
    ks = stats.ks_2samp(fast.distance_true_nm[:, ::10].ravel(), ref.distance_true_nm[:, ::10].ravel())
    assert ks.pvalue > 1e-3, ks
    on_f, on_r = fast.on_durations_s(), ref.on_durations_s()
    assert len(on_r) > 30
    assert stats.ks_2samp(on_f, on_r).pvalue > 1e-3
    assert stats.ks_2samp(fast.loading_counts.sum(1), ref.loading_counts.sum(1)).pvalue > 1e-3
    assert stats.ks_2samp(fast.ms2_clean[:, ::10].ravel(), ref.ms2_clean[:, ::10].ravel()).pvalue > 1e-3
    # and the test has power: a simulation with a 2x contact radius is told apart
    other = simulate(400, fast.params.replace(r_c_nm=200.0, k_on_per_s=fast.params.k_on), seed=1)
    assert stats.ks_2samp(other.loading_counts.sum(1), ref.loading_counts.sum(1)).pvalue < 1e-3


def _first_candidate(res):
    "Per trace (independent samples): |r| at its first candidate and its change since the frame before it."
    d, inc, gap = [], [], []
    for i, (t, dist) in enumerate(zip(res.candidate_times_s, res.candidate_distance_nm)):
        k = np.searchsorted(res.t_s, t, side="right") - 1
        ok = np.flatnonzero(k >= 0)
        if len(ok):
            j = ok[0]
            d.append(dist[j])
            inc.append(dist[j] - res.distance_true_nm[i, k[j]])
            gap.append(t[j] - res.t_s[k[j]])
    return np.array(d), np.array(inc), np.array(gap)


@pytest.mark.slow
def test_candidate_times_joint_law_matches_reference():
    """At candidate times the vectorised simulator steps fast modes only along short chains; the distance there and
    its change since the previous frame (a short-lag joint law) must match the reference, one sample per trace."""
    p = SimParams(n_frames=21)
    d_f, inc_f, gap_f = _first_candidate(simulate(3000, p, seed=21))
    d_r, inc_r, gap_r = _first_candidate(simulate_reference(800, p, seed=22))
    sigma = math.sqrt(rouse_modes(p).var_kept_nm2)
    assert stats.kstest(d_f, lambda r: maxwell_cdf(r, sigma)).pvalue > 1e-3
    assert stats.ks_2samp(d_f, d_r).pvalue > 1e-3
    assert stats.ks_2samp(inc_f, inc_r).pvalue > 1e-3
    short_f, short_r = inc_f[gap_f < 5], inc_r[gap_r < 5]  # fast modes still correlated
    assert len(short_r) > 40 and stats.ks_2samp(short_f, short_r).pvalue > 1e-3
    # power: without short-lag correlation (fresh r at the candidate) the increments would be far wider
    assert np.std(short_f) < 0.8 * math.sqrt(2) * np.std(d_f)


# ---------------------------------------------------------------- output files


def test_write_simulation(tmp_path):
    from xai_hsg.tracks import read_tracks

    tracks_path, truth_path = write_simulation(tmp_path / "sim", 3, SimParams(n_frames=50, r_c_nm=120.0), seed=2)
    assert tracks_path == tmp_path / "sim" / "tracks.csv" and truth_path == tmp_path / "sim" / "truth.json"
    res = simulate(3, SimParams(n_frames=50, r_c_nm=120.0), seed=2)
    tr = read_tracks(tracks_path).data
    assert len(tr) == 150 and tr["trace_id"].unique().tolist() == ["0", "1", "2"]
    np.testing.assert_array_equal(tr["dx_nm"].to_numpy().reshape(3, 50), res.xyz_nm[..., 0].astype(float))
    np.testing.assert_array_equal(tr["loadings"].to_numpy().reshape(3, 50), res.loading_counts)
    truth = json.loads(truth_path.read_text())
    assert truth["seed"] == 2 and truth["params"]["r_c_nm"] == 120.0 and len(truth["traces"]) == 3
    assert truth["traces"][1]["loading_times_s"] == res.loading_times_s[1].tolist()


def _assert_same_arrays(a, b):
    import dataclasses

    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is not None:
            assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y), f.name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("dt_s", [30.0, 28.3])
def test_to_arrays_is_the_written_and_read_tracks(tmp_path, fmt, dt_s):
    "`SimResult.to_arrays()` is bitwise what a save + read round trip gives, truth columns included."
    from xai_hsg.tracks import read_tracks

    res = simulate(4, SimParams(n_frames=25, dt_s=dt_s, r_c_nm=150.0), seed=3)
    tracks_path, _ = save_simulation(res, tmp_path, fmt=fmt)
    arrays = res.to_arrays()
    _assert_same_arrays(arrays, read_tracks(tracks_path).to_arrays())
    for name in ("state", "on_fraction", "loadings", "ms2_clean", "distance_true_nm", "ms2", "vector_nm"):
        assert getattr(arrays, name) is not None, name
    np.testing.assert_array_equal(arrays.loadings, res.loading_counts)
    np.testing.assert_array_equal(arrays.vector_nm, res.xyz_nm)
    # no temporary left; the hidden marker says which kind of run the folder holds (core.atomic_folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".xai_hsg_output.json", f"tracks.{fmt}", "truth.json"]


def test_load_simulation(tmp_path):
    p = SimParams(n_frames=30, r_c_nm=120.0)
    res = simulate(3, p, seed=6)
    save_simulation(res, tmp_path / "sim", fmt="parquet")
    sim = load_simulation(tmp_path / "sim")
    assert isinstance(sim, SimulationData) and sim.params == p and sim.truth == json.loads(json.dumps(res.truth_dict()))
    _assert_same_arrays(sim.to_arrays(), res.to_arrays())
    # truth.json is written as before: compact, keys in insertion order
    assert (tmp_path / "sim" / "truth.json").read_text() == json.dumps(res.truth_dict()) + "\n"
    # a run in another format replaces the folder as a whole: never the older run's tracks beside the new truth
    save_simulation(simulate(5, p, seed=6), tmp_path / "sim", fmt="csv")
    assert load_simulation(tmp_path / "sim").tracks.n_traces == 5 and not (tmp_path / "sim" / "tracks.parquet").exists()
    with pytest.raises(FileNotFoundError, match="run notebook 01_simulation first"):
        load_simulation(tmp_path / "nothing")
    # by profile: notebook 01's artifact folder (core.stage_file), with the command to make it when missing
    save_simulation(res, tmp_path / "root" / "artifacts" / "demo" / "01_simulation")
    assert load_simulation(profile="demo", root=tmp_path / "root").params == p
    with pytest.raises(FileNotFoundError, match="reproduce --profile other --only 01"):
        load_simulation(profile="other", root=tmp_path / "root")
    # tracks and truth from different runs (copied by hand) are refused
    save_simulation(res, tmp_path / "other")
    (tmp_path / "sim" / "truth.json").write_text((tmp_path / "other" / "truth.json").read_text())
    with pytest.raises(ValueError, match="different runs"):
        load_simulation(tmp_path / "sim")


def test_cli_simulate(tmp_path, capsys):
    from xai_hsg.cli import main
    from xai_hsg.tracks import read_tracks

    assert (
        main(
            [
                "simulate",
                "--n",
                "2",
                "--frames",
                "15",
                "--rc",
                "80",
                "--sigma-loc",
                "30",
                "--seed",
                "4",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "tracks.csv" in capsys.readouterr().out
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["params"]["r_c_nm"] == 80.0 and truth["params"]["sigma_loc_nm"] == 30.0 and truth["seed"] == 4
    assert read_tracks(tmp_path / "tracks.csv").n_traces == 2
    assert main(["simulate", "--n", "2", "--rc", "0", "--out", str(tmp_path / "x")]) == 1
    assert "SimParams.r_c_nm" in capsys.readouterr().err
