"""The binary-latent VAE of MS2 (`xai_hsg.vae`), its baselines, scores and readers; the MS2-only tracks path."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from xai_hsg.simulate import simulate
from xai_hsg.tracks import TracksError, read_burstinfer_wide, read_tracks
from xai_hsg.vae import (
    CausalUNet1d,
    EventVAE,
    MS2Batch,
    MS2EventModel,
    VAEConfig,
    binary_concrete,
    chain_log_partition,
    chain_marginals,
    compare_states,
    convolve_fine,
    find_ush_data,
    fine_loading_counts,
    kernel_on_grid,
    load_ush,
    match_events,
    ms2_sim_params,
    nnls_deconvolve,
    score_events,
    state_posterior_from_loadings,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim():
    return simulate(12, ms2_sim_params("high_snr", n_frames=90), seed=5)


def test_binary_concrete_frequency_matches_sigmoid():
    logits = torch.tensor([-4.0, -1.5, 0.0, 0.7, 3.0])
    g = torch.Generator().manual_seed(0)
    for tau in (1.0, 0.1):
        z = binary_concrete(logits.expand(40_000, 5), tau=tau, generator=g)
        assert torch.allclose(z, z.round(), atol=1e-6)  # hard samples forward
        # P(z = 1) = σ(a) at any temperature (binomial s.e. ≤ 0.0025)
        assert (z.mean(0) - torch.sigmoid(logits)).abs().max() < 0.012
    relaxed = binary_concrete(logits.expand(10, 5), tau=0.5, hard=False, generator=g)
    assert ((relaxed > 0) & (relaxed < 1)).all() and not torch.allclose(relaxed, relaxed.round())
    a = torch.zeros(3, requires_grad=True)
    binary_concrete(a, tau=0.5, generator=g).sum().backward()
    assert (a.grad > 0).all()  # straight-through: the relaxed gradient flows
    with pytest.raises(ValueError, match="tau"):
        binary_concrete(logits, tau=0.0)


@pytest.mark.parametrize("upsample", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_shapes_at_each_upsampling(upsample, causal):
    cfg = VAEConfig(upsample=upsample, causal=causal, width=4, depth=2)
    model = EventVAE(cfg, dt_s=30.0)
    b = MS2Batch.from_arrays(np.random.default_rng(0).normal(size=(3, 37)), np.ones((3, 37), bool), 0.0, 1.0, pre=5)
    a = model.encode(b)
    assert a.shape == (3, 42 * upsample)
    q = torch.sigmoid(a)
    assert model.decode(q).shape == (3, 42) and model.p_on(q).shape == (3, 42)
    t = model.elbo_terms(b)
    assert t.nll.shape == t.kl.shape == (3,) and torch.isfinite(t.nll).all() and (t.kl > -1e-4).all()
    with pytest.raises(ValueError, match="power of two"):
        VAEConfig(upsample=3)


def test_causal_encoder_does_not_see_the_future():
    torch.manual_seed(0)
    for depth in (1, 3):
        enc = CausalUNet1d(2, width=6, depth=depth).eval()
        x = torch.randn(2, 2, 45)
        for t in (0, 17, 30, 44):
            x2 = x.clone()
            x2[..., t:] += torch.randn_like(x2[..., t:]) * 3
            with torch.no_grad():
                d = (enc(x) - enc(x2)).abs().amax((0, 1))
            assert d[:t].max() == 0 if t else True
            assert d[t:].max() > 0
    # the whole causal VAE: loading logits of frames before t unchanged when MS2 after t changes
    model = EventVAE(VAEConfig(upsample=2, causal=True, width=4, depth=2), dt_s=30.0).eval()
    y = np.random.default_rng(1).normal(size=(1, 40))
    y2 = y.copy()
    y2[0, 25:] += 2.0
    with torch.no_grad():
        a1 = model.encode(MS2Batch.from_arrays(y, np.ones_like(y, bool), 0.0, 1.0, pre=3))
        a2 = model.encode(MS2Batch.from_arrays(y2, np.ones_like(y, bool), 0.0, 1.0, pre=3))
        q1, q2 = torch.sigmoid(a1), torch.sigmoid(a2)
        p1, p2 = model.p_on(q1), model.p_on(q2)
    assert torch.equal(a1[:, : (3 + 25) * 2], a2[:, : (3 + 25) * 2]) and not torch.equal(a1, a2)
    assert torch.equal(p1[:, : 3 + 25], p2[:, : 3 + 25])  # filtered P(ON) is causal too
    # the non-causal encoder does see the future (the test above can fail)
    nc = EventVAE(VAEConfig(upsample=2, causal=False, width=4, depth=2), dt_s=30.0).eval()
    with torch.no_grad():
        b1 = nc.encode(MS2Batch.from_arrays(y, np.ones_like(y, bool), 0.0, 1.0, pre=3))
        b2 = nc.encode(MS2Batch.from_arrays(y2, np.ones_like(y, bool), 0.0, 1.0, pre=3))
    assert not torch.equal(b1[:, : (3 + 20) * 2], b2[:, : (3 + 20) * 2])


def test_physics_decoder_reproduces_noiseless_ms2(sim):
    dt, p = sim.params.dt_s, sim.params
    pre = 20
    errors = []
    for U in (1, 2, 8):
        k = kernel_on_grid(dt, U, p.t_rise_s, p.t_plateau_s)
        counts = fine_loading_counts(sim, U)
        assert np.array_equal(counts.reshape(sim.n_traces, -1, U).sum(-1), sim.loading_counts)
        lo = sim.t_s[0] - dt / 2 - pre * dt
        edges = lo + np.arange(pre * U + 1) * dt / U
        before = np.stack([np.histogram(t, edges)[0] for t in sim.loading_times_s])
        z = torch.tensor(np.concatenate([before, counts], 1))
        ms2 = p.amplitude * convolve_fine(z, torch.tensor(k.weights), k.lag_min, U)[:, pre:].numpy()
        errors.append(np.abs(ms2 - sim.ms2_clean).max())
    # binning a loading time within its bin is the only error: it shrinks with U (one Pol II = 1)
    assert errors[2] < 0.06 and errors[2] < errors[1] < errors[0]
    # a loading exactly at a fine bin's centre is reproduced exactly by the bin-averaged kernel on the plateau
    k = kernel_on_grid(30.0, 4, 120.0, 240.0)
    assert math.isclose(k.weights.sum() * 7.5, 300.0, rel_tol=1e-9)  # ∫K = T_rise/2 + T_plateau


def test_chain_marginals_match_brute_force():
    import itertools

    g = torch.Generator().manual_seed(3)
    phi = torch.randn(2, 5, 2, generator=g, dtype=torch.float64)
    lt = torch.log(torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64))
    li = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    log_z, filt = chain_log_partition(phi, lt, li)
    marg = chain_marginals(phi, lt, li)
    for b in range(2):
        paths = list(itertools.product((0, 1), repeat=5))
        w = torch.stack(
            [
                li[s[0]] + sum(lt[s[i - 1], s[i]] for i in range(1, 5)) + sum(phi[b, i, s[i]] for i in range(5))
                for s in paths
            ]
        )
        assert torch.isclose(log_z[b], torch.logsumexp(w, 0))
        on = torch.tensor(paths, dtype=w.dtype)
        assert torch.allclose(marg[b], (w.softmax(0)[:, None] * on).sum(0))
        # filtered P(ON at 0) uses frame 0 only
        assert torch.isclose(filt[b, 0, 1].exp(), torch.softmax(li + phi[b, 0], 0)[1])


def test_event_matching_and_scores(sim):
    assert match_events(np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0])) == (1, 1, 1)
    assert match_events(np.array([1, 0, 0, 0]), np.array([0, 0, 1, 0])) == (0, 1, 1)
    assert match_events(np.array([0, 2, 0]), np.array([1, 0, 1])) == (2, 2, 2)
    arr = sim.to_arrays()
    perfect = score_events(arr.loadings, arr.state, arr)
    assert perfect["corr_1f"] == pytest.approx(1) and perfect["event_f1"] == 1 and perfect["state_f1"] > 0.95
    shuffled = score_events(np.roll(arr.loadings, 7, axis=1), 1 - arr.state, arr)
    assert shuffled["event_f1"] < 0.6 and shuffled["state_f1"] < 0.3
    nothing = score_events(None, None, arr)
    assert all(math.isnan(v) for v in nothing.values())


def test_nnls_recovers_noiseless_loadings(sim):
    x = nnls_deconvolve(sim.ms2_clean, sim.params.dt_s, sim.params.t_rise_s, sim.params.t_plateau_s)
    s = score_events(x, None, sim.to_arrays())
    assert s["corr_4f"] > 0.9 and s["event_f1"] > 0.8
    with pytest.raises(ValueError, match="amplitude"):
        nnls_deconvolve(sim.ms2, 30.0, 120.0, 240.0, amplitude=0)


@pytest.mark.slow  # 20-40 s on a busy 2-core machine
def test_trained_vae_beats_trivial_baseline():
    p = ms2_sim_params("high_snr", n_frames=80)
    s = simulate(48, p, seed=11)
    arr = s.to_arrays()
    train, test = arr.subset(np.arange(36)), arr.subset(np.arange(36, 48))
    model = MS2EventModel(
        upsample=2,
        epochs=30,
        width=8,
        depth=2,
        batch_size=8,
        amp_init_density=(0.25, 0.1),
        polish_rounds=1,
        refine_steps=20,
        seed=0,
    ).fit(train)
    assert len(model.selection_) == 2 and model.history_.best_value is not None
    profile = model.polish_  # one point per amplitude multiple, then the final fit of amplitude, background, noise
    n_grid = len(model.cfg.polish_amp_factors)  # the grid, one or two midpoints around its best, the final fit
    assert n_grid + 2 <= len(profile) <= n_grid + 3 and [p.final for p in profile] == [False] * (len(profile) - 1) + [
        True
    ]
    assert all(np.isfinite(p.neg_elbo) and p.amplitude > 0 for p in profile)
    # the polish's amplitude profile from deconvolution starts: the trained amplitude was half the truth (A = 1)
    assert abs(model.learned()["amplitude"] - 1.0) < 0.3, profile
    print("amplitude profile", [(round(p.amplitude * model.scale_, 3), round(p.neg_elbo, 3)) for p in profile])
    post = model.transform(test)
    assert post.expected_loadings.shape == (12, 80) and np.isfinite(post.p_on).all()
    ours = score_events(post.expected_loadings, post.p_on, test)
    # trivial baselines: a constant loading rate (no correlation), P(ON) = the training ON fraction everywhere
    flat = np.full_like(test.loadings, train.loadings.mean())
    trivial = score_events(flat + 1e-9 * np.random.default_rng(0).normal(size=flat.shape), None, test)
    assert ours["corr_2f"] > 0.3 > abs(trivial["corr_2f"])
    assert ours["state_f1"] > 0.5
    assert ours["event_f1"] > trivial["event_f1"]
    assert np.isfinite(model.score(test)) and 0.3 < model.learned()["amplitude"] < 3.0
    with pytest.raises(ValueError, match="fitted at"):
        model.transform(test.replace(dt_s=20.0))


def test_ms2_only_tracks_file(tmp_path):
    f = tmp_path / "ms2.csv"
    f.write_text("trace_id,t_s,ms2\na,0,1.0\na,20,2.5\na,60,0.5\nb,0,0.0\n")
    tr = read_tracks(f)
    assert tr.layout == "ms2"
    arr = tr.to_arrays()
    assert arr.ms2.shape == (2, 4) and not arr.has_distances and arr.vector_nm is None
    assert np.isnan(arr.distance_nm).all() and arr.present[0].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="MS2-only"):
        tr.vector_nm()
    with pytest.raises(TracksError, match="no ms2 column"):
        (tmp_path / "none.csv").write_text("trace_id,t_s,state\na,0,1\n")
        read_tracks(tmp_path / "none.csv")


def _write_wide_fixture(folder):
    "A tiny file in the ush layout (index, 7 metadata columns, frames with trailing empties) + burstInfer outputs."
    rng = np.random.default_rng(0)
    n_frames = 12
    frames = rng.uniform(100, 5000, size=(4, n_frames)).round(3)
    frames[1, 9:] = np.nan  # a trace that ended early
    frames[2, 3] = np.nan  # an inner gap
    header = "," + ",".join(["0", "0", "0", "0", "1", "2", "3"] + [str(i) for i in range(n_frames)])
    lines = [header]
    for i in range(4):
        meta = [f"{1000 + i}.0", str(i % 2), "1234.5", "0.1", "2.0", "3.0", "4.0"]
        vals = ["" if np.isnan(v) else repr(float(v)) for v in frames[i]]
        lines.append(",".join([str(i)] + meta + vals))
    (folder / "uwt_e1_no_bd.csv").write_text("\n".join(lines) + "\n")
    # burstInfer's per-cell files for cells 2 and 0 (in that order): raw values with missing frames as 0
    sig = np.nan_to_num(frames[[2, 0]])
    post = np.zeros((2, n_frames))
    post[0, 2:6] = 1
    post[:, n_frames - 4 :] = np.nan
    pd.DataFrame(sig).to_csv(folder / "SINGLE_CELL_SIGNALS.csv")
    pd.DataFrame(post).to_csv(folder / "SINGLE_CELL_POSTERIOR.csv")
    (folder / "model_maximum_likelihood_estimate.csv").write_text("kon,0.3\nkoff,3.0\nnoise,17000.0\n")
    return frames


def test_ush_reader_on_fixture(tmp_path, monkeypatch):
    frames = _write_wide_fixture(tmp_path)
    wide = read_burstinfer_wide(tmp_path / "uwt_e1_no_bd.csv")
    arr = wide.tracks.to_arrays()
    assert wide.tracks.layout == "ms2" and arr.dt_s == 20.0 and arr.ms2.shape == (4, 12)
    assert wide.cells.trace_id.tolist() == ["1000", "1001", "1002", "1003"]
    assert wide.cells.cluster.tolist() == [0, 1, 0, 1] and wide.cells.mean_intensity.iloc[0] == 1234.5
    assert arr.present[1].tolist() == [True] * 9 + [False] * 3  # trailing empty frames dropped
    assert np.isnan(arr.ms2[2, 3]) and arr.present[2, 3]  # an inner empty frame is a gap
    np.testing.assert_allclose(arr.ms2[0], frames[0])
    np.testing.assert_allclose(arr.t_s[0], np.arange(12) * 20.0)

    monkeypatch.setenv("XAI_HSG_USH_DATA", str(tmp_path))
    assert find_ush_data() == tmp_path and find_ush_data(tmp_path / "nowhere") is None
    ush = load_ush(find_ush_data())
    assert ush.mle == {"kon": 0.3, "koff": 3.0, "noise": 17000.0}
    post = ush.posterior
    assert set(post.trace_id) == {"1002", "1000"} and post.frame.min() == 4  # posterior column j is frame j + 4
    on = post[(post.trace_id == "1002") & (post.p_on == 1)].frame.tolist()
    assert on == [6, 7, 8, 9]
    p_on = np.zeros((4, 12))
    p_on[2, 6:10] = 0.9
    cmp = compare_states(p_on, arr.trace_id, post)
    assert cmp["n_cells"] == 2 and cmp["frame_agreement"] == 1.0
    p_on[2, 6:8] = 0.1
    assert compare_states(p_on, arr.trace_id, post)["frame_agreement"] == pytest.approx(1 - 2 / 16)


def test_wide_reader_bad_input(tmp_path):
    f = tmp_path / "w.csv"
    f.write_text(",0,0,0,0,1,2,3,0,1\n0,7,0,1,0,0,0,0,1.0,abc\n")
    with pytest.raises(TracksError, match=r"row 1, column 9: non-numeric"):
        read_burstinfer_wide(f)
    f.write_text(",0,0,0,0,1,2,3,0,1\n0,7,0,1,0,0,0,0,,\n")
    with pytest.raises(TracksError, match="without any fluorescence"):
        read_burstinfer_wide(f)
    f.write_text(",0,0,0,0,1,2,3,0,1\n0,7,0,1,0,0,0,0,1,2\n1,7,0,1,0,0,0,0,1,2\n")
    with pytest.raises(TracksError, match="repeated"):
        read_burstinfer_wide(f)
    with pytest.raises(FileNotFoundError):
        read_burstinfer_wide(tmp_path / "missing.csv")


def test_events_command(tmp_path, capsys):
    from xai_hsg.cli import main

    s = simulate(8, ms2_sim_params("high_snr", n_frames=40), seed=2)
    df = s.to_frame(truth=False)[["trace_id", "t_s", "ms2"]]
    df = df.drop(index=[3, 4])  # two missing frames
    f = tmp_path / "ms2.csv"
    df.to_csv(f, index=False)
    out = tmp_path / "events.csv"
    assert main(["events", str(f), "--out", str(out), "--epochs", "2", "--upsample", "1"]) == 0
    table = pd.read_csv(out, dtype={"trace_id": str})
    assert table.columns.tolist() == ["trace_id", "t_s", "expected_loadings", "p_on"] and len(table) == len(df)
    assert table.p_on.between(0, 1).all() and (table.expected_loadings >= 0).all()
    assert "wrote" in capsys.readouterr().out
    # --save-model, then --model: the saved model applied without training gives the same table
    again, saved = tmp_path / "again.csv", tmp_path / "model"
    args = ["--epochs", "2", "--upsample", "1", "--t-rise-s", "90"]
    assert main(["events", str(f), "--out", str(again), *args, "--save-model", str(saved)]) == 0
    first = pd.read_csv(again, dtype={"trace_id": str})
    assert (saved / "model.safetensors").is_file() and json.loads((saved / "model.json").read_text())["config"][
        "t_rise_s"
    ] == 90.0
    assert main(["events", str(f), "--out", str(again), "--force", "--model", str(saved)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again, dtype={"trace_id": str}), first)
    capsys.readouterr()
    assert main(["events", str(f), "--out", str(again), "--force", "--model", str(saved), "--t-rise-s", "120"]) == 2
    assert "differ from the kernel" in capsys.readouterr().err
    assert main(["events", str(f), "--out", str(again), "--force", "--model", str(tmp_path)]) == 1
    assert "model.json missing" in capsys.readouterr().err
    # an existing output needs --force; a missing input, a bad option value: one-line errors
    assert main(["events", str(f), "--out", str(out), "--epochs", "1"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["events", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.csv")]) == 1
    assert main(["events", str(f), "--out", str(tmp_path / "x.csv"), "--dt", "-3"]) == 2
    (tmp_path / "d.csv").write_text("trace_id,t_s,distance_nm\na,0,100\na,30,120\n")
    assert main(["events", str(tmp_path / "d.csv"), "--out", str(tmp_path / "y.csv")]) == 1
    assert "no ms2" in capsys.readouterr().err


def test_compound_hmm_reuses_the_marginal_model(sim):
    from xai_hsg.vae import compound_hmm

    arr = sim.to_arrays()
    fit = compound_hmm(arr.subset(np.arange(8)), arr.subset(np.arange(8, 12)), 120.0, 240.0, max_iter=30)
    assert fit.p_on.shape == (4, 90) and np.isfinite(fit.p_on).all()
    assert fit.params["sigma_ms2"] == pytest.approx(sim.params.sigma_ms2, rel=0.3)
    assert score_events(fit.expected_loadings, fit.p_on, arr.subset(np.arange(8, 12)))["state_f1"] > 0.6


def test_state_posterior_from_loadings_matches_enumeration_of_every_promoter_path():
    import itertools

    counts = np.array([[0.0, 2.0, 0.0, 1.0, 0.0]])
    dt, k_on, k_off, nu_on, nu_off = 30.0, 1 / 300, 1 / 120, 1 / 60, 1 / 600
    p01, p10 = 1 - math.exp(-k_on * dt), 1 - math.exp(-k_off * dt)
    trans = np.array([[1 - p01, p01], [p10, 1 - p10]])
    start = np.array([k_off, k_on]) / (k_on + k_off)
    lam = np.array([nu_off, nu_on]) * dt
    weight, on = 0.0, np.zeros(5)
    for path in itertools.product((0, 1), repeat=5):
        w = start[path[0]] * np.prod([trans[a, b] for a, b in zip(path, path[1:])])
        w *= np.prod([lam[s] ** n * math.exp(-lam[s]) / math.factorial(int(n)) for s, n in zip(path, counts[0])])
        weight += w
        on += w * np.array(path)
    post = state_posterior_from_loadings(counts, dt, k_on, k_off, nu_on, nu_off)
    np.testing.assert_allclose(post[0], on / weight, rtol=1e-9)
    with pytest.raises(ValueError, match="nu_on_per_s > nu_off_per_s"):
        state_posterior_from_loadings(counts, dt, k_on, k_off, nu_on_per_s=0.0)
