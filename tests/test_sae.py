"""Sparse autoencoders (`xai_hsg.sae`): the sparsity mechanisms, the decoder constraint, AuxK, the SAELens layout,
resumable training, recovery of a known dictionary, concept F1, the spliced LM loss and `xai-hsg train-sae`."""

import json

import numpy as np
import pytest
import torch

from xai_hsg.sae import (
    SAE,
    ActivationSource,
    SAEConfig,
    SAETrainer,
    TrainerConfig,
    best_features,
    concept_instances,
    concept_scores,
    evaluate_sae,
    export_saelens,
    load_sae,
    mean_max_cosine,
    saelens_forward,
    save_sae,
    synthetic_activations,
    train_sae,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy():
    "Activations with a known dictionary: 64 unit directions in 32 dimensions, ~3 active per token."
    return synthetic_activations(20_000, 32, 64, k=3, seed=0)


def _fit(x, kind="batchtopk", d_sae=128, k=3, epochs=20, **kw):
    sae_kw = {key: kw.pop(key) for key in ("l1_coeff", "aux_coeff", "aux_k") if key in kw}
    sae = SAE(SAEConfig(x.shape[1], d_sae, kind=kind, k=k, **sae_kw), seed=0)
    cfg = TrainerConfig(**{"batch_size": 512, "epochs": epochs, "lr": 3e-3, "dead_tokens": 20_000, **kw})
    hist = SAETrainer(sae, cfg).fit(ActivationSource.from_array(x))
    return sae, hist


# -- the model ------------------------------------------------------------------------------------------------
def test_decoder_rows_stay_unit_norm_and_gradient_is_orthogonal(toy):
    x, _ = toy
    sae, _ = _fit(x[:3000], kind="l1", epochs=3)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
    sae.train()
    loss = (sae(x[:256]) - x[:256]).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        par = lambda: ((sae.W_dec.grad * sae.W_dec).sum(1).abs() / sae.W_dec.grad.norm(dim=1)).max()
        assert par() > 0.05  # the raw gradient has a part along the rows ...
        sae.remove_parallel_grad()
        assert par() < 1e-5  # ... which is removed


def test_topk_gives_exactly_k_active(toy):
    x, _ = toy
    sae, _ = _fit(x[:4000], kind="topk", k=5, epochs=2)
    z = sae.encode(x[4000:6000])
    assert ((z > 0).sum(1) == 5).all()


def test_batchtopk_k_per_token_on_average_and_threshold_at_inference(toy):
    x, _ = toy
    sae, _ = _fit(x, kind="batchtopk", k=3, epochs=10)
    sae.train()
    z = sae.encode(x[:500])
    assert int((z > 0).sum()) == 3 * 500 and (z > 0).sum(1).max() > 3  # k·B over the batch, not k per token
    sae.eval()
    thr = float(sae.threshold)
    assert np.isfinite(thr) and thr > 0
    xs = x[5000:9000]
    pre = sae.pre_activations(sae.normalise(xs))
    z = sae.encode(xs)
    assert torch.equal(z, pre * (pre > thr))  # the threshold, not a top-k
    assert torch.equal(sae.encode(xs[:7]), z[:7])  # a token's latents do not depend on its batch
    assert 2.0 < float((z > 0).sum(1).float().mean()) < 4.0


def test_batchtopk_without_threshold_refuses_eval():
    sae = SAE(SAEConfig(8, 16, k=2)).eval()
    with pytest.raises(ValueError, match="threshold"):
        sae.encode(torch.randn(3, 8))


def test_auxk_revives_planted_dead_latents():
    x, _ = synthetic_activations(12_000, 16, 64, k=2, seed=1)  # 64 true directions: the 32 live latents are too few
    fired, planted = {}, torch.arange(32, 64)
    for aux in (1 / 32, 0.0):
        sae = SAE(SAEConfig(16, 64, kind="topk", k=2, aux_coeff=aux), seed=0)
        src = ActivationSource.from_array(x)
        trainer = SAETrainer(sae, TrainerConfig(batch_size=256, epochs=12, lr=3e-3, dead_tokens=512))

        def plant(step, tr):
            if step == 1:  # after the data-dependent init: latents 32..63 get tiny encoders and never win the top-k
                with torch.no_grad():
                    tr.sae.W_enc[:, planted] *= 0.01
                    tr.sae.b_enc[planted] = 0.0

        trainer.fit(src, callback=plant)
        z = sae.encode(x[:4000])
        fired[aux] = float(((z[:, planted] > 0).sum(0) > 0).float().mean())
    assert fired[0.0] == 0.0  # without AuxK they stay dead
    assert fired[1 / 32] >= 0.4, fired  # measured 0.53 (17 of 32) after 12 epochs at the default coefficient 1/32


def test_save_load_round_trip_is_exact_in_saelens_layout(toy, tmp_path):
    x, _ = toy
    sae, _ = _fit(x[:3000], kind="batchtopk", epochs=2)
    save_sae(sae, tmp_path / "s", {"hook_layer": 2})
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert t["W_enc"].shape == (32, 128) and t["W_dec"].shape == (128, 32)
    assert t["b_enc"].shape == (128,) and t["b_dec"].shape == (32,)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["d_in"] == 32 and cfg["d_sae"] == 128 and cfg["architecture"] == "batchtopk" and cfg["hook_layer"] == 2
    back = load_sae(tmp_path / "s").eval()
    for (n, a), (_, b) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(back(x[:100]), sae(x[:100]))
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="sae_weights.safetensors"):
        load_sae(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path)


