"""Tests of xai_hsg.identify: σ_loc from the MSD of the observed E–P vector (exact curves, gaps, an OU vector and a
sum of OU processes generated here, the project's Rouse simulator) and the identifiability guard of r_c (synthetic
profiles, then `RadiusMLE` on r_c = 5, 150 and 3,000 nm)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from xai_hsg.identify import (
    Identifiability,
    SigmaLocEstimate,
    _fit_family,
    _lag_sums,
    _msd_from_sums,
    estimate_sigma_loc,
    identifiability,
    profile_on_grid,
)
from xai_hsg.simulate import SimParams, simulate
from xai_hsg.tracks import TraceArrays

torch.set_num_threads(1)


def ou_sum_arrays(n, n_frames, rates_per_frame, var_nm2, sigma_loc_nm, seed, dt_s=30.0):
    "A stationary 3-D sum of OU processes (weights ∝ rate^−½, total per-axis variance `var_nm2`) plus localization noise."
    rng = np.random.default_rng(seed)
    w = np.asarray(rates_per_frame, float) ** -0.5
    w = w / w.sum()
    r = np.zeros((n, n_frames, 3))
    for rate, wi in zip(rates_per_frame, w):
        s, a = math.sqrt(wi * var_nm2), math.exp(-rate)
        x = rng.normal(0, s, (n, 3))
        for t in range(n_frames):
            r[:, t] += x
            x = a * x + math.sqrt(1 - a * a) * s * rng.normal(size=(n, 3))
    y = r + math.sqrt(2) * sigma_loc_nm * rng.normal(size=r.shape)
    return TraceArrays(distance_nm=np.linalg.norm(y, axis=-1), dt_s=dt_s, vector_nm=y)


def test_msd_skips_gaps():
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(0, 10, (6, 40, 3)), 1)
    y[2, 5:9] = np.nan
    a = TraceArrays(distance_nm=np.linalg.norm(y, axis=-1), dt_s=30.0, vector_nm=y)
    num, den, kind = _lag_sums(a, 4)
    msd = _msd_from_sums(num, den, kind)
    for k in (1, 3):
        assert np.isclose(msd[k - 1], np.nanmean((y[:, k:] - y[:, :-k]) ** 2))
    # a trace weight of 0 removes the trace
    w = np.ones(6)
    w[2] = 0
    assert np.isclose(
        _msd_from_sums(num, den, kind, w)[0], np.mean((np.delete(y, 2, 0)[:, 1:] - np.delete(y, 2, 0)[:, :-1]) ** 2)
    )


def test_families_on_exact_curves():
    "The saturating law recovers σ on an exact OU MSD that saturates within a few frames; the power law goes to ≈ 0."
    k = np.arange(1, 9.0)
    for sigma in (20.0, 40.0):
        msd = 4 * sigma**2 + 2 * 40000 * -np.expm1(-k / 1.5)
        assert abs(math.sqrt(math.exp(_fit_family("saturating", msd)[0])) - sigma) < 0.5
        assert math.sqrt(math.exp(_fit_family("power", msd)[0])) < sigma / 2


def test_bad_input():
    a = ou_sum_arrays(20, 30, [0.5], 1e4, 20.0, seed=0)
    with pytest.raises(ValueError, match="max_lag_frames"):
        estimate_sigma_loc(a, max_lag_frames=3)
    with pytest.raises(ValueError, match="max_lag_frames"):
        estimate_sigma_loc(a, max_lag_frames=30)
    with pytest.raises(ValueError, match="ci"):
        estimate_sigma_loc(a, ci=1.5)
    empty = TraceArrays(distance_nm=np.full((3, 20), np.nan), dt_s=30.0)
    with pytest.raises(ValueError, match="too few"):
        estimate_sigma_loc(empty, n_boot=0)


def test_estimate_is_seeded_and_json_strict():
    a = ou_sum_arrays(60, 80, [0.5], 4e4, 0.0, seed=3)
    e1, e2 = estimate_sigma_loc(a, n_boot=12, seed=1), estimate_sigma_loc(a, n_boot=12, seed=1)
    assert isinstance(e1, SigmaLocEstimate) and e1 == e2
    assert e1.lo_nm <= e1.sigma_loc_nm <= e1.hi_nm and e1.lo_nm == 0.0  # σ_loc = 0 is inside the interval
    json.dumps(e1.to_dict(), allow_nan=False)


# Measured (300 traces × 241 frames, seeds 0–1 and these): the OU vector is in the saturating family, errors −0.9 to
# −5.8 nm (a small low bias of the log-MSD fit); the Rouse chain at 10 s frames within 5 nm at σ_loc ≥ 20 nm; at 30–60 s
# frames the point estimate errs up to +20 nm (+33 on a short chain) and only the interval (the bracket) holds.
@pytest.mark.slow
@pytest.mark.parametrize("sigma", [20.0, 40.0, 80.0])
def test_ou_vector(sigma):
    a = ou_sum_arrays(300, 241, [0.5], 40000.0, sigma, seed=int(sigma))
    e = estimate_sigma_loc(a, n_boot=30)
    assert abs(e.sigma_loc_nm - sigma) <= 7.0, e
    assert e.lo_nm <= sigma <= e.hi_nm, e


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known limitation: a component decorrelating within a frame (rate 2/frame, 10 % of the variance) is "
    "absorbed into the motion's initial rise; measured σ_loc 0–20 nm for a truth of 40 nm, interval misses it",
)
def test_sum_of_ou_processes():
    "Confined motion with three relaxation rates (0.05, 0.3, 2 per frame): not in either family."
    a = ou_sum_arrays(300, 241, [0.05, 0.3, 2.0], 40000.0, 40.0, seed=5)
    e = estimate_sigma_loc(a, n_boot=30)
    assert e.lo_nm <= 40.0 <= e.hi_nm, e
    assert abs(e.sigma_loc_nm - 40.0) <= 8.0, e


@pytest.mark.slow
@pytest.mark.parametrize("dt_s", [10.0, 30.0, 60.0])
def test_rouse_simulator(dt_s):
    "The bracket covers the truth; at 10 s frames the point estimate is within 5 nm (30–60 s: biased high, see above)."
    a = simulate(300, SimParams(n_frames=241, dt_s=dt_s, sigma_loc_nm=40.0), seed=4).to_arrays()
    e = estimate_sigma_loc(a, n_boot=30)
    assert e.lo_nm <= 40.0 <= e.hi_nm, e
    if dt_s == 10.0:
        assert abs(e.sigma_loc_nm - 40.0) <= 5.0, e
    d = estimate_sigma_loc(a, n_boot=0, use_vectors=False)  # distances only: weaker (0 nm at 60 s in notebook 03c)
    assert d.method.startswith("msd-saturating/distance") and 0.0 <= d.sigma_loc_nm < 100.0, d


R = np.geomspace(5.0, 2000.0, 48)
PEAK = -(((np.log(R) - np.log(150.0)) / 0.1) ** 2) / 2


def test_guard_identifiable_peak():
    g = identifiability(R, PEAK, 150.0)
    assert isinstance(g, Identifiability) and g.identifiable and g.reasons == []
    assert g.lo_nm < 150.0 < g.hi_nm
    # the 90% cut is χ²₁(0.9)/2: ℓ = −½((log r − log 150)/0.1)² crosses it at log r = log 150 ± 0.1·1.645
    assert np.isclose(
        math.log(g.hi_nm / 150.0), 0.1 * 1.6449, rtol=0.05
    )  # linear interpolation on a grid of 0.13 in log r


def test_guard_flat_profile_with_interior_estimate():
    "The point estimate sits in the interior of a flat profile: not at a bound, still not identifiable."
    g = identifiability(R, -1e-3 * (np.log(R) - np.log(60.0)) ** 2, 60.0)
    assert not g.identifiable and not g.at_bound
    assert any("flat" in s for s in g.reasons) and g.flat_ratio > 10
    # flat over less than a decade but with both crossings inside: identifiable
    g2 = identifiability(R, -(((np.log(R) - np.log(150.0)) / 0.6) ** 2) / 2, 150.0)
    assert g2.identifiable and g2.flat_ratio < 10


def test_guard_bound_open_degenerate_and_signal():
    g = identifiability(R, -(((np.log(R) - np.log(5.0)) / 0.3) ** 2), 5.0)
    assert not g.identifiable and g.at_bound and any("bound" in s for s in g.reasons)
    rising = np.log(R)  # maximum at the top of the range: open above
    g = identifiability(R, rising, 1900.0, bounds_nm=(5.0, 2000.0))
    assert not g.identifiable and any("open" in s for s in g.reasons)
    g = identifiability(R, np.full(48, np.nan), 150.0)
    assert not g.identifiable and any("degenerate" in s for s in g.reasons)
    g = identifiability(R, PEAK, 150.0, signal=False)
    assert not g.identifiable and any("signal" in s for s in g.reasons)
    json.dumps(g.to_dict(), allow_nan=False)
    with pytest.raises(ValueError):
        identifiability(R[::-1], PEAK, 150.0)


def test_profile_on_grid():
    p = profile_on_grid(lambda r: -((math.log(r) - math.log(100.0)) ** 2), 10.0, 1000.0, 21)
    assert len(p.r_grid_nm) == 21 and np.isclose(p.r_grid_nm[np.argmax(p.loglik)], 100.0)
    assert json.loads(json.dumps(p.to_dict()))["r_grid_nm"][0] == 10.0
    with pytest.raises(ValueError):
        profile_on_grid(lambda r: 0.0, 10.0, 5.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "n, kw, identifiable",
    [
        (1000, dict(r_c_nm=5.0, k_on_per_s=0.15), False),  # 3 activations in 1,000 traces
        (300, dict(r_c_nm=3000.0, k_on_per_s=1 / 600), False),  # always in contact: flat above ~800 nm
        (300, dict(r_c_nm=150.0), True),
    ],
)
def test_guard_on_radius_mle(n, kw, identifiable, tmp_path):
    from xai_hsg.cli import main
    from xai_hsg.radius import DegenerateFitError, RadiusMLE, identifiable_radius
    from xai_hsg.simulate import save_simulation

    res = simulate(n, SimParams(n_frames=241, k_off_per_s=1 / 300, sigma_loc_nm=20.0, **kw), seed=2)
    a = res.to_arrays()
    m = RadiusMLE(sigma_loc_nm=20.0, n_boot=0).fit(a)
    g = identifiability(m.profile_r_nm_, m.profile_loglik_, m.r_c_nm_, bounds_nm=m.r_range_nm, signal=m.n_events_ > 0)
    assert g.identifiable is identifiable, g
    if identifiable:
        assert g.lo_nm < m.r_c_nm_ < g.hi_nm and identifiable_radius(m).identifiable
        return
    assert g.reasons
    with pytest.raises(DegenerateFitError, match="not identifiable"):
        identifiable_radius(m)
    tracks, _ = save_simulation(res, tmp_path / "sim")  # fit-radius says so too: exit 1, no fit.json
    assert (
        main(
            [
                "fit-radius",
                str(tracks),
                "--out",
                str(tmp_path / "fit.json"),
                "--sigma-loc",
                "20",
                "--n-boot",
                "0",
                "--state-from",
                "truth",
            ]
        )
        == 1
    )
    assert not (tmp_path / "fit.json").exists()


@pytest.mark.slow
def test_noise_hidden_by_fast_motion_keeps_an_honest_interval():
    """A 4x stiffer chain at 60-s frames: the E–P vector decorrelates within about a frame, the saturating law sees no
    noise (σ_loc 0 for a truth of 20 nm) and its bootstrap stays at 0; the interval must not be [0, 0] but reach the
    model-free bound √(MSD(1)/4), which covers the truth."""
    p = SimParams(n_frames=241, dt_s=60.0, sigma_loc_nm=20.0, spring_rate_per_s=4 / 0.177)
    e = estimate_sigma_loc(simulate(300, p, seed=41).to_arrays(), n_boot=30)
    assert e.sigma_loc_nm == 0.0 and e.method.endswith("+lag1-bound"), e
    assert e.lo_nm == 0.0 and e.hi_nm == pytest.approx(math.sqrt(e.msd_nm2[0] / 4)), e
    assert e.lo_nm <= 20.0 <= e.hi_nm, e
