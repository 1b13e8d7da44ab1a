"The Bayes predictor of masked planted tokens (exact against brute force), CE by label, and the linear probes."

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from xai_hsg import embed, genome, probe
from xai_hsg.genome import MarkovBackground, SequenceSet

torch.set_num_threads(1)


# -- the Bayes predictor --------------------------------------------------------------------------------------
def test_iid_bases_give_the_analytic_entropy():
    "i.i.d. bases at a known composition: P(token) is the product and its mean loss is 6 H(p), also by sampling."
    p = np.array([0.18, 0.32, 0.32, 0.18])
    rng = np.random.default_rng(0)
    H = -(p * np.log(p)).sum()
    el = [probe.independent(0, np.tile(p, (30, 1)))]
    vis = np.ones(30, bool)
    vis[12:18] = False
    losses = []
    for _ in range(400):
        codes = rng.choice(4, 30, p=p)
        lp = probe.token_log_probs(codes, 12, 18, vis, np.zeros(30, bool), el, MarkovBackground.human_like())
        assert np.allclose(lp, np.log(p[probe._CANDIDATES[6]]).sum(1))
        assert np.isclose(-(np.exp(lp) * lp).sum(), 6 * H)
        true = int((codes[12:18] * 4 ** np.arange(5, -1, -1)).sum())
        losses.append(-lp[true])
    se = np.std(losses) / np.sqrt(len(losses))
    assert abs(np.mean(losses) - 6 * H) < 4 * se


@pytest.mark.parametrize("right_visible", [False, True])
def test_markov_background_and_mixture_element_match_brute_force(right_visible):
    """An order-1 chain under an element (its bases hidden), a mixture element with visible bases, a masked
    neighbour token: the predictive distribution equals the joint enumerated over every hidden value."""
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(4), size=4)
    bgm = MarkovBackground(P, 1)
    pi = bgm.stationary()
    L = 18
    codes = rng.integers(0, 4, L)
    # element at 4..8: a 3-component mixture of independent bases
    comps = rng.dirichlet(np.ones(4) * 0.7, size=(3, 5))
    w = np.array([0.5, 0.3, 0.2])
    el = probe.Element(4, 9, np.log(w), comps, "mix")
    bg = np.ones(L, bool)
    bg[4:9] = False
    a, b = 6, 12  # the token to predict; 12..17 is masked too (hidden) unless right_visible
    vis = np.ones(L, bool)
    vis[6 : 12 if right_visible else 18] = False
    lp = probe.token_log_probs(codes, a, b, vis, bg, [el], bgm)

    # brute force: sum over the chain's hidden values (4..8 under the element, 12..17 masked) and the components
    X = probe._CANDIDATES[6]
    joint = np.zeros(len(X))
    hidden = [4, 5, 6, 7, 8]  # chain values under the element; 12..17 sum to 1 given 11 (no visible anchor right)
    for hv in itertools.product(range(4), repeat=len(hidden)):
        chain = np.zeros((len(X), L), int)
        chain[:] = codes
        chain[:, hidden] = hv
        chain[:, 9:12] = X[:, 3:6]  # background bases of the token
        pr = pi[chain[:, 0]]
        for t in range(1, L if right_visible else 12):
            pr = pr * P[chain[:, t - 1], chain[:, t]]
        joint += pr
    obs = np.zeros((len(X), 5), int)
    obs[:, 0:2] = codes[4:6]
    obs[:, 2:5] = X[:, 0:3]  # element bases inside the token
    mix = sum(w[c] * np.prod([comps[c, j, obs[:, j]] for j in range(5)], axis=0) for c in range(3))
    brute = joint * mix
    brute /= brute.sum()
    assert np.allclose(np.exp(lp), brute, rtol=1e-9, atol=1e-15)


