"NT tokenizer exactness, model loading, hidden-state capture, and the resumable hidden-state store."

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xai_hsg import embed
from xai_hsg.embed import NTTokenizer
from xai_hsg.genome import SequenceSet

torch.set_num_threads(1)
dna = st.text(alphabet="ACGTN", min_size=1, max_size=120)
dna_mostly_acgt = st.lists(st.sampled_from("AAAACCCCGGGGTTTTN"), min_size=1, max_size=300).map("".join)


# -- tokenizer ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return NTTokenizer()


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    "A transformers EsmTokenizer built from the same vocabulary file, configured as NT's (no <eos>)."
    from transformers import EsmTokenizer

    vocab = tok.save_vocabulary(tmp_path_factory.mktemp("vocab"))
    return EsmTokenizer(
        str(vocab), unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", cls_token="<cls>", eos_token=None
    )


def test_vocabulary_layout(tok):
    v = embed.NT_VOCAB
    assert len(v) == 4107 and v[:6] == ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
    assert v[6:10] == ["AAAAAA", "AAAAAT", "AAAAAC", "AAAAAG"] and v[4101] == "GGGGGG" and v[-5:] == list("ATCGN")
    assert (tok.pad_id, tok.mask_id, tok.cls_id) == (1, 2, 3)


@settings(max_examples=300, deadline=None)
@given(seq=st.one_of(dna, dna_mostly_acgt))
def test_tokenizer_matches_esm_tokenizer(tok, hf_tok, seq):
    assert tok.encode(seq).tolist() == hf_tok(seq)["input_ids"]


@settings(max_examples=200, deadline=None)
@given(seq=st.one_of(dna, dna_mostly_acgt))
def test_span_map(tok, seq):
    ids, s, e = tok.tokenize_with_spans(seq)
    assert s[0] == 0 and e[-1] == len(seq) and (s[1:] == e[:-1]).all()  # contiguous, covering, in order
    for i, a, b in zip(ids, s, e):
        assert tok.vocab[i] == seq[a:b]
        assert b - a in (1, 6) and (b - a == 6 or i in tok.single_ids)
    assert tok.decode(tok.encode(seq)) == seq
    # single-nucleotide fallback only for N and the tail (< 6 bases) of each N-free stretch
    for stretch_start, stretch in _stretches(seq):
        singles = [(a, b) for a, b in zip(s, e) if b - a == 1 and stretch_start <= a < stretch_start + len(stretch)]
        assert len(singles) == len(stretch) % 6


def _stretches(seq):
    i = 0
    for part in seq.split("N"):
        if part:
            yield i, part
        i += len(part) + 1


def test_tokenizer_examples_and_bad_input(tok):
    assert tok.tokenize("ATGCATGCA") == ["ATGCAT", "G", "C", "A"]
    assert tok.tokenize("ANCATGCATGCAAA") == ["A", "N", "CATGCA", "TGCAAA"]
    assert tok.tokenize("acgtac") == ["ACGTAC"]  # soft-masked input is upper-cased
    with pytest.raises(ValueError, match="empty"):
        tok.encode("")
    with pytest.raises(ValueError, match="invalid character 'U' at position 2"):
        tok.encode("ACUG")
    with pytest.raises(ValueError, match="not a Nucleotide Transformer"):
        NTTokenizer(["<unk>", "A"])


