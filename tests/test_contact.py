"""Tests of xai_hsg.contact: the Maxwell and 3-D Rice CDFs, the gate posterior, the motion covariance, the Gaussian
bridge inside a frame interval and its quadrature of the interval contact probability ḡ."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from xai_hsg.contact import (
    BridgeTerms,
    MotionCovariance,
    PairEnds,
    _angle_nodes,
    bridge_coefficients,
    bridge_terms,
    endpoint_terms,
    estimate_sigma_r,
    gate_posterior,
    maxwell_cdf,
    motion_covariance,
    pair_gates,
    rice3_cdf,
    summed_gates,
)
from xai_hsg.tracks import TraceArrays

torch.set_num_threads(1)
f64 = dict(dtype=torch.float64)
PROPS = settings(max_examples=60, deadline=None)


def ar1_arrays(n_traces=300, n_frames=60, S=150.0**2, rho=0.8, sigma_loc=30.0, seed=0):
    "Per axis an AR(1) true vector (variance S, lag-one autocorrelation ρ), observed with noise 2σ_loc² per axis."
    rng = np.random.default_rng(seed)
    r = np.empty((n_traces, n_frames, 3))
    r[:, 0] = rng.normal(0, math.sqrt(S), (n_traces, 3))
    for t in range(1, n_frames):
        r[:, t] = rho * r[:, t - 1] + rng.normal(0, math.sqrt(S * (1 - rho**2)), (n_traces, 3))
    y = r + rng.normal(0, math.sqrt(2) * sigma_loc, r.shape)
    return TraceArrays(distance_nm=np.linalg.norm(y, axis=-1), dt_s=30.0, vector_nm=y)


def all_pairs(a: TraceArrays) -> PairEnds:
    d = np.where(a.mask, a.distance_nm, np.nan)
    v = np.where(a.mask[..., None], a.vector_nm, np.nan)
    return PairEnds(d[:, :-1].ravel(), d[:, 1:].ravel(), v[:, :-1].reshape(-1, 3), v[:, 1:].reshape(-1, 3))


# --- the distance laws -------------------------------------------------------------------------------------------
@PROPS
@given(r=st.floats(0, 2000), sigma=st.floats(1, 500))
def test_maxwell_is_scipys_maxwell(r, sigma):
    assert maxwell_cdf(r, sigma) == pytest.approx(stats.maxwell(scale=sigma).cdf(r), abs=1e-12)


@PROPS
@given(r=st.floats(0, 2000), sigma=st.floats(1, 500))
def test_rice_at_zero_mean_is_maxwell(r, sigma):
    f = rice3_cdf(torch.tensor(r, **f64), torch.tensor(0.0, **f64), torch.tensor(sigma, **f64)).item()
    assert f == pytest.approx(float(maxwell_cdf(r, sigma)), abs=1e-10)


@PROPS
@given(r=st.floats(0, 1500), mu=st.floats(0, 1000), sigma=st.floats(5, 300))
def test_rice_is_noncentral_chi3(r, mu, sigma):
    "(|r|/σ)² ~ χ'²₃((μ/σ)²): the closed form against scipy's non-central χ²."
    f = rice3_cdf(torch.tensor(r, **f64), torch.tensor(mu, **f64), torch.tensor(sigma, **f64)).item()
    assert f == pytest.approx(stats.ncx2(3, (mu / sigma) ** 2).cdf((r / sigma) ** 2), abs=1e-8)


@PROPS
@given(mu=st.floats(0, 500), dmu=st.floats(1, 200), sigma=st.floats(5, 200))
def test_rice_is_monotone(mu, dmu, sigma):
    "Increasing in the radius, decreasing in the distance of the centre."
    R = torch.linspace(0, 1500, 61, **f64)
    f = rice3_cdf(R, torch.tensor(mu, **f64), torch.tensor(sigma, **f64))
    assert (torch.diff(f) >= -1e-12).all()
    assert (rice3_cdf(R, torch.tensor(mu + dmu, **f64), torch.tensor(sigma, **f64)) <= f + 1e-12).all()


def test_rice_gradient_in_radius_finite_at_zero_mean_and_tails():
    R = torch.tensor([1e-3, 150.0, 5000.0], requires_grad=True, **f64)
    rice3_cdf(R, torch.tensor([0.0, 100.0, 0.0], **f64), torch.tensor(50.0, **f64)).sum().backward()
    assert torch.isfinite(R.grad).all() and (R.grad >= 0).all()


def test_estimate_sigma_r_removes_noise_and_floors():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 200.0, (40_000, 3)) + rng.normal(0, math.sqrt(2) * 40.0, (40_000, 3))
    d = np.linalg.norm(y, axis=1)
    d[:50] = np.nan
    assert estimate_sigma_r(d, 40.0) == pytest.approx(200.0, rel=0.02)
    assert estimate_sigma_r(d, 0.0) > 1.03 * 200.0  # without removing the noise: √(σ_r² + 2σ_loc²)
    assert estimate_sigma_r(np.array([1.0, 2.0]), 40.0, floor_nm=5.0) == 5.0


# --- the gate posterior ------------------------------------------------------------------------------------------
@PROPS
@given(sr=st.floats(10, 1000), sl=st.floats(0, 100), blur=st.floats(0, 100))
def test_gate_posterior_numpy_equals_torch_and_is_a_shrinkage(sr, sl, blur):
    m, sd = gate_posterior(sr, sl, blur)
    mt, sdt = gate_posterior(torch.tensor(sr, **f64), torch.tensor(sl, **f64), torch.tensor(blur, **f64))
    assert mt.item() == pytest.approx(m, rel=1e-12) and sdt.item() == pytest.approx(sd, rel=1e-12, abs=1e-12)
    assert 0 < m <= 1 and 0 <= sd <= sr and sd <= math.sqrt(2 * sl**2 + blur**2) + 1e-9
    # the posterior variance is the prior's minus what the observation explains
    assert sd**2 == pytest.approx(sr**2 * (1 - m), rel=1e-9, abs=1e-9)


# --- the motion covariance ---------------------------------------------------------------------------------------
def test_motion_covariance_recovers_ar1_moments():
    a = ar1_arrays()
    cv, cd = motion_covariance(a, 30.0), motion_covariance(a, 30.0, use_vectors=False)
    assert isinstance(cv, MotionCovariance) and cv.noise_nm2 == 2 * 30.0**2
    assert cv.S_nm2 == pytest.approx(150.0**2, rel=0.03) and cv.c1_nm2 == pytest.approx(0.8 * 150.0**2, rel=0.03)
    assert cd.S_nm2 == pytest.approx(150.0**2, rel=0.05) and cd.c1_nm2 == pytest.approx(0.8 * 150.0**2, rel=0.08)
    # the same data without vectors gives the distance-only moments
    assert motion_covariance(a.replace(vector_nm=None), 30.0) == cd
    # masked frames are not read
    keep = np.arange(60) % 3 != 2
    a2 = a.replace(distance_nm=np.where(keep, a.distance_nm, 1e6), mask=np.tile(keep, (300, 1)))
    assert motion_covariance(a2, 30.0, use_vectors=False).S_nm2 == pytest.approx(cd.S_nm2, rel=0.05)
    with pytest.raises(ValueError, match="no observed distance"):
        motion_covariance(a.replace(mask=np.zeros((300, 60), bool)), 30.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cv.S_nm2 = 1.0


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_motion_covariance_without_consecutive_frames():
    a = ar1_arrays(n_traces=50, n_frames=2)
    one = a.replace(mask=np.array([[True, False]] * 50))
    cov = motion_covariance(one, 30.0)
    assert cov.c1_nm2 == 0.0 and cov.S_nm2 > 0


# --- the bridge --------------------------------------------------------------------------------------------------
@PROPS
@given(
    S=st.floats(100, 1e6),
    frac=st.floats(0.0, 0.999),
    noise=st.floats(0, 1e5),
    n=st.integers(1, 10),
    alpha=st.floats(0.1, 2.0),
)
def test_bridge_variance_is_between_floor_and_prior(S, frac, noise, n, alpha):
    "Conditioning never widens: 1 nm² ≤ v ≤ v₀, v₁ ≤ S; the quadrature weights sum to 1 on (0, 1)."
    b = bridge_coefficients(MotionCovariance(S, frac * S, noise), n_nodes=n, msd_exponent=alpha)
    assert b.w.sum() == pytest.approx(1.0) and ((b.u > 0) & (b.u < 1)).all()
    tol = 1e-9 * S
    assert (b.v >= 1.0).all() and (b.v <= b.v0 + tol).all() and (b.v <= b.v1 + tol).all()
    assert (b.v0 <= S + tol).all() and (b.v1 <= S + tol).all() and b.kappa_per_nm2 >= 0


def test_bridge_limits():
    S = 150.0**2
    b0 = bridge_coefficients(MotionCovariance(S, 0.8 * S, 0.0), n_nodes=8)
    assert np.allclose(b0.v, b0.v[::-1]) and np.allclose(b0.a, b0.b[::-1])  # symmetric without noise
    assert b0.v[0] < 0.4 * b0.v[3] and b0.a[0] > 0.8  # pinned at the ends
    assert (bridge_coefficients(MotionCovariance(S, 0.8 * S, 40.0**2), 8).v > b0.v).all()  # noise: ends inexact
    far = bridge_coefficients(MotionCovariance(S, 0.8 * S, 1e12), 8)  # no information: the prior
    assert np.allclose(far.v, S, rtol=1e-6) and np.abs(far.a).max() < 1e-6 and far.kappa_per_nm2 < 1e-15
    still = bridge_coefficients(MotionCovariance(S, (1 - 1e-6) * S, 0.0), 8)  # no motion: known exactly
    assert still.v.max() < 1e-3 * S
    with pytest.raises(ValueError, match="n_nodes"):
        bridge_coefficients(MotionCovariance(S, 0.0, 0.0), 0)
    with pytest.raises(ValueError, match="msd_exponent"):
        bridge_coefficients(MotionCovariance(S, 0.0, 0.0), 6, msd_exponent=2.5)


def test_angle_nodes_follow_the_von_mises_fisher_law():
    kappa = np.array([0.0, 0.5, 3.0, 50.0])
    c, w = _angle_nodes(kappa, 32)
    mean = np.array([0.0] + [1 / math.tanh(k) - 1 / k for k in kappa[1:]])  # E[cos θ] = coth κ − 1/κ
    assert np.allclose(c @ w, mean, atol=1e-4) and (np.diff(c, axis=1) > 0).all() and np.abs(c).max() <= 1


def test_pair_ends_validate():
    with pytest.raises(ValueError, match="equal"):
        PairEnds(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="neither"):
        PairEnds(np.ones(3), np.ones(3), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\[P, 3\]"):
        PairEnds(np.ones(3), np.ones(3), np.ones((3, 2)), np.ones((3, 2)))
    e = PairEnds(np.ones(3), np.ones(3), np.full((3, 3), np.nan), np.full((3, 3), np.nan))
    assert len(e) == 3 and not e.has_vectors and len(e.subset([0, 2])) == 2


@pytest.fixture(scope="module")
def ar1():
    a = ar1_arrays(n_traces=80, seed=1)
    return a, all_pairs(a), motion_covariance(a, 30.0), motion_covariance(a, 30.0, use_vectors=False)


def test_bridge_terms_shapes_weights_and_one_missing_end(ar1):
    a, ends, cv, cd = ar1
    tv, td = bridge_terms(ends, cv), bridge_terms(ends, cd, use_vectors=False)
    assert isinstance(tv, BridgeTerms) and tv._fields == ("mu_nm", "sigma_index", "weight", "sigma_nm")
    assert tv.mu_nm.shape == tv.weight.shape == (len(ends), 6) and td.mu_nm.shape == (len(ends), 48)
    assert np.allclose(tv.weight.sum(1), 1) and np.allclose(td.weight.sum(1), 1) and len(tv.sigma_nm) == 18
    # one end missing: the angle drops out, vectors and distances agree; σ is the one-sided bridge's
    one = PairEnds(ends.d0_nm[:30], np.full(30, np.nan), ends.v0_nm[:30], np.full((30, 3), np.nan))
    v1, d1 = bridge_terms(one, cv), bridge_terms(one, cv, use_vectors=False)
    assert np.allclose(v1.mu_nm, d1.mu_nm[:, ::8]) and (v1.sigma_index // 6 == 1).all()
    # no observed end: weight stays 1 per pair but μ = 0 (callers drop such pairs)
    none = bridge_terms(PairEnds(np.full(2, np.nan), np.full(2, np.nan)), cv, use_vectors=False)
    assert np.all(none.mu_nm == 0)


def test_distance_path_matches_vector_path_on_average(ar1):
    "The angle integrated over its conditional law gives the vector path's mean ḡ over pairs (within 3 %)."
    a, ends, cv, cd = ar1
    r = [80.0, 150.0, 300.0]
    gv, gd = pair_gates(bridge_terms(ends, cv), r), pair_gates(bridge_terms(ends, cv, use_vectors=False), r)
    assert np.allclose(gv.mean(0), gd.mean(0), rtol=0.03)
    # ... but not pair by pair: the distances know less
    assert np.abs(gv - gd).max() > 0.05


def test_endpoint_terms_is_the_gate_posterior():
    ends = PairEnds(np.array([100.0, np.nan, 50.0]), np.array([120.0, 80.0, np.nan]))
    t = endpoint_terms(ends, 40.0, 200.0, 30.0)
    m, sd = gate_posterior(200.0, 40.0, 30.0)
    assert np.allclose(t.mu_nm, m * np.nan_to_num(np.stack([ends.d0_nm, ends.d1_nm], 1)))
    assert np.allclose(t.weight, [[0.5, 0.5], [0, 1], [1, 0]]) and t.sigma_nm == pytest.approx([sd])


def test_pair_and_summed_gates(ar1):
    a, ends, cv, _ = ar1
    t = bridge_terms(ends, cv)
    r = np.array([60.0, 150.0, 400.0, 1e5])
    g = pair_gates(t, r)
    assert g.shape == (len(ends), 4) and (g >= 0).all() and (np.diff(g, axis=1) >= -1e-12).all()
    assert np.allclose(g[:, -1], 1)
    rows = np.repeat(np.arange(a.n_traces), a.n_frames - 1)
    exact = np.zeros((a.n_traces, 4))
    np.add.at(exact, rows, g)
    assert np.allclose(summed_gates(t, rows, a.n_traces, r), exact, rtol=1e-3, atol=1e-8)  # binning on 2 nm
    assert summed_gates(t.subset(slice(0, 0)), rows[:0], 5, r).shape == (5, 4)