def test_token_log_probs_bad_input():
    codes = np.zeros(12, int)
    with pytest.raises(ValueError, match="visible"):
        probe.token_log_probs(codes, 0, 6, np.ones(12, bool), np.ones(12, bool), [], MarkovBackground.human_like())
    with pytest.raises(ValueError, match="1-6"):
        probe.token_log_probs(codes, 0, 7, np.zeros(12, bool), np.ones(12, bool), [], MarkovBackground.human_like())
    with pytest.raises(ValueError, match="components"):
        probe.Element(0, 3, [0.0], np.full((2, 4), 0.25))


@pytest.fixture(scope="module")
def planted_bayes():
    ss = genome.planted(n_sequences=120, length_bp=600, seed=11)
    tok = embed.NTTokenizer()
    es = embed.make_eval_set(tok, ss.sequences["sequence"].tolist(), max_tokens=51, seed=2)
    oracle = probe.PlantedOracle(ss)
    return ss, tok, es, oracle, probe.bayes_token_losses(oracle, ss, es, tok, 51)


def test_planted_bayes_is_calibrated(planted_bayes):
    "On tokens the generator drew, an exact predictor's mean loss equals the mean entropy of its predictions."
    ss, tok, es, oracle, b = planted_bayes
    assert len(b) == es.n_masked and b["exact"].mean() > 0.99
    d = (b["bayes_loss"] - b["bayes_entropy"]).dropna()
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(len(d)), (d.mean(), d.std())
    # every element of every sequence fits the sequence it planted
    for sid in ss.ids:
        codes = genome._CODE[np.frombuffer(ss.sequence(sid).encode(), np.uint8)].astype(np.int64)
        for e in oracle.elements(sid):
            assert np.isfinite(e.log_likelihood(codes[e.start : e.end])).any(), (sid, e.kind)


def test_planted_tandem_repeat_interior_is_certain(planted_bayes):
    "A token inside a tandem repeat is determined by the layout: the Bayes loss is 0 there."
    ss, tok, es, oracle, b = planted_bayes
    seen = 0
    for j, (s, t) in enumerate(zip(es.masked_seq, es.masked_token)):
        sid = ss.ids[s]
        _, st, en = tok.tokenize_with_spans(ss.sequence(sid))
        f = ss.features_of(sid)
        inside = f[(f["concept"] == "tandem_repeat") & (f["start"] <= st[t]) & (f["end"] >= en[t])]
        if len(inside):
            seen += 1
            assert b["bayes_loss"].iat[j] < 1e-9 and b["bayes_hit"].iat[j]
    assert seen > 5


def test_oracle_refuses_what_planted_did_not_make():
    s = SequenceSet.from_sequences({"a": "ACGT" * 10})
    with pytest.raises(ValueError, match="planted"):
        probe.PlantedOracle(s)


# -- CE by label --------------------------------------------------------------------------------------------
def test_ce_by_label_intervals_resample_sequences():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 20)
    seq_effect = rng.normal(0, 2, 30)[groups]  # tokens of one sequence share an offset: correlated
    labels = np.array(["x", "y"] * 300, dtype=object)
    bayes = rng.exponential(1.0, 600) + 3
    model = bayes + 1 + seq_effect
    t = probe.ce_by_label(labels, groups, {"model": model, "baseline": bayes + 4, "bayes": bayes}, n_boot=500)
    assert set(t.index) == {"all", "x", "y"} and t.loc["all", "n"] == 600 and t.loc["x", "n_sequences"] == 30
    assert np.isclose(t.loc["all", "model"], model.mean())
    assert np.isclose(t.loc["all", "gain_share"], (4 - (model - bayes).mean()) / 4)
    # a token bootstrap would give ~ sd/sqrt(600); the sequence bootstrap sees the shared offsets: ~ 2/sqrt(30)
    width = t.loc["all", "model_hi"] - t.loc["all", "model_lo"]
    assert width > 2 * 1.96 * 2 / np.sqrt(30) * 0.6
    # NaN tokens are dropped for every predictor alike
    m2 = model.copy()
    m2[:10] = np.nan
    t2 = probe.ce_by_label(labels, groups, {"model": m2, "bayes": bayes}, n_boot=50)
    assert t2.loc["all", "n"] == 590 and np.isclose(t2.loc["all", "bayes"], bayes[10:].mean())
    with pytest.raises(ValueError, match="one value per token"):
        probe.ce_by_label(labels[:5], groups, {"model": model})


