"""Tests of xai_hsg.neural_radius: the contact-gated hazard network (gradient, gaps, causality, distance only through
the gate), recovery of r_c on a simulation, regularisation sensitivity against the seeds' design, the ensemble
interval and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xai_hsg.neural_radius import (ContactHazardNet, interval_bridge, fit_neural_radius, hazard_loss,
                                   radius_interval, regularisation_sensitivity, transition_masks)
from xai_hsg.radius import MOTION_FRACTION
from xai_hsg.simulate import SimParams, simulate

torch.set_num_threads(1)


def sim_arrays(n, n_frames, r_c, sigma_loc, seed):
    p = SimParams(n_frames=n_frames, r_c_nm=r_c, sigma_loc_nm=sigma_loc, k_off_per_s=1 / 300)  # ON periods of 5 min
    r = simulate(n, p, seed=seed); d = r.distance_nm
    return {"distance_nm": d, "vector_nm": r.xyz_nm, "mask": np.isfinite(d), "state": r.state.astype(float),
            "ms2": r.ms2, "dt_s": p.dt_s}


@pytest.fixture(scope="module")
def fast250():
    return sim_arrays(150, 241, 250.0, 0.0, seed=11)


@pytest.fixture(scope="module")
def small():
    return sim_arrays(60, 121, 200.0, 20.0, seed=5)


def toy_batch(seed=0, B=3, T=40):
    g = torch.Generator().manual_seed(seed)
    d = 80 + 300 * torch.rand(B, T, generator=g)
    state = (torch.rand(B, T, generator=g) < 0.3).float()
    return {"distance_nm": d, "mask": torch.ones(B, T, dtype=torch.bool), "state": state,
            "state_mask": torch.ones(B, T, dtype=torch.bool)}


def test_gradient_wrt_log_radius_is_finite_and_nonzero():
    torch.manual_seed(0)
    net = ContactHazardNet(dt_s=30.0, sigma_loc_nm=20.0, sigma_r_nm=200.0, k_on_per_s=0.05)
    loss, out = hazard_loss(net, toy_batch(), reg_weight=1e-2)
    loss.backward()
    g = float(net.gate.log_r_c.grad)
    assert math.isfinite(float(loss.detach())) and math.isfinite(g) and abs(g) > 1e-6
    assert out["n_events"] > 0


def test_gaps_are_masked_not_read():
    "NaN frames give gate 0; what a masked frame holds is never read; a pair with no observed end is not at risk."
    torch.manual_seed(0)
    net = ContactHazardNet(dt_s=30.0, sigma_loc_nm=20.0, sigma_r_nm=200.0, k_on_per_s=0.05)
    b = toy_batch(); b["state"][0, 9:14] = 0.0
    gap = torch.zeros_like(b["mask"]); gap[0, 10:13] = True; gap[1, 5] = True
    b_nan = dict(b, distance_nm=b["distance_nm"].masked_fill(gap, float("nan")), mask=~gap)
    b_big = dict(b, distance_nm=b["distance_nm"].masked_fill(gap, 1e7), mask=~gap)
    l_nan, o = hazard_loss(net, b_nan); l_big, _ = hazard_loss(net, b_big)
    assert torch.isfinite(l_nan) and float(l_nan.detach()) == pytest.approx(float(l_big.detach()), rel=1e-6)
    l_nan.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert o["gate"][0, 10:13].eq(0).all()
    off, _, _ = transition_masks(b["state"], b["state_mask"], o["pair_observed"])
    assert not off[0, 10:12].any() and off[0, 9] and off[0, 12]   # pairs (10,11), (11,12) have no observed end
    assert o["gate_pair"][0, 9] == o["gate"][0, 9]                  # one observed end: its gate, not half of it
    u = torch.randn(*b["distance_nm"].shape, 3); vec = u / u.norm(dim=-1, keepdim=True) * b["distance_nm"][..., None]
    net.zero_grad(); lv, ov = hazard_loss(net, dict(b_nan, vector_nm=vec.masked_fill(gap[..., None], float("nan"))))
    lv.backward()
    assert torch.isfinite(lv) and torch.isfinite(net.gate.log_r_c.grad) and ov["gate_pair"][0, 10:12].eq(0).all()
    assert ov["gate_pair"][0, 9] > 0 and ov["gate_pair"][0, 12] > 0             # bridged from the one observed end


def test_distance_acts_only_through_the_gate_and_context_is_causal():
    torch.manual_seed(0)
    b = toy_batch(T=50)
    ms2 = torch.randn(3, 50, requires_grad=True)
    net = ContactHazardNet(dt_s=30.0, sigma_loc_nm=20.0, sigma_r_nm=200.0, past_ms2=True)
    torch.nn.init.normal_(net.out.weight, std=0.5)                  # non-zero c_θ (it starts at 0 in a fit)
    o1 = net(b["distance_nm"], b["mask"], ms2); o2 = net(b["distance_nm"] * 0.5, b["mask"], ms2)
    assert torch.equal(o1["context"], o2["context"]) and not torch.allclose(o1["hazard"], o2["hazard"])
    t = 25; o1["context"][:, t - 1].sum().backward()               # interval (t−1, t]
    assert ms2.grad[:, t:].abs().max() == 0 and ms2.grad[:, :t].abs().max() > 0
    fresh = ContactHazardNet(dt_s=30.0)
    assert fresh(b["distance_nm"], b["mask"])["context"].abs().max() == 0   # zero-initialised last layer


def test_interval_bridge_match_monte_carlo():
    "Conditional law of r(s) given both noisy ends, against a regression on joint Gaussian draws."
    vr, V, n2 = 200.0**2, 120.0**2, 2 * 20.0**2 + 5.0**2
    a0, a1, sd = interval_bridge(200.0, V, n2, n_points=4)["both"]
    assert np.allclose(a0, a1[::-1]) and np.allclose(sd, sd[::-1])          # time reversal
    s = 0.125; C = lambda f: vr - 0.5 * V * f**0.5                              # first point of 4
    cov = np.array([[vr, C(s), C(1 - s)], [C(s), vr + n2, C(1.0)], [C(1 - s), C(1.0), vr + n2]])
    x = np.random.default_rng(0).multivariate_normal(np.zeros(3), cov, size=100_000)
    coef = np.linalg.lstsq(x[:, 1:], x[:, 0], rcond=None)[0]
    # 100k draws: standard error of the coefficients ≈ 0.002, of the residual sd ≈ 0.2 %
    assert np.allclose(coef, [a0[0], a1[0]], atol=0.01)
    assert abs(np.std(x[:, 0] - x[:, 1:] @ coef) / sd[0] - 1) < 0.01
    f0, f1, fsd = interval_bridge(200.0, V, n2, n_points=4)["first"]
    assert np.all(f1 == 0) and np.all(fsd > sd)                                 # one end observed: wider


def test_end_gate_likelihood_by_hand():
    "With c_θ = 0 and no vectors: λ = k_on·Δt·mean of ContactGate over the observed ends; NLL over OFF and ON pairs."
    from xai_hsg.models import ContactGate
    net = ContactHazardNet(dt_s=30.0, sigma_loc_nm=20.0, sigma_r_nm=200.0, motion_var_nm2=100.0**2, k_on_per_s=0.05,
                           k_off_per_s=0.01, r_c_nm=120.0)
    b = toy_batch(seed=3); b["distance_nm"][1, 7] = float("nan"); b["mask"] = torch.isfinite(b["distance_nm"])
    loss, _ = hazard_loss(net, b)
    gate = ContactGate(120.0, 20.0, 200.0, math.sqrt(5.0**2 + MOTION_FRACTION * 100.0**2))
    with torch.no_grad(): g = gate(b["distance_nm"]).numpy()
    d, st = b["distance_nm"].numpy(), b["state"].numpy(); nll, n = 0.0, 0
    for i in range(d.shape[0]):
        for t in range(1, d.shape[1]):
            ends = [g[i, k] for k in (t - 1, t) if np.isfinite(d[i, k])]
            if st[i, t - 1] < 0.5:
                lam = 0.05 * 30.0 * np.mean(ends); nll += -np.log1p(-np.exp(-lam)) if st[i, t] > 0.5 else lam
            else:
                p = 1 - np.exp(-0.01 * 30.0); nll += -np.log(p) if st[i, t] < 0.5 else -np.log1p(-p)
            n += 1
    assert float(loss.detach()) == pytest.approx(nll / n, rel=1e-4)   # float32 network vs float64 loop


# The bridged gate must recover the truth within 15 % (≈ 7 % bootstrap spread at ≈ 250 activations; its bias is
# ≤ 6 % for r_c ≥ 150 nm in a 12-cell sweep); k_off within 30 % (≈ 250 ON→OFF switches: ≈ 6 % standard error).
def test_bridged_gate_recovers_radius(fast250):
    fit = fit_neural_radius(fast250, "hazard", sigma_loc_nm=0.0, seed=0, epochs=80)
    assert fit["bridge"] and abs(fit["r_c_nm"] / 250.0 - 1) < 0.15, fit["r_c_nm"]
    assert abs(fit["k_off_per_s"] * 300 - 1) < 0.3 and fit["n_events"] > 100


def test_wrong_state_breaks_recovery(fast250):
    "Can fail: with another trace's state the distances carry no information about the switches."
    a = fast250
    fit = fit_neural_radius(a, "hazard", sigma_loc_nm=0.0, state=np.roll(a["state"], 1, axis=0), epochs=40, bridge=False)
    assert abs(fit["r_c_nm"] / 250.0 - 1) > 0.3


# Seeds: its sparsity term rewards a closed gate and d_c slides with it (notebook: > 30 % change over the decade).
# Hazard: the L2 weight only acts on c_θ, which cannot reshape the gate; 2 % allows for the optimiser's stopping point.
def test_seeds_radius_moves_with_sparsity_hazard_radius_does_not(small):
    seeds = regularisation_sensitivity(small, "seeds", sigma_loc_nm=20.0, epochs=6)
    hazard = regularisation_sensitivity(small, "hazard", sigma_loc_nm=20.0, epochs=40)
    assert seeds["max_rel_change"] > 0.1, seeds["table"]
    assert hazard["max_rel_change"] < 0.02, hazard["table"]
    assert list(hazard["table"].reg_weight) == pytest.approx([1e-2 / math.sqrt(10), 1e-2, 1e-2 * math.sqrt(10)])
    assert hazard["decade_covered"] == pytest.approx(10.0)


def test_interval_is_ordered_and_deterministic(small):
    kw = dict(n_members=2, sigma_loc_nm=20.0, epochs=30, seed=1, bridge=False)
    est, lo, hi = radius_interval(small, "hazard", **kw)
    assert 0 < lo <= hi and math.isfinite(est)
    assert radius_interval(small, "hazard", estimate_nm=est, **kw) == (est, lo, hi)   # same seeds, same members


def test_bad_input(small):
    with pytest.raises(ValueError, match="method"): fit_neural_radius(small, "lstm")
    with pytest.raises(ValueError, match="reg_weight"): fit_neural_radius(small, reg_weight=-1)
    with pytest.raises(ValueError, match="epochs"): fit_neural_radius(small, epochs=0)
    with pytest.raises(ValueError, match="sigma_loc_nm"): fit_neural_radius(small, sigma_loc_nm=-1)
    with pytest.raises(ValueError, match="state"): fit_neural_radius({k: v for k, v in small.items() if k != "state"})
    with pytest.raises(ValueError, match="shapes"): fit_neural_radius(small, state=small["state"][:, :-1])
    with pytest.raises(ValueError, match="dt_s"): fit_neural_radius({k: v for k, v in small.items() if k != "dt_s"})
    with pytest.raises(ValueError, match="ms2"): fit_neural_radius({k: v for k, v in small.items() if k != "ms2"}, past_ms2=True)
    with pytest.raises(ValueError, match="vector_nm"): fit_neural_radius({k: v for k, v in small.items() if k != "vector_nm"}, bridge=True)
    with pytest.raises(ValueError, match="sigma_r_nm"): interval_bridge(0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="n_members"): radius_interval(small, n_members=1)
    with pytest.raises(ValueError, match="method"): regularisation_sensitivity(small, "lstm")
    with pytest.raises(ValueError, match="dt_s"): ContactHazardNet(dt_s=0.0)
    with pytest.raises(ValueError, match="motion_var_nm2"): ContactHazardNet(dt_s=30.0, motion_var_nm2=-1.0)
    b = toy_batch()
    with pytest.raises(ValueError, match="past_ms2"): ContactHazardNet(dt_s=30.0, past_ms2=True)(b["distance_nm"], b["mask"])
