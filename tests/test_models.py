"""Tests of xai_hsg.models: the noise-aware contact gate, backbones, leakage, masks, the seeds' baseline, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xai_hsg.contact import estimate_sigma_r, maxwell_cdf, rice3_cdf
from xai_hsg.models import (
    CausalHazard,
    ContactGate,
    EPModel,
    FiLM,
    PastSummary,
    ResNet1d,
    SeedsGateModel,
    TrainConfig,
    TransformerEncoder1d,
    UNet1d,
    eval_loss,
    evaluate,
    far_distance_nm,
    integrated_gradients,
    masked_bce,
    masked_gaussian_nll,
    off_to_on,
    predict,
    rotary,
    task_loss,
    to_tensors,
    train,
    triggered,
)
from xai_hsg.tracks import TraceArrays

torch.set_num_threads(1)
f64 = dict(dtype=torch.float64)


@pytest.mark.parametrize(
    "mu,sd,R", [(0.0, 50.0, 80.0), (1e-6, 50.0, 80.0), (120.0, 40.0, 100.0), (60.0, 80.0, 30.0), (250.0, 60.0, 200.0)]
)
def test_rice_cdf_matches_monte_carlo(mu, sd, R):
    g = torch.Generator().manual_seed(1)
    r = torch.randn(400_000, 3, generator=g, **f64) * sd
    r[:, 0] += mu
    mc = (r.norm(dim=1) < R).double().mean().item()
    cf = rice3_cdf(torch.tensor(R, **f64), torch.tensor(mu, **f64), torch.tensor(sd, **f64)).item()
    assert abs(cf - mc) < 4 * math.sqrt(mc * (1 - mc) / 400_000) + 1e-4


def test_rice_cdf_at_zero_mean_is_maxwell_and_continuous():
    R = torch.linspace(1, 400, 50, **f64)
    at0 = rice3_cdf(R, torch.tensor(0.0, **f64), torch.tensor(70.0, **f64)).numpy()
    np.testing.assert_allclose(at0, maxwell_cdf(R.numpy(), 70.0), atol=1e-10)
    near0 = rice3_cdf(R, torch.tensor(1e-3, **f64), torch.tensor(70.0, **f64)).numpy()
    np.testing.assert_allclose(near0, at0, atol=1e-6)


def test_gate_shapes_masks_and_range():
    d = torch.tensor([[50.0, float("nan"), 300.0, 120.0], [0.0, 80.0, 1000.0, 10.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    g = ContactGate(100.0, 40.0, 200.0)(d, mask)
    assert g.shape == d.shape and torch.isfinite(g).all()
    assert g[0, 1] == 0 and g[0, 3] == 0  # NaN and masked frames: gate 0
    assert ((g >= 0) & (g <= 1)).all() and g[1, 0] > 0.5 > g[1, 2]


@pytest.mark.parametrize("sigma_loc", [0.0, 40.0])
def test_gate_gradient_wrt_log_radius_finite_nonzero(sigma_loc):
    gate = ContactGate(100.0, sigma_loc, 200.0, floor_nm=5.0).double()
    d = torch.tensor([[0.0, 60.0, 100.0, 140.0, float("nan")]], **f64)
    gate(d).sum().backward()
    gr = gate.log_r_c.grad
    assert torch.isfinite(gr) and gr > 0
    for di in (0.0, 60.0, 140.0, 300.0 if sigma_loc else 115.0):  # every single frame gives gradient
        gate.log_r_c.grad = None
        gate(torch.tensor([[di]], **f64)).sum().backward()
        assert torch.isfinite(gate.log_r_c.grad) and gate.log_r_c.grad > 0, di


def test_gate_needs_a_floor_without_noise():
    with pytest.raises(ValueError):
        ContactGate(100.0, sigma_loc_nm=0.0, floor_nm=0.0)
    with pytest.raises(ValueError):
        ContactGate(-1.0)


def test_gate_monotone_in_distance_and_radius():
    d = torch.linspace(0, 800, 200, **f64)[None]
    vals = []
    for r in (50.0, 100.0, 200.0):
        g = ContactGate(r, 40.0, 210.0).double()(d)[0]
        assert (g.diff() <= 1e-12).all()
        vals.append(g)
    assert (vals[1] >= vals[0] - 1e-12).all() and (vals[2] >= vals[1] - 1e-12).all()
    assert (vals[2] - vals[0]).max() > 0.5


def test_gate_accounts_for_noise():
    "Contacts are observed at inflated distances (E[d²] = r² + 6σ_loc²): the noisy gate extends beyond r_c, the noise-free one not."
    d = torch.tensor([[130.0]])
    noisy, clean = ContactGate(100.0, 40.0, 210.0)(d)[0, 0], ContactGate(100.0, 0.0, 210.0, floor_nm=1.0)(d)[0, 0]
    assert noisy > 0.1 and clean < 1e-3


def test_estimate_sigma_r_recovers_variance():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 150.0, (20000, 3)) + rng.normal(0, math.sqrt(2) * 40.0, (20000, 3))
    d = np.linalg.norm(r, axis=1)
    d[::7] = np.nan
    assert abs(estimate_sigma_r(d, 40.0) - 150.0) < 3.0


def test_causal_hazard_nonnegative_and_causal():
    f = CausalHazard(4, 32)
    assert (f.weight() >= 0).all()
    x = torch.zeros(1, 100, requires_grad=True)
    f(x)[0, :, 40].sum().backward()
    assert x.grad[0, 41:].abs().max() == 0 and x.grad[0, 9:41].min() >= 0 and x.grad[0, 40] > 0


@pytest.mark.parametrize("T", [1, 7, 33, 101])
def test_backbones_preserve_odd_lengths(T):
    x = torch.randn(2, 3, T)
    assert UNet1d(3, 8, 3)(x).shape == (2, 8, T)
    assert ResNet1d(3, 8, 2)(x).shape == (2, 8, T)
    assert TransformerEncoder1d(3, 8, n_heads=2)(x).shape == (2, 8, T)
    for backbone in ("unet", "resnet", "transformer"):
        out = EPModel("ms2", backbone=backbone, past_ms2=True, past_summary=True)(
            100 + 200 * torch.rand(2, T), torch.ones(2, T, dtype=torch.bool), torch.randn(2, T)
        )
        assert out["mean"].shape == (2, T) and out["logvar"].shape == (2, T)


@pytest.mark.parametrize(
    "kw", [dict(past_ms2=True), dict(past_summary=True), dict(past_ms2=True, past_summary=True, backbone="transformer")]
)
@pytest.mark.parametrize("t", [0, 17, 59])
def test_no_leakage_of_current_or_future_ms2(t, kw):
    torch.manual_seed(0)
    B, T = 2, 60
    model = EPModel("ms2", width=8, depth=2, **kw)
    if model.film is not None:  # FiLM starts as the identity: make it non-trivial
        for p in model.film.parameters():
            torch.nn.init.normal_(p, std=0.3)
    ms2 = torch.randn(B, T, requires_grad=True)
    out = model(100 + 200 * torch.rand(B, T), torch.ones(B, T, dtype=torch.bool), ms2)
    out["mean"][:, t].sum().backward()
    assert ms2.grad[:, t:].abs().max() == 0
    if t > 0:
        assert ms2.grad[:, :t].abs().max() > 0


def test_control_ignores_distance_and_gated_model_uses_it():
    torch.manual_seed(0)
    d1, d2 = 500 + 100 * torch.rand(2, 80), 40 * torch.rand(2, 80)
    mask = torch.ones(2, 80, dtype=torch.bool)
    ctrl, gated = EPModel("state", use_distance=False), EPModel("state")
    assert torch.equal(ctrl(d1, mask)["logit"], ctrl(d2, mask)["logit"])
    assert not torch.allclose(gated(d1, mask)["logit"], gated(d2, mask)["logit"])


def test_nan_distances_and_ms2_are_masked_no_nan_anywhere():
    torch.manual_seed(0)
    B, T = 3, 50
    d = 100 + 200 * torch.rand(B, T)
    d[0, 5:15] = float("nan")
    d[2] = float("nan")
    ms2 = torch.randn(B, T)
    ms2[1, 20:30] = float("nan")
    arrays = {
        "distance_nm": d.numpy().astype(float),
        "mask": np.isfinite(d.numpy()),
        "ms2": ms2.numpy().astype(float),
        "state": (torch.rand(B, T) > 0.5).numpy().astype(float),
    }
    data = to_tensors(TraceArrays(**arrays, dt_s=30.0))
    for model in (
        EPModel("ms2", past_ms2=True),
        EPModel("state"),
        SeedsGateModel("ms2"),
        SeedsGateModel("state"),
        EPModel("ms2", past_summary=True),
        EPModel("state", backbone="transformer", width=16, past_summary=True),
    ):
        loss, out = task_loss(model, data)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in out.values())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_masked_losses_ignore_masked_frames():
    mean, logvar = torch.zeros(1, 4), torch.zeros(1, 4)
    y = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False, False]])
    y2 = y.clone()
    y2[0, 2:] = float("nan")
    a, b = masked_gaussian_nll(mean, logvar, y, mask), masked_gaussian_nll(mean, logvar, y2, mask)
    assert torch.isclose(a, b) and torch.isclose(a, torch.tensor(0.25))
    assert torch.isclose(masked_bce(torch.zeros(1, 4), y.clamp(max=1), mask), torch.tensor(math.log(2)))


def test_seeds_gate_multiplies_inputs_is_unitless_and_penalised():
    torch.manual_seed(0)
    model = SeedsGateModel("state", d_c=0.5)
    d = torch.tensor([[10.0, 50.0, 90.0, 100.0, float("nan")]])
    mask = torch.isfinite(d)
    seen = {}
    model.backbone.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    out = model(d, mask)
    dn = torch.nan_to_num(d) / 100.0
    np.testing.assert_allclose(seen["x"][0, 0].detach(), (out["gate"] * dn)[0].detach(), atol=1e-6)
    assert seen["x"][0, 0, 2] < 1e-6 and seen["x"][0, 0, 3] < 1e-6  # far frames enter as 0, like d = 0
    assert torch.isclose(out["penalty"], 0.5 * out["gate"][mask].mean())
    assert torch.allclose(model(10 * d, mask)["logit"], out["logit"], atol=1e-5)  # per-trace max: no unit
    assert math.isclose(model.radius_nm(d, mask), 50.0, rel_tol=1e-6)


def _toy_state_data(n=24, T=96, seed=0):
    "State switches ON a few frames after a close approach and stays ON for a while."
    rng = np.random.default_rng(seed)
    d = rng.uniform(150, 600, (n, T))
    state = np.zeros((n, T))
    for i in range(n):
        for t0 in rng.choice(T - 20, 2, replace=False):
            d[i, t0] = rng.uniform(0, 60)
            state[i, t0 + 2 : t0 + 20] = 1
    d[:, 3] = np.nan
    return TraceArrays(distance_nm=d, dt_s=30.0, mask=np.isfinite(d), state=state)


def test_tiny_training_run_reduces_loss():
    data = to_tensors(_toy_state_data())
    model = EPModel("state", width=8, depth=2, filter_length=16, r_c_nm=100.0, sigma_loc_nm=10.0, sigma_r_nm=250.0)
    cfg = TrainConfig(epochs=40, lr=3e-3, batch_size=8, crop=None, verbose=False)
    p = float(data["state"][data["state_mask"]].mean())
    constant = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # BCE of predicting the ON rate everywhere
    with torch.no_grad():
        before = float(task_loss(model, data)[0])
    hist = train(model, data, cfg, data)
    assert len(hist["train_loss"]) == 40 and len(hist["radius_nm"]) == 40
    assert hist["val_loss"][-1] < 0.5 * min(before, constant)
    metrics = evaluate(model, data)
    assert set(metrics) == {"state_f1", "state_accuracy", "state_bce"} and metrics["state_f1"] > 0.8


def test_patience_keeps_the_best_validation_epoch():
    "A fit that gets worse late (here: a learning rate far too high) is returned at its best validation epoch."
    data = to_tensors(_toy_state_data())
    model = EPModel("state", width=8, depth=2, filter_length=16, r_c_nm=100.0, sigma_loc_nm=10.0, sigma_r_nm=250.0)
    cfg = TrainConfig(epochs=12, lr=0.3, batch_size=8, crop=None, grad_clip=None, patience=3, verbose=False)
    hist = train(model, data, cfg, data)
    val = hist["val_loss"]
    assert hist.best_row == int(np.argmin(val)) and hist.best_row < len(val) - 1  # it did get worse after the best
    with torch.no_grad():
        assert math.isclose(eval_loss(model, data), min(val), rel_tol=1e-5)  # the best epoch's weights came back
    assert TrainConfig().patience is None  # off unless asked for


def test_transformer_rejects_bad_head_dimension_and_backbone_name():
    with pytest.raises(ValueError):
        TransformerEncoder1d(3, width=12, n_heads=4)  # head dimension 3: rotary needs it even
    with pytest.raises(ValueError):
        EPModel("ms2", backbone="lstm")


def test_rotary_scores_depend_on_relative_position_only():
    "q_i·k_j after rotary equals q_{i+s}·k_{j+s} when q and k are the same at every position."
    torch.manual_seed(0)
    q, k = torch.randn(1, 8, **f64).expand(50, 8), torch.randn(1, 8, **f64).expand(50, 8)
    scores = rotary(q) @ rotary(k).T
    for i, j, s in [(3, 10, 20), (30, 5, 12), (0, 0, 49)]:
        assert torch.isclose(scores[i, j], scores[i + s, j + s], atol=1e-10)
    assert not torch.isclose(scores[0, 1], scores[0, 7], atol=1e-3)


def _past_summary_loop(ms2, obs, taus, truncate):
    "Direct definition: frames s < t with t − 1 − s ≤ truncate·τ, weights e^{−(t−1−s)/τ}."
    B, T = ms2.shape
    out = np.zeros((B, 2 * len(taus), T))
    for k, tau in enumerate(taus):
        for b in range(B):
            for t in range(T):
                s = np.arange(t)
                lag = t - 1 - s
                w = np.exp(-lag / tau) * (lag <= truncate * tau)
                num, den = np.sum(w * obs[b, s] * np.nan_to_num(ms2[b, s])), np.sum(w * obs[b, s])
                out[b, k, t] = num / den if den > 1e-6 else 0.0
                out[b, len(taus) + k, t] = den / np.sum(
                    np.exp(-np.arange(int(np.ceil(truncate * max(taus))) + 1) / tau)
                    * (np.arange(int(np.ceil(truncate * max(taus))) + 1) <= truncate * tau)
                )
    return out


def test_past_summary_matches_direct_definition_with_gaps():
    rng = np.random.default_rng(0)
    ms2 = rng.normal(size=(2, 40))
    ms2[0, 5:12] = np.nan
    obs = np.isfinite(ms2)
    obs[1, 30:] = False
    taus, truncate = (1.5, 4.0, 10.0), 3.0
    got = PastSummary(taus, truncate).double()(torch.tensor(ms2), torch.tensor(obs)).numpy()
    # the kernel is built in float32 (a buffer), so agreement is to float32 precision, not float64
    np.testing.assert_allclose(got, _past_summary_loop(ms2, obs, taus, truncate), rtol=1e-6, atol=1e-7)
    assert np.all(got[:, :, 0] == 0)  # nothing observed before frame 0
    with pytest.raises(ValueError):
        PastSummary((0.0, 2.0))


def test_film_starts_as_identity_and_modulates_per_channel():
    film = FiLM(4, 6)
    h, c = torch.randn(2, 6, 9), torch.randn(2, 4, 9)
    assert torch.equal(film(h, c), h)
    torch.nn.init.normal_(film.net[-1].weight)
    y = film(h, c)
    assert y.shape == h.shape and not torch.allclose(y, h)


def test_predict_and_eval_loss_are_batch_size_invariant():
    torch.manual_seed(0)
    data = to_tensors(_toy_state_data(n=7, T=50))
    model = EPModel("state", backbone="transformer", width=8, n_heads=2, filter_length=16)
    a, b = predict(model, data, batch_size=3)["logit"], predict(model, data, batch_size=100)["logit"]
    np.testing.assert_allclose(a, b, atol=1e-5)  # float32 summation order only
    with torch.no_grad():
        whole = float(task_loss(model, data)[0])
    assert math.isclose(eval_loss(model, data, batch_size=2), whole, rel_tol=1e-5)


def _ig_setup(task="state", **kw):
    torch.manual_seed(0)
    model = EPModel(
        task, width=8, depth=2, filter_length=16, r_c_nm=150.0, sigma_loc_nm=30.0, sigma_r_nm=200.0, **kw
    ).double()
    for p in model.hazard.parameters():
        torch.nn.init.normal_(p, std=1.0)  # make the distance matter
    B, T = 3, 45
    d = 50 + 300 * torch.rand(B, T, **f64)
    d[1, 10:15] = float("nan")
    data = {
        "distance_nm": d,
        "mask": torch.isfinite(d),
        "ms2": torch.randn(B, T, **f64),
        "ms2_mask": torch.ones(B, T, dtype=torch.bool),
    }
    return model, data


def _f(model, d, data, task, frames=None):
    with torch.no_grad():
        out = model(d, data["mask"], data["ms2"], data["ms2_mask"])
    y = out["mean"] if task == "ms2" else torch.sigmoid(out["logit"])
    return y.sum(1) if frames is None else y[torch.arange(len(y)), torch.as_tensor(frames)]


@pytest.mark.parametrize(
    "task,frames,kw",
    [("state", None, {}), ("ms2", None, dict(past_ms2=True)), ("state", [3, 44, 20], dict(backbone="transformer"))],
)
def test_integrated_gradients_completeness(task, frames, kw):
    "Σ_t attribution = f(x) − f(far baseline), with f computed here independently; missing frames get 0."
    model, data = _ig_setup(task, **kw)
    attr, delta = integrated_gradients(model, data, task, n_steps=64, frames=frames)
    assert attr.shape == data["distance_nm"].shape and np.isfinite(attr).all()
    base = torch.full_like(data["distance_nm"], far_distance_nm(model))
    d = torch.where(data["mask"], data["distance_nm"], base)
    diff = (_f(model, d, data, task, frames) - _f(model, base, data, task, frames)).numpy()
    assert np.abs(diff).max() > 1e-3  # the test is not vacuous
    # 64 Gauss–Legendre steps of a smooth function in float64: 1e-4 relative is loose (captum's δ is far smaller)
    np.testing.assert_allclose(attr.sum(1), diff, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(delta, attr.sum(1) - diff, atol=1e-7)
    assert np.all(attr[1, 10:15] == 0)


def test_integrated_gradients_zero_without_distance_and_checks_inputs():
    model, data = _ig_setup("state", use_distance=False)
    attr, _ = integrated_gradients(model, data, n_steps=8)
    assert np.abs(attr).max() == 0
    model, data = _ig_setup("state")
    with torch.no_grad():
        assert float(model.gate(torch.tensor([[far_distance_nm(model)]], **f64))) < 1e-9
    with pytest.raises(ValueError):
        integrated_gradients(model, data, "ms2")  # a state model has no MS2 output
    with pytest.raises(ValueError):
        integrated_gradients(model, data, baseline_nm=100.0)  # a contact is not a neutral baseline
    with pytest.raises(ValueError):
        integrated_gradients(model, data, frames=[0, 1, 45])  # frame out of range
    with pytest.raises(ValueError):
        integrated_gradients(SeedsGateModel("state"), data)


def test_off_to_on_and_triggered():
    state = np.array([[0, 0, 1, 1, 0, 1, np.nan, 1], [1, 1, 0, 0, 0, 0, 0, 1]], dtype=float)
    b, t = off_to_on(state)
    assert b.tolist() == [0, 0, 1] and t.tolist() == [2, 5, 7]  # frame 7 of trace 0 follows a missing frame: no switch
    v = np.arange(16, dtype=float).reshape(2, 8)
    out = triggered(v, b, t, np.array([-3, -1, 0, 1]))
    np.testing.assert_array_equal(out, [[np.nan, 1, 2, 3], [2, 4, 5, 6], [12, 14, 15, np.nan]])


def test_integrated_gradients_refines_unconverged_traces():
    "With `tol`, traces whose |δ| is above it are recomputed with more steps until they converge (or max_steps)."
    model, data = _ig_setup("state")
    coarse, d_coarse = integrated_gradients(model, data, n_steps=2)
    assert np.abs(d_coarse).max() > 1e-6  # two steps are not enough: refinement has work
    fine, d_fine = integrated_gradients(model, data, n_steps=2, tol=1e-6, max_steps=256)
    assert np.abs(d_fine).max() <= 1e-6
    ref, _ = integrated_gradients(model, data, n_steps=256)
    np.testing.assert_allclose(fine, ref, atol=1e-5)  # converged attributions agree per frame
    _, d_capped = integrated_gradients(model, data, n_steps=2, tol=1e-12, max_steps=4)
    assert np.abs(d_capped).max() > 1e-12  # max_steps caps the work