# -- probes -------------------------------------------------------------------------------------------------
def test_token_identity_probe_matches_a_token_identity_concept():
    "A concept defined by token identity alone: the token-identity control reads it, a probe of noise does not."
    rng = np.random.default_rng(0)
    ids = rng.integers(6, 80, 5000)
    groups = np.repeat(np.arange(125), 40)
    labels = pd.DataFrame({"token_set": np.isin(ids, [10, 20, 30, 40, 50, 60])})
    data = probe.ProbeData({"noise": {0: rng.normal(size=(5000, 8))}}, labels, groups, ids, 100)
    t = probe.probe_table(data, min_positives=10).set_index("source")
    assert t.loc["token identity", "auroc"] > 0.99 and abs(t.loc["noise", "auroc"] - 0.5) < 0.08
    best = probe.best_layers(probe.probe_table(data, min_positives=10), "noise")
    assert best.loc["token_set", "margin"] < -0.3


def test_categorical_probe_reads_a_level_between_two_others():
    """Three exclusive levels (and a reference level) along one feature: one binary probe cannot cut a middle level
    from both sides, the multinomial probe can; `probe_table(categorical=...)` gives every level its own row and the
    token-identity control the same probe; overlapping levels are refused."""
    rng = np.random.default_rng(3)
    n = 4000
    level = np.digitize(rng.uniform(0, 4, n), [1.0, 2.0, 3.0])  # 0 = none, 1..3
    X = (level + 0.2 * rng.normal(size=n))[:, None]
    middle = level == 2
    assert probe.LinearProbe().fit(X[:3000], middle[:3000]).score(X[3000:], middle[3000:]) < 0.75
    auc = probe.CategoricalProbe().fit(X[:3000], level[:3000]).score(X[3000:], level[3000:])
    assert auc.shape == (3,) and (auc > 0.95).all()
    labels = pd.DataFrame({f"pos_{k}": level == k for k in (1, 2, 3)})
    data = probe.ProbeData({"m": {0: X}}, labels, np.repeat(np.arange(100), 40), rng.integers(6, 50, n), 64)
    t = probe.probe_table(data, min_positives=10, categorical={"position": list(labels)})
    assert set(t["concept"]) == set(labels) and (t["probe"] == "multinomial").all()
    assert (t[t["source"] == "m"]["auroc"] > 0.95).all() and (t[t["source"] == "token identity"]["auroc"] < 0.65).all()
    with pytest.raises(ValueError, match="overlap"):
        probe.probe_table(
            data.__class__({"m": {0: X}}, labels.assign(pos_1=True), data.groups, data.token_ids, 64),
            categorical={"position": list(labels)},
        )
    with pytest.raises(ValueError, match="unknown label columns"):
        probe.probe_table(data, categorical={"position": ["pos_9"]})


def test_probe_split_is_by_sequence():
    """Features that identify the sequence and a label constant within each sequence: a token-level split would
    leak (AUROC ~1); the sequence split makes the probe guess (AUROC ~0.5)."""
    rng = np.random.default_rng(2)
    n_seq, per = 80, 25
    groups = np.repeat(np.arange(n_seq), per)
    X = np.eye(n_seq)[groups] + 0.01 * rng.normal(size=(n_seq * per, n_seq))
    y = rng.random(n_seq)[groups] < 0.5
    data = probe.ProbeData({"m": {0: X}}, pd.DataFrame({"c": y}), groups, rng.integers(6, 50, n_seq * per), 64)
    tr, te = probe.split_by_sequence(groups, 0.3, seed=0)
    assert not set(groups[tr]) & set(groups[te])
    t = probe.probe_table(data, min_positives=10).set_index("source")
    assert abs(t.loc["m", "auroc"] - 0.5) < 0.2
    leak = np.random.default_rng(0).permutation(len(y))
    p = probe.LinearProbe().fit(X[leak[:1500]], y[leak[:1500]])
    assert p.score(X[leak[1500:]], y[leak[1500:]]) > 0.95  # what a token split would have reported


