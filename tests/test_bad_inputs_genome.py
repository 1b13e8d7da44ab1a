"""Issue 12, rows 13-17 and 19: bad inputs to the genome sources and the hidden-state store fail in one clear
line (naming the file) and change no user file; threads follow the machine's load."""

import builtins
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xai_hsg import core, embed, genome
from xai_hsg.genome import SequenceSet, bed_fasta, gc_fraction, read_fasta, reverse_complement


def snapshot(folder: Path) -> dict[str, str]:
    "Every file under `folder` (hidden ones included) with its sha256: equal snapshots = nothing changed."
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def index_cache(tmp_path, monkeypatch):
    "FASTA indexes go to a folder of this test, not the repository's cache."
    folder = tmp_path / "cache"
    monkeypatch.setattr(genome, "_index_folder", lambda: folder)
    return folder


def _write_genome(folder: Path, text: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chrom = "".join(rng.choice(list("ACGT"), 600))
    fa = folder / "g.fa"
    fa.write_text(text or (">chr1 first\n" + "\n".join(chrom[i : i + 60] for i in range(0, 600, 60)) + "\n"))
    return fa


# -- row 13: duplicate FASTA ids ------------------------------------------------------------------------------
DUP_FASTA = ">chr1 a\nACGT\nACGT\n>chr2\nAC\n>chr1 again\nGGGG\n"


@pytest.mark.parametrize("gz", [False, True])
def test_read_fasta_refuses_duplicate_ids(tmp_path, gz):
    fa = tmp_path / ("d.fa.gz" if gz else "d.fa")
    fa.write_bytes(gzip.compress(DUP_FASTA.encode()) if gz else DUP_FASTA.encode())
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"{fa.name}: duplicate FASTA id 'chr1' at lines 1 and 6") as e:
        read_fasta(fa)
    assert str(fa) in str(e.value)
    assert snapshot(tmp_path) == before


def test_bed_fasta_refuses_duplicate_ids_before_pyfaidx(tmp_path, index_cache):
    data = tmp_path / "data"
    fa = _write_genome(data, DUP_FASTA)
    (data / "w.bed").write_text("chr1\t0\t4\tsite\n")
    before = snapshot(data)
    with pytest.raises(ValueError, match=r"duplicate FASTA id 'chr1' at lines 1 and 6") as e:
        bed_fasta(data / "w.bed", fa)
    assert str(fa) in str(e.value) and "Duplicate key" not in str(e.value)  # ours, not pyfaidx's
    assert snapshot(data) == before
    assert not list(index_cache.glob("*.fai"))  # no index of a refused file


# -- row 14: validation of the sequence helpers ---------------------------------------------------------------
def test_gc_fraction_and_reverse_complement_validate_and_keep_soft_masking():
    assert gc_fraction("gggccc") == 1.0 and gc_fraction("GGgcAT") == pytest.approx(4 / 6)
    assert gc_fraction("ACNN") == 0.5 and np.isnan(gc_fraction("NNN"))
    assert reverse_complement("AACGN") == "NCGTT" and reverse_complement("acgT") == "Acgt"  # case kept
    assert reverse_complement("") == ""
    for f in (reverse_complement, gc_fraction):
        with pytest.raises(ValueError, match=r"sequence: invalid character 'X' at position 4"):
            f("ACGTX")
        with pytest.raises(ValueError, match=r"w1: invalid character 'u' at position 1"):
            f("au", "w1")
        with pytest.raises(TypeError, match="must be a str"):
            f(b"ACGT")


