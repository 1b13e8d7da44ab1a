"""Tests of xai_hsg.neural_radius: the contact-gated hazard network on the bridge of xai_hsg.contact (ḡ against the
bridge pair by pair, gradient, gaps, causality, distance only through the gate, the likelihood by hand), agreement
with RadiusMLE with and without vectors, recovery of r_c, regularisation sensitivity against the seeds' design, the
ensemble interval, the fit result's JSON form and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from xai_hsg.contact import PairEnds, bridge_terms, pair_gates, rice3_cdf
from xai_hsg.neural_radius import (
    ContactHazardNet,
    HazardConfig,
    HazardData,
    NeuralRadiusFit,
    SeedsRadiusConfig,
    UNetRadiusConfig,
    fit_hazard_radius,
    fit_seeds_radius,
    fit_unet_radius,
    hazard_loss,
    interval_terms,
    radius_interval,
    regularisation_sensitivity,
    transition_masks,
)
from xai_hsg.radius import RadiusMLE, transition_data
from xai_hsg.simulate import SimParams, simulate
from xai_hsg.tracks import TraceArrays

torch.set_num_threads(1)


def sim_arrays(n, n_frames, r_c, sigma_loc, seed) -> TraceArrays:
    p = SimParams(n_frames=n_frames, r_c_nm=r_c, sigma_loc_nm=sigma_loc, k_off_per_s=1 / 300)  # ON periods of 5 min
    return simulate(n, p, seed=seed).to_arrays()


@pytest.fixture(scope="module")
def fast250():
    return sim_arrays(150, 241, 250.0, 0.0, seed=11)


@pytest.fixture(scope="module")
def small():
    return sim_arrays(60, 121, 200.0, 20.0, seed=5)


@pytest.fixture(scope="module")
def gappy():
    "20 short traces with a gap of 3 frames (NaN), one masked frame, and random states (plenty of events)."
    a = sim_arrays(20, 41, 150.0, 20.0, seed=2)
    d = a.distance_nm.copy()
    d[0, 10:13] = np.nan
    mask = np.isfinite(d)
    mask[1, 5] = False
    state = (np.random.default_rng(0).random(d.shape) < 0.3).astype(float)
    return a.replace(distance_nm=d, mask=mask, state=state)


def data_of(a: TraceArrays, terms) -> HazardData:
    s = torch.as_tensor(a.state, dtype=torch.float32)
    return HazardData(terms, s, torch.ones_like(s, dtype=torch.bool))


@pytest.mark.parametrize("vec", [True, False])
def test_gate_is_the_bridge_of_contact(gappy, vec):
    "ḡ of every pair equals xai_hsg.contact's (no binning there); one observed end is bridged, none gives 0."
    terms = interval_terms(gappy, 20.0, use_vectors=vec)
    net = ContactHazardNet(dt_s=30.0, r_c_nm=150.0)
    with torch.no_grad():
        g = net.pair_gate(terms).numpy()
    ok = terms.obs.numpy()
    d = np.where(ok, gappy.distance_nm, np.nan)
    v = np.where(ok[..., None], gappy.vector_nm, np.nan)
    vectors = (v[:, :-1].reshape(-1, 3), v[:, 1:].reshape(-1, 3)) if vec else ()
    ends = PairEnds(d[:, :-1].ravel(), d[:, 1:].ravel(), *vectors)
    exact = pair_gates(bridge_terms(ends, terms.cov, use_vectors=vec), 150.0)[:, 0].reshape(g.shape)
    seen = terms.pair_observed.numpy()
    assert (
        terms.use_vectors == vec
        and terms.cols.shape[-1] == 2 * (6 if vec else 48)
        and terms.n_nodes == (6 if vec else 48)
    )
    # linear binning of μ on a 2-nm grid with σ ≳ 20 nm: error ≈ (h/σ)²/8 ≈ 10⁻³ of F₃'s range at most; float32 table
    assert np.abs(g - exact)[seen].max() < 1e-3
    assert not seen[0, 10:12].any() and (g[~seen] == 0).all() and not terms.obs[1, 5] and seen[1, 4:6].all()
    assert seen[0, 9] and seen[0, 12] and g[0, 9] > 0 and g[0, 12] > 0


def test_gradient_in_log_radius_is_autograd_s(gappy):
    "The gradient carried through the gather equals plain autograd through F₃ and the gather."
    terms = interval_terms(gappy, 20.0)
    net = ContactHazardNet(dt_s=30.0, r_c_nm=140.0)
    w = torch.rand(terms.pair_observed.shape, generator=torch.Generator().manual_seed(0))
    (w * net.pair_gate(terms)).sum().backward()
    r = torch.tensor(math.log(140.0), requires_grad=True)
    mu, sig = torch.meshgrid(terms.mu_grid_nm, terms.sigma_nm, indexing="xy")
    table = rice3_cdf(r.exp(), mu.reshape(-1), sig.reshape(-1))
    (w * (table[terms.cols] * terms.vals).sum(-1)).sum().backward()
    assert abs(float(net.log_r_c.grad)) > 1e-3
    assert float(net.log_r_c.grad) == pytest.approx(float(r.grad), rel=1e-4)  # float32 sums in another order


def test_likelihood_by_hand_is_radius_mle_s(gappy):
    "With c_θ = 0: the loss is the likelihood of xai_hsg.radius (transition_data, bridge_terms, pair_gates) per pair."
    state = gappy.state.copy()
    state[2, 7] = np.nan  # an unknown state
    a = gappy.replace(state=state)
    terms = interval_terms(a, 20.0)
    k_on, k_off, r_c = 0.05, 0.01, 120.0
    net = ContactHazardNet(dt_s=30.0, r_c_nm=r_c, k_on_per_s=k_on, k_off_per_s=k_off)
    loss, _ = hazard_loss(net, HazardData.from_arrays(terms, a))
    data = transition_data(a)
    lam = k_on * 30.0 * pair_gates(bridge_terms(data.ends, terms.cov), r_c)[:, 0]
    ll = np.where(data.y > 0.5, np.log(-np.expm1(-lam)), -lam).sum()
    p = -math.expm1(-k_off * 30.0)
    on, sw = data.on_frames.sum(), data.on_to_off.sum()
    ll += sw * math.log(p) + (on - sw) * math.log1p(-p)
    assert float(loss.detach()) == pytest.approx(-ll / (len(data) + on), rel=1e-3)  # binning ≤ 10⁻³, float32


def test_gaps_are_masked_not_read(gappy):
    "What a masked or NaN frame holds is never read; a pair with no observed end is not at risk."
    big = gappy.replace(distance_nm=np.where(gappy.mask, gappy.distance_nm, 1e7))
    net = ContactHazardNet(dt_s=30.0, k_on_per_s=0.05)
    for vec in (True, False):
        l1, o = hazard_loss(net, data_of(gappy, interval_terms(gappy, 20.0, use_vectors=vec)))
        l2, _ = hazard_loss(net, data_of(big, interval_terms(big, 20.0, use_vectors=vec)))
        assert torch.isfinite(l1) and float(l1.detach()) == pytest.approx(float(l2.detach()), rel=1e-6)
        off, _, _ = transition_masks(
            torch.as_tensor(gappy.state), torch.ones(gappy.state.shape, dtype=torch.bool), o["pair_observed"]
        )
        assert not off[0, 10:12].any() and o["gate_pair"][0, 10:12].eq(0).all()


def test_distance_acts_only_through_the_gate_and_context_is_causal(gappy):
    torch.manual_seed(0)
    B, T = gappy.distance_nm.shape
    ms2 = torch.randn(B, T, requires_grad=True)
    net = ContactHazardNet(dt_s=30.0, past_ms2=True)
    torch.nn.init.normal_(net.out.weight, std=0.5)  # non-zero c_θ (it starts at 0 in a fit)
    far = gappy.replace(distance_nm=gappy.distance_nm * 1.5, vector_nm=gappy.vector_nm * 1.5)
    o1, o2 = net(interval_terms(gappy, 20.0), ms2), net(interval_terms(far, 20.0), ms2)
    assert torch.equal(o1["context"], o2["context"]) and not torch.allclose(o1["hazard"], o2["hazard"])
    t = 25
    o1["context"][:, t - 1].sum().backward()  # interval (t−1, t]
    assert ms2.grad[:, t:].abs().max() == 0 and ms2.grad[:, :t].abs().max() > 0
    fresh = ContactHazardNet(dt_s=30.0)
    assert fresh(interval_terms(gappy, 20.0))["context"].abs().max() == 0  # zero-initialised last layer


# Same likelihood, same ḡ (binning error ≤ 10⁻³), and the network starts at RadiusMLE's estimate: the radii differ
# only by where Adam (80 steps) stops, < 0.2 % on 200 traces in the notebook; 1 % leaves room for the flatter
# likelihood of 60 short traces. Context at its default (mask only, complete traces): no freedom to move r_c either.
@pytest.mark.slow
@pytest.mark.parametrize("vec", [True, False])
def test_agrees_with_radius_mle(small, vec):
    mle = RadiusMLE(sigma_loc_nm=20.0, n_boot=0, use_vectors=vec).fit(small)
    for ctx in (False, True):
        fit = fit_hazard_radius(small, HazardConfig(sigma_loc_nm=20.0, use_vectors=vec, context=ctx))
        assert fit.use_vectors == vec
        assert abs(fit.r_c_nm / mle.r_c_nm_ - 1) < 0.01, (vec, ctx, fit.r_c_nm, mle.r_c_nm_)


# The bridge must recover the truth within 15 % (≈ 7 % bootstrap spread at ≈ 250 activations; the bias of the
# bridge is a few % for r_c ≥ 150 nm, notebook 03); k_off within 30 % (≈ 250 ON→OFF switches: ≈ 6 % standard error).
@pytest.mark.slow
def test_bridged_gate_recovers_radius(fast250):
    fit = fit_hazard_radius(fast250, HazardConfig(sigma_loc_nm=0.0, seed=0, epochs=80))
    assert fit.use_vectors and abs(fit.r_c_nm / 250.0 - 1) < 0.15, fit.r_c_nm
    assert abs(fit.k_off_per_s * 300 - 1) < 0.3 and fit.n_events > 100


@pytest.mark.slow
def test_wrong_state_breaks_recovery(fast250):
    "Can fail: with another trace's state the distances carry no information about the switches."
    a = fast250.replace(state=np.roll(fast250.state, 1, axis=0))
    fit = fit_hazard_radius(a, HazardConfig(sigma_loc_nm=0.0, epochs=40, use_vectors=False))
    assert abs(fit.r_c_nm / 250.0 - 1) > 0.3


# Seeds: its sparsity term rewards a closed gate and d_c slides with it (notebook: > 30 % change over the decade).
# Hazard: the L2 weight only acts on c_θ, which cannot reshape the gate; 2 % allows for the optimiser's stopping point.
@pytest.mark.slow
def test_seeds_radius_moves_with_sparsity_hazard_radius_does_not(small):
    seeds = regularisation_sensitivity(small, fit_seeds_radius, SeedsRadiusConfig(epochs=6))
    hazard = regularisation_sensitivity(small, fit_hazard_radius, HazardConfig(sigma_loc_nm=20.0, epochs=40))
    assert seeds.max_rel_change > 0.1, seeds.table
    assert hazard.max_rel_change < 0.02, hazard.table
    assert list(hazard.table.reg_weight) == pytest.approx([1e-2 / math.sqrt(10), 1e-2, 1e-2 * math.sqrt(10)])
    assert hazard.decade_covered == pytest.approx(10.0)
    assert set(hazard.table.regulariser) == {"context_l2_weight"} and set(seeds.table.regulariser) == {"sparsity"}


@pytest.mark.slow
def test_interval_is_ordered_and_deterministic(small):
    cfg = HazardConfig(sigma_loc_nm=20.0, epochs=30, seed=1, use_vectors=False)
    est, lo, hi = radius_interval(small, fit_hazard_radius, cfg, n_members=2)
    assert 0 < lo < est < hi and math.isfinite(est)  # bootstrap-t on the log scale: symmetric about log(est)
    again = radius_interval(small, fit_hazard_radius, cfg, n_members=2, estimate_nm=est)
    assert again == (est, lo, hi)  # same seeds, same members


def test_fits_return_a_json_ready_result(small):
    "Each fit names its regulariser; to_dict() is JSON (no model), with the config and the history."
    sub = small.subset(np.arange(20))
    fits = [
        fit_hazard_radius(sub, HazardConfig(sigma_loc_nm=20.0, epochs=3)),
        fit_unet_radius(sub, UNetRadiusConfig(sigma_loc_nm=20.0, epochs=1)),
        fit_seeds_radius(sub, SeedsRadiusConfig(epochs=1)),
    ]
    for fit, reg in zip(fits, ("context_l2_weight", "weight_decay", "sparsity")):
        assert isinstance(fit, NeuralRadiusFit) and math.isfinite(fit.r_c_nm)
        d = json.loads(json.dumps(fit.to_dict()))
        assert "model" not in d and d["config"]["regulariser"] == reg and d["reg_weight"] == fit.reg_weight
        assert d["method"] == fit.config.method and d["r_c_nm"] == fit.r_c_nm
    assert len(fits[0].history["r_c_nm"]) == 3 and fits[0].n_events > 0 and fits[1].n_events is None


def test_bad_input(small):
    with pytest.raises(ValueError, match="context_l2_weight"):
        HazardConfig(context_l2_weight=-1)
    with pytest.raises(ValueError, match="weight_decay"):
        UNetRadiusConfig(weight_decay=-1)
    with pytest.raises(ValueError, match="sparsity"):
        SeedsRadiusConfig(sparsity=-1)
    with pytest.raises(ValueError, match="epochs"):
        HazardConfig(epochs=0)
    with pytest.raises(ValueError, match="sigma_loc_nm"):
        HazardConfig(sigma_loc_nm=-1)
    no_state = small.replace(state=None)
    for fit in (fit_hazard_radius, fit_unet_radius, fit_seeds_radius):
        with pytest.raises(ValueError, match="state"):
            fit(no_state)
    with pytest.raises(ValueError, match="state"):
        small.replace(state=small.state[:, :-1])  # the one validator: TraceArrays
    with pytest.raises(ValueError, match="state has no finite"):
        fit_seeds_radius(small.replace(state=np.full_like(small.state, np.nan)))
    with pytest.raises(ValueError, match="dt_s"):
        small.replace(dt_s=0.0)
    with pytest.raises(ValueError, match="ms2"):
        fit_hazard_radius(small.replace(ms2=None), HazardConfig(past_ms2=True))
    with pytest.raises(ValueError, match="vector_nm"):
        fit_hazard_radius(small.replace(vector_nm=None), HazardConfig(use_vectors=True))
    with pytest.raises(ValueError, match="vector_nm"):
        small.replace(vector_nm=small.vector_nm[:, :-1])
    with pytest.raises(ValueError, match="no observed"):
        interval_terms(small.replace(mask=np.zeros_like(small.mask)), 20.0)
    with pytest.raises(ValueError, match="h_nm"):
        interval_terms(small, 20.0, h_nm=0.0)
    with pytest.raises(ValueError, match="sigma_loc_nm"):
        interval_terms(small, -1.0)
    with pytest.raises(ValueError, match="n_members"):
        radius_interval(small, fit_hazard_radius, HazardConfig(), n_members=1)
    with pytest.raises(ValueError, match="weights"):
        regularisation_sensitivity(small, fit_hazard_radius, HazardConfig(), weights=[1.0])
    with pytest.raises(ValueError, match="dt_s"):
        ContactHazardNet(dt_s=0.0)
    with pytest.raises(ValueError, match="r_c_nm"):
        ContactHazardNet(dt_s=30.0, r_c_nm=-1.0)
    terms = interval_terms(small, 20.0)
    with pytest.raises(ValueError, match="past_ms2"):
        ContactHazardNet(dt_s=30.0, past_ms2=True)(terms)


def test_smoothed_ends_are_the_kalman_smoother_of_an_ar1():
    """On an AR(1) vector plus noise the smoothed ends' error is the smoother's own variance, below the noise and below
    the noise; they agree with the exact Gaussian posterior mean of a short
    trace; without noise the ends are the observations."""
    from xai_hsg.contact import MotionCovariance
    from xai_hsg.neural_radius import smoothed_ends

    rng = np.random.default_rng(1)
    S, phi, sigma, B, T = 30000.0, 0.7, 50.0, 300, 80
    x = np.zeros((B, T, 3))
    x[:, 0] = rng.normal(0, math.sqrt(S), (B, 3))
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + rng.normal(0, math.sqrt(S * (1 - phi**2)), (B, 3))
    e = 2 * sigma**2
    y = x + rng.normal(0, math.sqrt(e), x.shape)
    cov = MotionCovariance(S, phi * S, e)
    ends = smoothed_ends(y, np.ones((B, T), bool), cov)
    mse = float(((ends.mean_nm - x)[:, 20:60] ** 2).mean())
    assert abs(mse / ends.var_nm2 - 1) < 0.08 and ends.var_nm2 < 0.8 * e
    # the posterior mean of one 6-frame trace by the joint Gaussian: K (K + eI)⁻¹ y per axis
    K = S * phi ** np.abs(np.subtract.outer(np.arange(6), np.arange(6)))
    short = smoothed_ends(y[:1, :6], np.ones((1, 6), bool), cov).mean_nm[0]
    assert np.allclose(short, K @ np.linalg.solve(K + e * np.eye(6), y[0, :6]), atol=1e-6)
    exact = smoothed_ends(x[:2], np.ones((2, T), bool), MotionCovariance(S, phi * S, 0.0))
    assert np.array_equal(exact.mean_nm, x[:2]) and exact.var_nm2 == 0.0
    with pytest.raises(ValueError, match="vector_nm"):
        smoothed_ends(y[..., :2], np.ones((B, T), bool), cov)


def test_interval_terms_anchor(small):
    "Smoothed anchoring moves the gates under noise, falls back to the observed ends without vectors; bad names fail."
    net = ContactHazardNet(dt_s=small.dt_s)
    obs, smo = (interval_terms(small, 20.0, anchor=a) for a in ("observed", "smoothed"))
    assert (obs.anchor, smo.anchor) == ("observed", "smoothed")
    assert not torch.allclose(net.pair_gate(obs), net.pair_gate(smo))
    assert interval_terms(small, 20.0, use_vectors=False, anchor="smoothed").anchor == "observed"
    with pytest.raises(ValueError, match="anchor"):
        interval_terms(small, 20.0, anchor="kalman")
    # σ_loc so large that every frame-to-frame change reads as noise (c₁ clipped to S): no singular bridge
    huge = interval_terms(small, 1e4, anchor="smoothed")
    assert huge.anchor == "smoothed" and torch.isfinite(net.pair_gate(huge)).all()