def test_probe_bad_inputs():
    with pytest.raises(ValueError, match="two sequences"):
        probe.split_by_sequence(np.zeros(10))
    with pytest.raises(ValueError, match="both classes"):
        probe.LinearProbe().fit(np.zeros((5, 2)), np.zeros(5, bool))
    with pytest.raises(ValueError, match="rows"):
        probe.ProbeData({"m": {0: np.zeros((3, 2))}}, pd.DataFrame({"c": [True, False]}), [0, 1], [6, 7], 10)
    with pytest.raises(ValueError, match="bool"):
        probe.ProbeData({}, pd.DataFrame({"c": [1, 0]}), [0, 1], [6, 7], 10)
    with pytest.raises(ValueError, match="token ids"):
        probe.token_identity_features([6, 99], [0, 0], 10)


def test_random_weight_model_is_the_same_architecture():
    from transformers import EsmForMaskedLM

    m = EsmForMaskedLM(embed.nt_config("tiny", max_tokens=32)).eval()
    r = probe.random_weight_model(m, seed=3)
    assert r.config.to_dict() == m.config.to_dict() and not r.training
    assert embed.model_fingerprint(r) != embed.model_fingerprint(m)
    assert embed.model_fingerprint(probe.random_weight_model(m, seed=3)) == embed.model_fingerprint(r)


def test_per_token_losses_add_up_to_the_reported_loss():
    "evaluate_mlm / kmer_frequency_baseline per-token losses: one per masked token, their mean is the loss."
    from transformers import EsmForMaskedLM

    tok = embed.NTTokenizer()
    seqs = genome.MarkovBackground.human_like().sample(6, 300, np.random.default_rng(0))
    es = embed.make_eval_set(tok, seqs, max_tokens=33, seed=0)
    torch.manual_seed(0)
    m = EsmForMaskedLM(embed.nt_config("tiny", max_tokens=32)).eval()
    ev = embed.evaluate_mlm(m, tok, es, return_predictions=True)
    assert len(ev["losses"]) == es.n_masked == len(es.masked_seq)
    assert np.isclose(ev["losses"].mean(), ev["loss"], rtol=1e-5)
    b = embed.kmer_frequency_baseline(tok, seqs[:3], es, return_losses=True)
    assert len(b["losses"]) == es.n_masked and np.isclose(b["losses"].mean(), b["loss"])
    assert "losses" not in embed.kmer_frequency_baseline(tok, seqs[:3], es)


def test_probe_data_labels_and_controls_line_up():
    "One row per token, the same order for every model; TF motifs merged; CDS tokens labelled by reading frame."
    from transformers import EsmForMaskedLM

    tok = embed.NTTokenizer()
    m = EsmForMaskedLM(embed.nt_config("tiny", max_tokens=128)).eval()
    models = {"trained": m, "random": probe.random_weight_model(m, seed=1)}
    ps = genome.planted(n_sequences=6, length_bp=300, seed=2)
    d = probe.probe_data(models, tok, ps, layers=[0, 2])
    n = sum(len(tok.tokenize_with_spans(q)[0]) for q in ps.sequences["sequence"])
    assert len(d.labels) == n and d.features["random"][2].shape == (n, 64) and "tf_motif" in d.labels
    assert not any(c.startswith("tf_") and c != "tf_motif" for c in d.labels)
    assert probe.probe_data(models, tok, ps, layers=[0], each_tf=True).labels.columns.str.startswith("tf_").sum() > 1
    pro = genome.prokaryote("NCTC11397_100kb").chunk(600)
    g = probe.probe_data({"trained": m}, tok, pro.subset(pro.ids[:4]), layers=[1])
    frames = g.labels[["cds_frame_1", "cds_frame_2", "cds_frame_3"]]
    assert not any(c.startswith("codon_pos") for c in g.labels) and frames.any(axis=None)
    assert (frames.sum(axis=1) <= 1).all() and (g.labels["cds"] | ~frames.any(axis=1)).all()
    with pytest.raises(ValueError, match="no models"):
        probe.probe_data({}, tok, ps)