# -- row 15: the FASTA's folder is only read -------------------------------------------------------------------
def test_bed_fasta_writes_nothing_beside_the_fasta(tmp_path, index_cache):
    data = tmp_path / "data"
    fa = _write_genome(data)
    (data / "g.fa.fai").write_text("a stale index the user keeps\n")  # must neither be used nor rewritten
    (data / "w.bed").write_text("chr1\t10\t70\tsite\t0\t-\n")
    before = snapshot(data)
    ss = bed_fasta(data / "w.bed", fa)
    chrom = "".join(fa.read_text().split("\n")[1:])
    assert ss.sequence("site") == reverse_complement(chrom[10:70])
    assert snapshot(data) == before
    assert len(list(index_cache.glob("g.fa.*.fai"))) == 1 and not list(index_cache.glob(".build-*"))
    # an edited FASTA gets a new index (key: path, size, mtime), the old one is not reused
    fa.write_text(">chr1\n" + "T" * 100 + "\n")
    (data / "w.bed").write_text("chr1\t10\t20\tsite\n")
    before = snapshot(data)
    assert bed_fasta(data / "w.bed", fa).sequence("site") == "T" * 10
    assert snapshot(data) == before and len(list(index_cache.glob("g.fa.*.fai"))) == 2


def test_bed_fasta_works_in_a_read_only_folder(tmp_path, index_cache, monkeypatch):
    data = tmp_path / "ro"
    fa = _write_genome(data)
    (data / "w.bed").write_text("chr1\t0\t60\tsite\n")
    before = snapshot(data)
    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):  # root ignores chmod: refuse writes here explicitly too
        if any(c in mode for c in "wax+") and Path(file).resolve().parent == data.resolve():
            raise PermissionError(f"read-only folder: {file}")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    data.chmod(0o555)
    try:
        ss = bed_fasta(data / "w.bed", fa)
    finally:
        data.chmod(0o755)
    assert ss.sequence("site") == "".join(fa.read_text().split("\n")[1:])[:60]
    assert snapshot(data) == before


# -- row 16: only duplicated BED names get a suffix --------------------------------------------------------------
def test_only_duplicated_bed_names_get_a_suffix(tmp_path, index_cache):
    data = tmp_path / "data"
    fa = _write_genome(data)
    (data / "w.bed").write_text("chr1\t0\t10\ta\nchr1\t10\t20\tb\nchr1\t20\t30\ta\nchr1\t30\t40\n")
    before = snapshot(data)
    ss = bed_fasta(data / "w.bed", fa)
    assert ss.ids == ["a#0", "b", "a#1", "chr1:30-40(.)"]
    assert snapshot(data) == before
    (tmp_path / "clash.bed").write_text("chr1\t0\t10\ta\nchr1\t10\t20\ta\nchr1\t20\t30\ta#1\n")
    with pytest.raises(ValueError, match=r"clash with the '#k' suffixes.*clash.bed:"):
        bed_fasta(tmp_path / "clash.bed", fa)


# -- row 17: checksummed hidden-state store ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from transformers import EsmForMaskedLM

    torch.manual_seed(0)
    return EsmForMaskedLM(embed.nt_config("tiny", max_tokens=64)).eval(), embed.NTTokenizer()


def _seqs(n: int = 12) -> SequenceSet:
    rng = np.random.default_rng(1)
    return SequenceSet.from_sequences({f"s{i}": "".join(rng.choice(list("ACGT"), 60 + 12 * i)) for i in range(n)})


KW = dict(layers=[1, 2], shard_tokens=40, store_dtype="float32", progress=False, num_threads=1)