@pytest.mark.parametrize("kind", ["batchtopk", "topk", "l1"])
def test_saelens_export_folds_the_normalisation(toy, tmp_path, kind):
    x, _ = toy
    sae, _ = _fit(x[:3000], kind=kind, epochs=2)
    export_saelens(sae, tmp_path / kind)
    cfg = json.loads((tmp_path / kind / "cfg.json").read_text())
    assert cfg["architecture"] == {"batchtopk": "jumprelu", "topk": "topk", "l1": "standard"}[kind]
    assert cfg["normalize_activations"] == "none"
    ref = sae(x[3000:4000]).detach()
    assert torch.allclose(saelens_forward(tmp_path / kind, x[3000:4000]), ref, atol=1e-4 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="threshold"):
        export_saelens(SAE(SAEConfig(4, 8, k=2)), tmp_path / "untrained")


def test_interrupted_training_resumes_to_identical_weights(toy, tmp_path):
    x = toy[0][:6000]
    src = ActivationSource.from_array(x, shard_tokens=1500)
    cfg = TrainerConfig(batch_size=256, steps=30, lr=3e-3, dead_tokens=1024, checkpoint_every=5, shards_in_memory=2)

    ref = SAE(SAEConfig(32, 96, k=3), seed=0)
    ref_hist = SAETrainer(ref, cfg).fit(src)

    class Interrupt(Exception):
        pass

    def stop(step, _):
        if step == 13:
            raise Interrupt

    with pytest.raises(Interrupt):
        SAETrainer(SAE(SAEConfig(32, 96, k=3), seed=0), cfg).fit(src, tmp_path / "ck", callback=stop)
    assert json.loads((tmp_path / "ck" / "cfg.json").read_text())["step"] == 10  # the last checkpoint survived
    resumed = SAE(SAEConfig(32, 96, k=3), seed=0)
    hist = SAETrainer(resumed, cfg).fit(src, tmp_path / "ck")
    for (n, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert hist.equals(ref_hist)
    other = TrainerConfig(batch_size=128, steps=30, lr=3e-3, checkpoint_every=5)
    with pytest.raises(ValueError, match="different run"):
        SAETrainer(SAE(SAEConfig(32, 96, k=3), seed=0), other).fit(src, tmp_path / "ck")


def test_synthetic_dictionary_recovered_and_l1_worse_at_equal_l0(toy):
    x, D = toy
    btk, _ = _fit(x, kind="batchtopk", k=3)
    l1, _ = _fit(x, kind="l1", l1_coeff=6.0)
    held = x[-4000:]
    m_btk, m_l1 = evaluate_sae(btk, held), evaluate_sae(l1, held)
    assert 2.0 < m_l1["l0"] < 4.5 and 2.0 < m_btk["l0"] < 4.0  # comparable sparsity
    mmcs_btk, mmcs_l1 = mean_max_cosine(btk.W_dec.detach(), D), mean_max_cosine(l1.W_dec.detach(), D)
    assert mmcs_btk >= 0.9
    assert mmcs_l1 < mmcs_btk and m_l1["fvu"] > 2 * m_btk["fvu"], (mmcs_btk, mmcs_l1, m_btk, m_l1)


def _prefix_fvu(sae, x, n):
    "FVU of `sae` on `x` when only its first `n` latents may fire."
    sae.eval()
    with torch.no_grad():
        z = sae.encode(x)
        z[:, n:] = 0
        return float((x - sae.decode(z)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_matryoshka_nested_dictionaries_reconstruct_alone(toy):
    x, _ = toy
    cfg = SAEConfig(32, 128, kind="matryoshka", k=3)
    assert cfg.nested_sizes == (8, 16, 32, 64, 128)
    mat, _ = _fit(x[:16_000], kind="matryoshka")
    plain, _ = _fit(x[:16_000], kind="batchtopk")
    assert torch.isfinite(mat.threshold)  # BatchTopK in training, a threshold at inference, like batchtopk
    for n in (8, 16, 32):  # its first latents carry the most: better than as many latents of a plain BatchTopK SAE
        assert _prefix_fvu(mat, x[16_000:], n) < _prefix_fvu(plain, x[16_000:], n) - 0.03
    assert evaluate_sae(mat, x[16_000:])["fvu"] < 0.2  # and the whole dictionary still reconstructs


def test_matryoshka_loss_is_the_mean_over_nested_reconstructions():
    from xai_hsg.sae import _train_step
    from xai_hsg.training import LoopConfig

    x = torch.randn(64, 6) + 1.0
    sae = SAE(SAEConfig(6, 12, kind="matryoshka", k=4, prefixes=(3, 6, 12), aux_coeff=0.0), seed=0)
    trainer = SAETrainer(sae, TrainerConfig(batch_size=64, steps=1, lr=1e-3))
    trainer.opt = torch.optim.Adam(sae.parameters(), lr=1e-3)  # the loss is computed before the step
    with torch.no_grad():
        xn = sae.normalise(x)
        z = sae.activate(sae.pre_activations(xn))
        errs = [(xn - z[:, :n] @ sae.W_dec[:n] - sae.b_dec).pow(2).sum(-1).mean() for n in (3, 6, 12)]
    row = _train_step(trainer, x, 1, LoopConfig(steps=1, lr=1e-3))
    assert torch.isclose(row["loss"], torch.stack(errs).mean(), rtol=1e-5)
    assert torch.isclose(row["mse"], errs[-1], rtol=1e-5)
    for bad in [dict(prefixes=(3, 6)), dict(prefixes=(6, 3, 12)), dict(kind="batchtopk", prefixes=(3, 12))]:
        with pytest.raises(ValueError, match="prefixes"):
            SAEConfig(6, 12, **{"kind": "matryoshka", "k": 4, **bad})


def test_evaluate_sae_matches_direct_computation(toy):
    x, _ = toy
    sae, _ = _fit(x[:4000], kind="topk", k=3, epochs=2)
    xs = x[4000:5000].double()
    xh = sae(xs.float()).double()
    m = evaluate_sae(sae, ActivationSource.from_array(x[4000:5000], shard_tokens=300), batch_size=128)
    fvu = float((xs - xh).pow(2).sum().detach() / (xs - xs.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-6) and m["l0"] == pytest.approx(3.0, abs=0.05)
    assert m["n_tokens"] == 1000 and 0 <= m["dead_fraction"] <= 1


# -- concept F1 ------------------------------------------------------------------------------------------------
def test_concept_f1_precision_per_token_recall_per_instance():
    labels = np.zeros((30, 1), bool)
    labels[2:6] = labels[10:12] = labels[20:25] = True  # three instances, 11 tokens
    seqs = np.repeat(["a", "b", "c"], 10)
    f = torch.zeros(30, 2)
    f[3, 0] = f[10, 0] = 1.0  # feature 0: one token in each of two instances
    f[[2, 3, 4, 5, 10, 11, 20, 21, 22, 23, 24, 0, 1], 1] = 1.0  # feature 1: every concept token + 2 others
    s = concept_scores([f[:13], f[13:]], labels, seqs, f.max(0).values, ["c"])
    assert s.precision[0, 0, 0] == 1.0 and s.recall[0, 0, 0] == pytest.approx(2 / 3)
    assert s.precision[0, 1, 0] == pytest.approx(11 / 13) and s.recall[0, 1, 0] == 1.0
    best = best_features(s, s)
    assert best["feature"].iat[0] == 1 and best["test_f1"].iat[0] == pytest.approx(2 * (11 / 13) / (1 + 11 / 13))
    with pytest.raises(ValueError, match="rows"):
        concept_scores([f[:13]], labels, seqs, f.max(0).values, ["c"])


def test_concept_instances_split_at_sequence_boundaries():
    inst = concept_instances(np.array([[1], [1], [1]], bool), np.array(["a", "a", "b"]))
    assert inst[:, 0].tolist() == [0, 0, 1]
    with pytest.raises(ValueError):
        concept_instances(np.ones((3, 1), bool), np.array(["a"]))


# -- bad inputs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw", [dict(kind="jumprelu"), dict(k=0), dict(d_sae=4, k=5), dict(l1_coeff=float("nan")), dict(d_in=2.5)]
)
def test_bad_sae_config(kw):
    with pytest.raises(ValueError):
        SAEConfig(**{"d_in": 8, "d_sae": 16, **kw})


def test_bad_trainer_config_and_activations():
    with pytest.raises(ValueError, match="exactly one"):
        TrainerConfig(epochs=1, steps=1)
    with pytest.raises(ValueError, match="non-finite"):
        ActivationSource.from_array(np.array([[1.0, np.nan], [0.0, 1.0]], np.float32))
    with pytest.raises(ValueError, match="shape"):
        ActivationSource.from_array(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="d_in"):
        SAETrainer(SAE(SAEConfig(4, 8, k=2)), TrainerConfig(steps=1)).fit(
            ActivationSource.from_array(torch.randn(10, 5))
        )
    with pytest.raises(ValueError, match="constant"):
        SAETrainer(SAE(SAEConfig(4, 8, k=2)), TrainerConfig(steps=1)).fit(
            ActivationSource.from_array(torch.ones(10, 4))
        )


# -- the LM splice and the command line ----------------------------------------------------------------------------
def test_spliced_mlm_loss_identity_recovers_everything():
    from transformers import EsmForMaskedLM

    from xai_hsg import embed
    from xai_hsg.genome import MarkovBackground
    from xai_hsg.sae import spliced_mlm_loss

    torch.manual_seed(0)
    model = EsmForMaskedLM(embed.nt_config("tiny", max_tokens=64)).eval()
    tok = embed.NTTokenizer()
    seqs = MarkovBackground.human_like().sample(6, 240, np.random.default_rng(0))
    ev = embed.make_eval_set(tok, seqs, max_tokens=41, mask_prob=0.3)

    class Identity(SAE):
        def forward(self, x):
            return x

    out = spliced_mlm_loss(model, tok, ev, 1, Identity(SAEConfig(64, 128, k=4)))
    assert out["sae"] == pytest.approx(out["clean"], abs=1e-6) and out["recovered"] == pytest.approx(1.0, abs=1e-5)
    assert out["zero"] != pytest.approx(out["clean"])
    sae = SAE(SAEConfig(64, 128, kind="topk", k=4))
    noisy = spliced_mlm_loss(model, tok, ev, 1, sae)
    assert noisy["clean"] == out["clean"] and noisy["sae"] != pytest.approx(out["clean"], abs=1e-6)
    with pytest.raises(ValueError, match="layer"):
        spliced_mlm_loss(model, tok, ev, 2, sae)


def test_train_sae_function_and_cli(toy, tmp_path, capsys):
    x, _ = toy
    np.save(tmp_path / "x.npy", x[:3000].numpy())
    m = train_sae(tmp_path / "x.npy", tmp_path / "out", latents=96, k=3, epochs=2, batch_size=256, progress=False)
    assert m["split"] == "held-out" and m["n_tokens"] == 300 and 0 <= m["fvu"] < 1
    assert load_sae(tmp_path / "out").cfg.d_sae == 96
    from xai_hsg.cli import main

    rc = main(
        [
            "train-sae",
            str(tmp_path / "x.npy"),
            "--out",
            str(tmp_path / "cli"),
            "--kind",
            "topk",
            "--latents",
            "64",
            "--k",
            "4",
            "--epochs",
            "1",
            "--seed",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "FVU" in out and "L0" in out and "dead" in out
    assert json.loads((tmp_path / "cli" / "cfg.json").read_text())["architecture"] == "topk"
    assert main(["train-sae", str(tmp_path / "x.npy"), "--out", str(tmp_path / "cli2"), "--layer", "3"]) == 1
    assert "layer" in capsys.readouterr().err


def test_training_streams_from_a_hidden_state_store(tmp_path):
    from transformers import EsmForMaskedLM

    from xai_hsg import embed
    from xai_hsg.genome import MarkovBackground, SequenceSet

    torch.manual_seed(0)
    model = EsmForMaskedLM(embed.nt_config("tiny", max_tokens=64)).eval()
    seqs = MarkovBackground.human_like().sample(30, 240, np.random.default_rng(1))
    store = embed.extract_hidden_states(
        model,
        embed.NTTokenizer(),
        SequenceSet.from_sequences({f"s{i}": q for i, q in enumerate(seqs)}),
        tmp_path / "store",
        layers=[1],
        shard_tokens=300,
        progress=False,
    )
    assert len(store.manifest["shards"]) >= 3
    src = ActivationSource.from_store(store, 1)
    assert src.n_tokens == store.n_tokens and torch.equal(torch.cat(list(src.batches(7))), store.load_layer(1).float())
    with pytest.raises(KeyError, match="layer 0"):
        ActivationSource.from_store(store, 0)
    m = train_sae(
        tmp_path / "store", tmp_path / "sae", layer=1, latents=128, k=4, epochs=3, batch_size=64, progress=False
    )
    assert m["split"] == "held-out" and m["train_tokens"] + m["n_tokens"] == store.n_tokens and m["l0"] > 0
    with pytest.raises(ValueError, match="--layer"):
        train_sae(tmp_path / "store", tmp_path / "sae2")