# -- the sequence scanners (a reference for the probes) ---------------------------------------------------------
def _motif_only_corpus(n: int, seed: int) -> SequenceSet:
    "A planted corpus with only TF motifs in the background chain: the scanner's model of the generator."
    return genome.planted(
        n_sequences=n,
        length_bp=600,
        motifs_per_seq=8.0,
        p_gene=0.0,
        p_cpg_island=0.0,
        p_polya=0.0,
        repeats_per_seq=0.0,
        tandem_per_seq=0.0,
        set_fractions=(("control", 1.0),),
        seed=seed,
    )


def test_motif_scanner_is_calibrated_on_the_generator():
    """Where the corpus is what the scanner models (TF motifs in the background chain), its token posteriors are
    calibrated: the mean posterior matches the share of tokens on a motif, overall and within posterior bins."""
    ss = _motif_only_corpus(300, seed=11)
    tok = embed.NTTokenizer()
    oracle = probe.PlantedOracle(ss)
    post, on = [], []
    for sid in ss.ids:
        seq = ss.sequence(sid)
        _, s, e = tok.tokenize_with_spans(seq)
        codes = genome._CODE[np.frombuffer(seq.encode(), np.uint8)].astype(np.int64)
        sites = probe.planted_site_models(oracle, len(seq))["tf_motif"]
        post.append(probe.token_site_posterior(codes, s, e, sites, oracle.background))
        tf = [c for c in ss.concepts if c.startswith("tf_")]
        on.append(embed.token_annotations(ss, sid, s, e, tf).any(1))
    post, on = np.concatenate(post), np.concatenate(on)
    assert abs(post.mean() - on.mean()) < 0.05 * on.mean(), (post.mean(), on.mean())
    for lo, hi in [(0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.0)]:
        k = (post >= lo) & (post < hi + (hi == 1.0))
        assert k.sum() > 200 and abs(on[k].mean() - post[k].mean()) < 0.06, (lo, hi, on[k].mean(), post[k].mean())


def test_scanner_scores_follow_the_probe_rows_and_split():
    """`scanner_scores` lines up with `ProbeData`'s rows (sequence order, token order) and refuses a mismatch;
    `reference_auroc` scores the probes' test sequences: a shuffled score gives ~0.5, the scanner far more."""
    ss = genome.planted(n_sequences=80, length_bp=600, motifs_per_seq=8.0, seed=4)
    tok = embed.NTTokenizer()
    groups = np.concatenate([[sid] * len(tok.tokenize_with_spans(ss.sequence(sid))[1]) for sid in ss.ids])
    labels = pd.concat(
        [
            pd.DataFrame(
                embed.token_annotations(ss, sid, *tok.tokenize_with_spans(ss.sequence(sid))[1:], ss.concepts),
                columns=ss.concepts,
            )
            for sid in ss.ids
        ],
        ignore_index=True,
    )
    labels.insert(0, "tf_motif", labels[[c for c in labels if c.startswith("tf_")]].any(axis=1))
    scores = probe.scanner_scores(probe.PlantedOracle(ss), tok, groups)
    assert len(scores) == len(labels) and {"tf_motif", "polya_signal", "splice_donor", "g4"} <= set(scores)
    ref = probe.reference_auroc(scores, labels, groups, seed=1)
    shuffled = probe.reference_auroc(scores.sample(frac=1, random_state=0).reset_index(drop=True), labels, groups)
    assert ref["tf_motif"] > 0.85 and ref["g4"] > 0.95 and abs(shuffled["tf_motif"] - 0.5) < 0.08
    with pytest.raises(ValueError, match="tokens"):
        probe.scanner_scores(probe.PlantedOracle(ss), tok, groups[1:])