def test_corrupted_shard_is_named_on_load_and_recomputed_on_resume(tiny_model, tmp_path):
    model, tok = tiny_model
    store = embed.extract_hidden_states(model, tok, _seqs(), tmp_path / "s", **KW)
    assert len(store.manifest["shards"]) >= 3 and all(len(s["sha256"]) == 64 for s in store.manifest["shards"])
    ref = store.load_layer(2)
    bad = store.shard_files()[1]
    raw = bytearray(bad.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte in the tensor data: the file still parses, the numbers are wrong
    bad.write_bytes(bytes(raw))
    before = snapshot(tmp_path / "s")
    fresh = embed.HiddenStateStore.open(tmp_path / "s")
    with pytest.raises(ValueError, match=rf"{bad.name}: corrupted hidden-state shard: sha256") as e:
        fresh.load_layer(2)
    assert str(bad) in str(e.value)
    with pytest.raises(ValueError, match=bad.name):
        list(fresh.iter_shards(1))
    assert fresh.load_layer(1, [0]).shape[0] == fresh.manifest["shards"][0]["n_tokens"]  # the others still load
    assert len(fresh.verify()) == 1 and bad.name in fresh.verify()[0]
    assert snapshot(tmp_path / "s") == before  # reading changed nothing
    with pytest.warns(UserWarning, match=rf"{bad.name}: corrupted.*recomputing shard 1"):
        again = embed.extract_hidden_states(model, tok, _seqs(), tmp_path / "s", **KW)
    assert again.verify() == [] and torch.equal(again.load_layer(2), ref)
    # a damaged header (truncated file): still one line naming the file, not a bare SafetensorError
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(ValueError, match=rf"{bad.name}: corrupted"):
        embed.HiddenStateStore.open(tmp_path / "s").load_layer(2)


def test_corrupted_token_table_is_named(tiny_model, tmp_path):
    model, tok = tiny_model
    store = embed.extract_hidden_states(model, tok, _seqs(4), tmp_path / "s", **KW)
    f = tmp_path / "s" / "tokens.parquet"
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(ValueError, match=r"tokens.parquet: corrupted token table"):
        embed.HiddenStateStore.open(store.path).tokens()


class Interrupt(Exception):
    pass


def test_partial_store_reports_written_tokens(tiny_model, tmp_path):
    model, tok = tiny_model

    def stop(k):
        if k == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        embed.extract_hidden_states(model, tok, _seqs(), tmp_path / "p", on_shard_done=stop, **KW)
    part = embed.HiddenStateStore.open(tmp_path / "p")
    sh = part.manifest["shards"]
    assert not part.complete and len(sh) >= 3
    assert part.n_tokens == sh[0]["n_tokens"] + sh[1]["n_tokens"] < part.n_tokens_planned
    assert f"{part.n_tokens:,} of {part.n_tokens_planned:,} tokens" in repr(part)
    assert part.load_layer(2, [0, 1]).shape[0] == part.n_tokens
    with pytest.raises(FileNotFoundError, match=r"shard-00002.safetensors: shard 2 of \d+ was not written"):
        part.load_layer(2)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        part.tokens()
    done = []
    full = embed.extract_hidden_states(model, tok, _seqs(), tmp_path / "p", on_shard_done=done.append, **KW)
    assert done == list(range(2, len(sh))) and full.n_tokens == full.n_tokens_planned == len(full.tokens())


def test_damaged_manifest_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON"):
        embed.HiddenStateStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "shards": []}))
    with pytest.raises(ValueError, match=r"store version 1 \(this code reads 2\)"):
        embed.HiddenStateStore.open(tmp_path)


# -- row 19: threads by load, passive OpenMP waiting -----------------------------------------------------------
@pytest.mark.parametrize(
    "cores, load, cap, want",
    [(2, 0.3, 2, 2), (2, 1.5, 2, 1), (2, 0.3, None, 2), (16, 1.3, None, 15), (16, 0.0, 2, 2), (16, 15.2, None, 1)]
    + [(1, 0.0, 2, 1), (1, 0.5, None, 1), (8, 3.0, None, 6)],
)
def test_default_threads_follow_the_load(monkeypatch, cores, load, cap, want):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert core.default_threads(cap) == want


def test_pretraining_uses_threads_chosen_by_load(monkeypatch):
    monkeypatch.setattr(core, "default_threads", lambda cap=2: 1)
    before = torch.get_num_threads()
    seqs = ["".join(np.random.default_rng(i).choice(list("ACGT"), 200)) for i in range(3)]
    res = embed.pretrain_mlm(seqs, config="tiny", steps=2, batch_size=2, max_tokens=21, progress=False, device="cpu")
    assert res.metrics["cpu_threads"] == 1 and torch.get_num_threads() == before  # restored afterwards


def test_omp_wait_policy_is_passive_unless_the_user_chose():
    code = "import sys, os; import xai_hsg.embed; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "True"]
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True
    )
    assert out.stdout.split() == ["ACTIVE", "True"]