def test_tokenizer_round_trips_through_hf_files(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.to_hf(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf("ACGTACGTN")["input_ids"] == tok.encode("ACGTACGTN").tolist()
    assert (
        NTTokenizer.from_hf(hf).vocab == tok.vocab and NTTokenizer.from_file(tmp_path / "vocab.txt").vocab == tok.vocab
    )


# -- models -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import EsmForMaskedLM

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny") / "model"
    embed.save_genomic_lm(
        EsmForMaskedLM(embed.nt_config("tiny", max_tokens=256)), NTTokenizer(), d
    )  # random weights: plumbing only
    return d


def test_load_genomic_lm_local_folder(tiny_dir, tok):
    model, t = embed.load_genomic_lm(tiny_dir, device="cpu")
    assert t.vocab == tok.vocab and not model.training and model.config.num_hidden_layers == 2
    assert (tiny_dir / "model.safetensors").exists() and embed.max_model_tokens(model) == 256
    again, _ = embed.load_genomic_lm(str(tiny_dir), device="cpu")
    ids = torch.as_tensor(tok.encode("ACGTACGTTTGACCAN"))[None]
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, again(ids).logits)
    with pytest.raises(FileNotFoundError):
        embed.load_genomic_lm(tiny_dir.parent / "nope", device="cpu")


@pytest.mark.parametrize("pos", ["rotary", "absolute"])
def test_hook_capture_equals_output_hidden_states(tok, pos):
    from transformers import EsmForMaskedLM

    torch.manual_seed(1)
    m = EsmForMaskedLM(embed.nt_config("tiny", max_tokens=64, position_embedding_type=pos, num_hidden_layers=3)).eval()
    ids, att = embed._pad_batch(
        [tok.encode(q, add_cls=False) for q in ["ACGTACGTTTGACCA", "ACGNNACGTAGGGTTTACCAGG", "A"]],
        tok.cls_id,
        tok.pad_id,
    )
    with torch.inference_mode():
        ref = m.esm(input_ids=ids, attention_mask=att, output_hidden_states=True).hidden_states
        for layers in ([0, 1, 2, 3], [1], [2, 0]):
            got = embed.forward_hidden_states(m, ids, att, layers)
            assert sorted(got) == sorted(layers)
            for i in layers:
                assert torch.allclose(got[i], ref[i], atol=1e-5)
    with pytest.raises(ValueError):
        embed.forward_hidden_states(m, ids, att, [4])


def test_masking_never_touches_special_tokens(tok):
    ids, att = embed._pad_batch(
        [tok.encode("ACGT" * 60, add_cls=False)] * 8 + [tok.encode("ACG", add_cls=False)], tok.cls_id, tok.pad_id
    )
    g = torch.Generator().manual_seed(0)
    inputs, labels = embed.mask_tokens(ids, tok, g, 0.15)
    special = torch.isin(ids, torch.as_tensor(tok.special_ids))
    assert (labels[special] == -100).all() and (inputs[special] == ids[special]).all()
    frac = (labels != -100).sum() / (~special).sum()
    assert 0.1 < frac < 0.2


def test_pretrain_mlm_runs_and_reports(tok):
    "A corpus of three repeated 24-bp units: few distinct 6-mers, so the masked-token loss must fall fast."
    units = ["".join(np.random.default_rng(100 + k).choice(list("ACGT"), 24)) for k in range(3)]
    seqs = [units[i % 3] * 12 for i in range(12)]
    es = embed.make_eval_set(tok, seqs[10:], max_tokens=33, seed=1)  # the held-out masks pretrain_mlm draws
    groups = np.where(es.masked_seq == 0, "first", "second")
    with pytest.raises(ValueError, match="eval_groups has 1 labels"):
        embed.pretrain_mlm(seqs[:10], seqs[10:], config="tiny", steps=1, max_tokens=33, eval_groups=["x"])
    res = embed.pretrain_mlm(
        seqs[:10],
        seqs[10:],
        config="tiny",
        steps=20,
        batch_size=8,
        max_tokens=33,
        eval_every=10,
        lr=3e-3,
        device="cpu",
        progress=False,
        seed=0,
        eval_groups=groups,
    )
    h = res.history
    assert set(h["split"]) == {"train", "heldout"} and h["step"].max() == 20
    assert {"heldout", "kmer_baseline"} <= set(res.metrics) and res.metrics["heldout"]["n_masked"] > 0
    assert not res.model.training
    train = h[h["split"] == "train"]["loss"].to_numpy()
    assert train[-5:].mean() < train[:5].mean() - 1.0, train  # the loss drops
    held = h[h["split"] == "heldout"]["loss"].to_numpy()
    assert held[-1] < held[0] - 1.0, held
    assert (np.diff(h["tokens_seen"].to_numpy()) >= 0).all() and res.metrics["tokens_seen"] == h["tokens_seen"].max()
    # per-group curves: each group's loss is the mean over its own masked tokens, and they recombine to the total
    last = h[h["split"] == "heldout"].iloc[-1]
    n = {g: int((groups == g).sum()) for g in ("first", "second")}
    total = (last["loss:first"] * n["first"] + last["loss:second"] * n["second"]) / sum(n.values())
    assert np.isclose(total, last["loss"], rtol=1e-5) and 0 <= last["accuracy:first"] <= 1


def test_nucleotide_embedding_init_writes_each_kmers_bases(tok):
    "The first 24 dimensions of every 6-mer decode back to its bases; nothing else moves; the output layer follows."
    from transformers import EsmForMaskedLM

    torch.manual_seed(0)
    plain = EsmForMaskedLM(embed.nt_config("tiny")).get_input_embeddings().weight.detach().clone()
    torch.manual_seed(0)
    model = embed.nucleotide_embedding_init(EsmForMaskedLM(embed.nt_config("tiny")), tok, scale=0.2)
    emb = model.get_input_embeddings().weight.detach()
    block = emb[tok.kmer_ids, :24].reshape(-1, 6, 4)
    decoded = ["".join("ATCG"[b] for b in row) for row in block.argmax(-1).tolist()]
    assert decoded == [tok.vocab[i] for i in tok.kmer_ids]
    assert torch.allclose(block.sum(-1), torch.zeros(())) and np.isclose(float(block.max()), 0.15)  # centred, scaled
    assert torch.equal(emb[:, 24:], plain[:, 24:])  # the other dimensions keep their random start
    others = np.setdiff1d(np.arange(len(tok)), tok.kmer_ids)  # special tokens and single bases
    assert torch.equal(emb[others], plain[others])
    assert torch.equal(model.get_output_embeddings().weight.detach(), emb)  # tied
    with pytest.raises(ValueError, match="hidden size >= 24"):
        embed.nucleotide_embedding_init(EsmForMaskedLM(embed.nt_config("tiny", hidden_size=16)), tok)
    with pytest.raises(ValueError, match="embedding_init must be"):
        embed.pretrain_mlm(["ACGT" * 30], config="tiny", steps=1, embedding_init="zeros")


# -- hidden-state store -------------------------------------------------------------------------------------
def _seqset(n=14, seed=0):
    rng = np.random.default_rng(seed)
    seqs = {
        f"s{i:02d}": "".join(rng.choice(list("ACGTN"), p=[0.24] * 4 + [0.04], size=int(rng.integers(7, 240))))
        for i in range(n)
    }
    feats = pd.DataFrame({"seq_id": list(seqs), "start": [1] * n, "end": [5] * n, "concept": ["site"] * n})
    return SequenceSet.from_sequences(seqs, set_label=["a", "b"] * (n // 2), features=feats)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return embed.load_genomic_lm(tiny_dir, device="cpu")


def _read_store(path):
    st_ = embed.HiddenStateStore.open(path)
    return st_, {l: st_.load_layer(l) for l in st_.layers}, st_.tokens()


def test_store_matches_unbatched_forward_and_token_table(tiny, tmp_path):
    model, tok = tiny
    ss = _seqset()
    store = embed.extract_hidden_states(
        model,
        tok,
        ss,
        tmp_path / "s",
        layers=[0, 1, 2],
        max_batch_tokens=200,
        shard_tokens=120,
        store_dtype="float32",
        progress=False,
    )
    st_, layers, tokens = _read_store(tmp_path / "s")
    assert store.path == st_.path and store.n_tokens == st_.n_tokens  # the returned store is the one on disk
    assert st_.complete and len(st_.manifest["shards"]) > 2 and len(tokens) == st_.n_tokens == layers[0].shape[0]
    assert "input of block i" in st_.manifest["layer_convention"]
    for sid in ss.ids:  # bucketing + padding + masking change nothing
        ids = torch.as_tensor(tok.encode(ss.sequence(sid)))[None]
        with torch.inference_mode():
            ref = model.esm(input_ids=ids, output_hidden_states=True).hidden_states
        rows = np.flatnonzero((tokens.seq_id == sid).to_numpy())
        t = tokens.loc[rows]
        assert (t.token_index.to_numpy() == np.arange(len(t))).all()
        assert "".join(t.token) == ss.sequence(sid)
        assert all(ss.sequence(sid)[a:b] == x for a, b, x in zip(t.start, t.end, t.token))
        assert (t.ann_site.to_numpy() == ((t.start.to_numpy() < 5) & (t.end.to_numpy() > 1))).all()
        for l in [0, 1, 2]:
            assert torch.allclose(layers[l][rows], ref[l][0, 1:], atol=1e-4)
    assert set(tokens.set_label) == {"a", "b"} and tokens.primary.all()


def test_store_errors(tiny, tmp_path):
    model, tok = tiny
    long = SequenceSet.from_sequences({"long": "ACGTAC" * 300})
    with pytest.raises(ValueError, match="chunk"):
        embed.extract_hidden_states(model, tok, long, tmp_path / "x", progress=False)
    ok = long.chunk(6 * 200, 60)  # chunked: fits, and every token has one owner window
    st_ = embed.extract_hidden_states(model, tok, ok, tmp_path / "x", layers=[2], progress=False)
    tokens = st_.tokens()
    prim = tokens[tokens.primary]
    assert sorted((prim.parent_start + prim.start).tolist()) == list(range(0, 1800, 6))
    with pytest.raises(ValueError, match="other inputs"):
        embed.extract_hidden_states(model, tok, _seqset(), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="layers"):
        embed.extract_hidden_states(model, tok, _seqset(), tmp_path / "y", layers=[7], progress=False)


class Interrupt(Exception):
    pass


def test_kill_and_resume_gives_the_same_store(tiny, tmp_path):
    model, tok = tiny
    ss = _seqset(n=20, seed=3)
    kw = dict(layers=[1, 2], max_batch_tokens=256, shard_tokens=120, progress=False)
    ref = embed.extract_hidden_states(model, tok, ss, tmp_path / "ref", **kw)
    n_shards = len(ref.manifest["shards"])
    assert n_shards >= 5

    def boom(k):
        if k == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        embed.extract_hidden_states(model, tok, ss, tmp_path / "run", on_shard_done=boom, **kw)
    sdir = tmp_path / "run" / "shards"
    assert len(list(sdir.glob("shard-*.safetensors"))) == 3 and not list(
        sdir.glob(".*")
    )  # 3 committed, nothing half-written
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["status"] == "in_progress" and not (tmp_path / "run" / "tokens.parquet").exists()
    # leftovers of a kill in the middle of a write: a temp file and a token part whose tensor file never landed
    (sdir / ".shard-00003.safetensors.tmp-999").write_bytes(b"garbage")
    (sdir / "tokens-00004.parquet").write_bytes(b"garbage")
    done = []
    res = embed.extract_hidden_states(model, tok, ss, tmp_path / "run", on_shard_done=done.append, **kw)
    assert done == list(range(3, n_shards))  # completed shards are skipped
    _assert_same_store(tmp_path / "ref", tmp_path / "run")
    assert res.complete and not list(sdir.glob(".*"))
    # a finished store is reused as it is
    again = []
    embed.extract_hidden_states(model, tok, ss, tmp_path / "run", on_shard_done=again.append, **kw)
    assert again == []


def _assert_same_store(a, b):
    sa, la, ta = _read_store(a)
    sb, lb, tb = _read_store(b)
    assert sa.manifest["fingerprint"] == sb.manifest["fingerprint"] and sb.complete
    assert sorted(p.name for p in (a / "shards").iterdir()) == sorted(p.name for p in (b / "shards").iterdir())
    pd.testing.assert_frame_equal(ta, tb)
    assert not ta.duplicated(["seq_id", "token_index"]).any()
    for l in la:
        assert torch.equal(la[l], lb[l])


@pytest.mark.slow
def test_sigkill_midway_then_resume(tiny_dir, tmp_path):
    "A real process killed with SIGKILL after its second shard; the re-run completes the same store."
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_embed import _seqset
        from xai_hsg import embed
        model, tok = embed.load_genomic_lm({str(tiny_dir)!r}, device="cpu")
        def kill(k):
            if k == 1 and sys.argv[1] == "kill": os.kill(os.getpid(), signal.SIGKILL)
        embed.extract_hidden_states(model, tok, _seqset(n=16, seed=5), sys.argv[2], layers=[2], shard_tokens=150,
                                    progress=False, on_shard_done=kill)
    """)
    (tmp_path / "job.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    killed = subprocess.run(
        [sys.executable, str(tmp_path / "job.py"), "kill", str(tmp_path / "run")], env=env, capture_output=True
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert len(list((tmp_path / "run" / "shards").glob("shard-*.safetensors"))) == 2
    model, tok = embed.load_genomic_lm(tiny_dir, device="cpu")
    embed.extract_hidden_states(
        model, tok, _seqset(n=16, seed=5), tmp_path / "run", layers=[2], shard_tokens=150, progress=False
    )
    embed.extract_hidden_states(
        model, tok, _seqset(n=16, seed=5), tmp_path / "ref", layers=[2], shard_tokens=150, progress=False
    )
    _assert_same_store(tmp_path / "ref", tmp_path / "run")
