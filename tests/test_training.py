"""Tests of xai_hsg.training: the loop learns, stops early and restores the best weights, clips, schedules, groups."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from xai_hsg.training import EarlyStopping, History, LoopConfig, lr_factor, make_optimizer, train_loop

torch.set_num_threads(1)


def _toy(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _mse(model, batch):
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean(), {"n": len(x)}


def _batches(x, y, batch_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lambda: ((x[i], y[i]) for i in torch.randperm(len(x), generator=g).split(batch_size))


def test_loss_decreases_on_toy_regression_and_history_shape():
    x, y = _toy()
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    val = lambda m: {"val_loss": _mse(m, (x, y))[0]}
    hist = train_loop(model, _mse, _batches(x, y), LoopConfig(epochs=25, lr=0.05), evaluate=val)
    assert isinstance(hist, History) and len(hist) == 25
    assert hist["epoch"] == list(range(1, 26))
    assert set(hist.columns) == {"epoch", "loss", "lr", "val_loss", "elapsed_s"}
    assert hist.to_frame().shape == (25, 5)
    assert hist["loss"][-1] < 0.02 * hist["loss"][0] and hist["val_loss"][-1] < 0.05
    assert hist.best_value == min(hist["val_loss"]) and not hist.stopped_early
    assert np.all(np.diff(hist["elapsed_s"]) >= 0)
    d = hist.to_dict()
    assert d["rows"][0]["epoch"] == 1 and d["best_row"] == hist.best_row


def test_epoch_loss_is_the_batch_weighted_mean():
    "Batches of 16, 16, 8: the epoch's loss weights each batch by its `n`; a 'skip' batch (loss None) does nothing."
    x, y = _toy(40)
    seen = []

    def loss_fn(model, batch):
        loss, m = _mse(model, batch)
        seen.append((float(loss.detach()), m["n"]))
        return loss, m

    torch.manual_seed(0)
    hist = train_loop(
        nn.Linear(4, 1),
        loss_fn,
        lambda: ((x[s : s + 16], y[s : s + 16]) for s in range(0, 40, 16)),
        LoopConfig(epochs=1),
    )
    assert [n for _, n in seen] == [16, 16, 8]
    assert math.isclose(hist["loss"][0], sum(v * n for v, n in seen) / 40)
    skip = train_loop(nn.Linear(4, 1), lambda m, b: (None, {}), lambda: [1, 2], LoopConfig(steps=3))
    assert len(skip) == 0


def test_reproduces_a_hand_written_loop_exactly():
    "AdamW, two param groups, clipping and a shuffled generator: the loop gives bit-identical weights and losses."
    x, y = _toy()

    def groups(m):
        return [
            {"params": [m.weight], "lr": 0.01, "weight_decay": 0.1},
            {"params": [m.bias], "lr": 0.1, "weight_decay": 0.0},
        ]

    torch.manual_seed(0)
    ref = nn.Linear(4, 1)
    model = copy.deepcopy(ref)
    opt = torch.optim.AdamW(groups(ref))
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        total = 0.0
        for i in torch.randperm(len(x), generator=g).split(16):
            loss = _mse(ref, (x[i], y[i]))[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            opt.step()
            total += float(loss.detach()) * len(i)
        losses.append(total / len(x))
    cfg = LoopConfig(epochs=3, optimizer="adamw", grad_clip=0.5)
    hist = train_loop(model, _mse, _batches(x, y), cfg, param_groups=groups(model))
    assert hist["loss"] == losses
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))


def test_early_stopping_stops_and_restores_best_state():
    x, y = _toy()
    scores = iter([3.0, 2.0, 1.0, 1.5, 2.5, 0.5, 0.1])
    states = []

    def fake_eval(m):
        states.append(copy.deepcopy(m.state_dict()))
        return {"val_loss": next(scores)}

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    hist = train_loop(model, _mse, _batches(x, y), LoopConfig(epochs=7, lr=0.05, patience=2), evaluate=fake_eval)
    assert hist.stopped_early and len(hist) == 5 and hist.best_row == 2 and hist.best_value == 1.0
    assert all(torch.equal(model.state_dict()[k], states[2][k]) for k in states[2])


def test_early_stopping_keeps_last_state_without_restore_and_modes():
    x, y = _toy()
    scores = iter([0.1, 0.2, 0.3])
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    cfg = LoopConfig(epochs=5, lr=0.05, patience=2, restore_best=False, monitor="acc", mode="min")
    hist = train_loop(model, _mse, _batches(x, y), cfg, evaluate=lambda m: {"acc": next(scores)})
    assert hist.stopped_early and len(hist) == 3 and hist.best_row == 0
    last = copy.deepcopy(model.state_dict())
    stop = EarlyStopping(LoopConfig(epochs=1, mode="max", patience=1))
    assert not stop.update(1.0, 0, model) and not stop.update(2.0, 1, model) and stop.update(1.5, 2, model)
    assert stop.best_row == 1
    assert all(torch.equal(model.state_dict()[k], last[k]) for k in last)


def test_gradient_clipping_is_applied():
    x, y = _toy()
    norms = []

    def hook(opt, args, kwargs):
        norms.append(float(torch.cat([p.grad.flatten() for g in opt.param_groups for p in g["params"]]).norm()))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        big = lambda m, b: (1e3 * _mse(m, b)[0], {})
        torch.manual_seed(0)
        train_loop(nn.Linear(4, 1), big, _batches(x, y), LoopConfig(steps=5, grad_clip=0.25))
        clipped = list(norms)
        norms.clear()
        train_loop(nn.Linear(4, 1), big, _batches(x, y), LoopConfig(steps=5))
    finally:
        handle.remove()
    assert len(clipped) == 5 and max(clipped) <= 0.25 * (1 + 1e-5) and min(clipped) > 0.24
    assert min(norms) > 1.0


def test_schedule_values_and_logged_lrs():
    cfg = LoopConfig(steps=10, lr=0.2, schedule="cosine", warmup_steps=2, min_lr_fraction=0.05)
    f = [lr_factor(s, cfg) for s in range(11)]
    assert f[:3] == [0.5, 1.0, 1.0] and math.isclose(f[10], 0.05)
    mid = 2 + (10 - 2) // 2
    assert math.isclose(f[mid], 0.05 + 0.95 * 0.5)
    assert [lr_factor(s, LoopConfig(epochs=4)) for s in range(5)] == [1.0] * 5
    # the factor of pretrain_mlm (embed, before the port): warm-up, then cosine to 5 %
    warm, steps = 3, 20
    old = lambda s: (
        (s + 1) / warm
        if s < warm
        else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))
    )
    new = LoopConfig(steps=steps, schedule="cosine", warmup_steps=warm, min_lr_fraction=0.05)
    assert [lr_factor(s, new) for s in range(steps)] == [old(s) for s in range(steps)]
    x, y = _toy()
    torch.manual_seed(0)
    hist = train_loop(nn.Linear(4, 1), _mse, _batches(x, y), cfg)
    np.testing.assert_allclose(hist["lr"], [0.2 * v for v in f[:10]])
    assert hist["step"] == list(range(1, 11))  # step mode: 10 steps over 8-batch epochs, batches() re-drawn
    with pytest.raises(ValueError):
        LoopConfig(epochs=3, schedule="cosine")  # an epoch-counted cosine needs steps_per_epoch


def test_param_group_lrs_and_defaults():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    cfg = LoopConfig(epochs=1, lr=0.1, weight_decay=0.01, optimizer="adamw")
    opt = make_optimizer(
        net, cfg, [{"params": net[0].parameters(), "lr": 0.5, "weight_decay": 0.0}, {"params": net[1].parameters()}]
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.5, 0.0), (0.1, 0.01)]
    assert type(make_optimizer(net, LoopConfig(epochs=1))) is torch.optim.Adam
    # in the loop: a parameter with lr 0 does not move, the other does
    x, y = _toy()
    model = nn.Linear(4, 1)
    bias0, w0 = model.bias.detach().clone(), model.weight.detach().clone()
    train_loop(
        model,
        _mse,
        _batches(x, y),
        LoopConfig(steps=3, lr=0.1),
        param_groups=[{"params": [model.weight]}, {"params": [model.bias], "lr": 0.0}],
    )
    assert torch.equal(model.bias, bias0) and not torch.equal(model.weight, w0)


def test_eval_schedule_in_step_mode_and_config_validation():
    x, y = _toy()
    calls = []
    cfg = LoopConfig(steps=7, eval_every=3, eval_at_start=True)
    hist = train_loop(nn.Linear(4, 1), _mse, _batches(x, y), cfg, evaluate=lambda m: calls.append(1) or {"v": 1.0})
    assert len(calls) == 4 and [r["step"] for r in hist.rows if "v" in r] == [0, 3, 6, 7]
    for bad in (
        dict(),
        dict(epochs=2, steps=3),
        dict(epochs=0),
        dict(steps=1, optimizer="sgd"),
        dict(steps=1, mode="up"),
        dict(steps=1, patience=0),
    ):
        with pytest.raises(ValueError):
            LoopConfig(**bad)
