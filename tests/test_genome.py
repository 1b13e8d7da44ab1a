"Sequence sources: validation, chunking, planted ground truth, Prodigal annotation, BED + FASTA + GTF."

import gzip

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xai_hsg import genome
from xai_hsg.genome import SequenceSet, reverse_complement, validate_sequence


# -- validation ---------------------------------------------------------------------------------------------
def test_validate_sequence_uppercases_and_rejects_bad_input():
    assert validate_sequence("acgtn") == "ACGTN"
    with pytest.raises(ValueError, match="empty"):
        validate_sequence("", "s1")
    with pytest.raises(ValueError, match=r"s1: invalid character 'U' at position 3"):
        validate_sequence("ACGUA", "s1")
    with pytest.raises(ValueError, match="'R' at position 1"):
        validate_sequence("ARGT")  # IUPAC codes are not DNA here
    with pytest.raises(ValueError, match="position 2"):
        validate_sequence("AC\u00e9GT")  # non-ASCII keeps positions
    with pytest.raises(TypeError):
        validate_sequence(b"ACGT")


def test_sequence_set_rejects_bad_tables():
    with pytest.raises(ValueError, match="duplicated seq_id"):
        SequenceSet(pd.DataFrame({"seq_id": ["a", "a"], "sequence": ["AC", "GT"], "set_label": ["x", "x"]}))
    with pytest.raises(ValueError, match="sequence 'b'.*empty"):
        SequenceSet.from_sequences({"a": "ACGT", "b": ""})
    with pytest.raises(ValueError, match="outside the sequence"):
        SequenceSet.from_sequences(
            {"a": "ACGT"}, features=pd.DataFrame({"seq_id": ["a"], "start": [2], "end": [9], "concept": ["x"]})
        )
    with pytest.raises(ValueError, match="unknown sequences"):
        SequenceSet.from_sequences(
            {"a": "ACGT"}, features=pd.DataFrame({"seq_id": ["z"], "start": [0], "end": [1], "concept": ["x"]})
        )


# -- chunking -----------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    L=st.integers(1, 400),
    max_bp=st.integers(25, 150),
    overlap_frac=st.floats(0, 0.9),
    cds=st.tuples(st.integers(0, 399), st.integers(1, 200)),
    strand=st.sampled_from("+-"),
)
def test_chunk_covers_each_base_once_and_keeps_annotations(L, max_bp, overlap_frac, cds, strand):
    overlap = min(int(overlap_frac * max_bp), max_bp - 1)
    seq = "".join(np.random.default_rng(L).choice(list("ACGTN"), L))
    a = min(cds[0], L - 1)
    b = min(L, a + cds[1])
    origin = a if strand == "+" else b - 1
    ss = SequenceSet.from_sequences(
        {"s": seq},
        features=pd.DataFrame(
            {
                "seq_id": ["s"],
                "start": [a],
                "end": [b],
                "concept": ["cds"],
                "strand": [strand],
                "frame_origin": [origin],
            }
        ),
    )
    full = ss.tracks("s")
    ch = ss.chunk(max_bp, overlap)
    owned = np.zeros(L, int)
    for r in ch.sequences.itertuples():
        assert len(r.sequence) <= max_bp and r.parent_id == "s"
        assert r.sequence == seq[r.parent_start : r.parent_start + len(r.sequence)]  # no truncation, no shift
        owned[r.parent_start + r.core_start : r.parent_start + r.core_end] += 1
        t = ch.tracks(r.seq_id)
        for c in ["cds", "codon_pos_1", "codon_pos_2", "codon_pos_3"]:  # annotations and codon phase survive
            assert (t[c] == full[c][r.parent_start : r.parent_start + len(r.sequence)]).all()
    assert (owned == 1).all()


def test_chunk_rejects_bad_arguments():
    ss = SequenceSet.from_sequences(["ACGT" * 10])
    with pytest.raises(ValueError, match="overlap_bp"):
        ss.chunk(10, 10)
    with pytest.raises(ValueError, match="max_bp"):
        ss.chunk(0)


def test_split_and_persistence(tmp_path):
    ss = genome.planted(n_sequences=20, length_bp=300, seed=3, motifs_per_seq=1.0)
    tr, ho = ss.split(0.25, seed=0)
    assert set(tr.ids).isdisjoint(ho.ids) and len(tr) + len(ho) == len(ss)
    assert set(ho.labels) == {"g4_rich", "control"}
    win = SequenceSet.from_sequences({"genome": "ACGT" * 250}).chunk(100)  # one parent: split window by window
    wtr, who = win.split(0.2, seed=0)
    assert len(who) == 2 and set(wtr.ids).isdisjoint(who.ids)
    with pytest.raises(ValueError, match="one side empty"):
        win.split(0.2, by="parent")
    back = SequenceSet.load(ss.save(tmp_path / "set"))
    assert back.fingerprint() == ss.fingerprint() and back.meta["source"] == "planted"


# -- planted ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_set():
    return genome.planted(n_sequences=60, length_bp=600, seed=11)


def test_planted_is_deterministic(planted_set):
    assert genome.planted(n_sequences=60, length_bp=600, seed=11).fingerprint() == planted_set.fingerprint()
    assert genome.planted(n_sequences=60, length_bp=600, seed=12).fingerprint() != planted_set.fingerprint()


def test_planted_ground_truth_is_where_it_is_recorded(planted_set):
    f, ss = planted_set.features, planted_set
    site = lambda r: (lambda q: q if r.strand != "-" else reverse_complement(q))(ss.sequence(r.seq_id)[r.start : r.end])
    g4 = f[f.concept == "g4"]
    assert set(ss.labels[g4[g4.name == "planted"].seq_id]) == {"g4_rich"}  # the set difference is the G4 concept
    assert (ss.labels == "g4_rich").sum() == 30
    for r in g4.itertuples():
        assert genome.G4_PATTERN.search(site(r)), site(r)  # each labelled region holds a G4
    for r in f[f.concept == "polya_signal"].itertuples():
        assert site(r) in ("AATAAA", "ATTAAA")
    for r in f[f.concept == "splice_donor"].itertuples():
        assert site(r)[1:5] in ("AGGT",) and site(r)[5] in "AG"
    for r in f[f.concept == "splice_acceptor"].itertuples():
        assert site(r)[-4:] == "CAGG"
    for r in f[f.concept == "intron"].itertuples():
        assert site(r).startswith("GT") and site(r).endswith("AG")
    motifs = genome.jaspar_motifs(dict(genome.PlantedConfig().motif_ids))
    tf = f[f.concept.str.startswith("tf_")]
    assert len(tf) > 60 and set(tf.concept) <= set(motifs)
    for r in tf.itertuples():
        m = motifs[r.concept]
        assert r.name == m["matrix_id"] and r.end - r.start == len(m["pfm"])
    # a chance G4 anywhere in the background is labelled too: no unlabelled G4 left
    for sid in ss.ids:
        lab = ss.tracks(sid, ["g4"])["g4"]
        for a, b, _ in genome.find_g4(ss.sequence(sid)):
            assert lab[a:b].all()


def test_markov_background_fit_recovers_chain():
    mb = genome.MarkovBackground.human_like()
    s = mb.sample(10, 4000, np.random.default_rng(0))
    assert np.allclose(genome.MarkovBackground.fit(s, order=1).probs, mb.probs, atol=0.03)
    with pytest.raises(ValueError):
        genome.MarkovBackground(np.ones((4, 4)), order=2)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_markov_background_stationary_matches_long_samples(order):
    "The stationary composition is what long samples hold, for every order (order 0 has no context to iterate)."
    probs = np.random.default_rng(order).dirichlet(np.ones(4), size=4**order)
    mb = genome.MarkovBackground(probs, order)
    codes = mb.sample_codes(4, 50_000, np.random.default_rng(1))
    assert np.allclose(np.bincount(codes.ravel(), minlength=4) / codes.size, mb.stationary(), atol=0.01)


# -- prokaryote ---------------------------------------------------------------------------------------------
def test_prokaryote_annotation_is_consistent():
    ss = genome.prokaryote("NCTC11397_100kb")
    seq = ss.sequence(ss.ids[0])
    f = ss.features
    cds = f[f.concept == "cds"]
    assert len(cds) > 50 and ((cds.end - cds.start) % 3 == 0).all()
    site = lambda r: (lambda q: q if r.strand == "+" else reverse_complement(q))(seq[r.start : r.end])
    stops = [site(r) for r in f[f.concept == "stop_codon"].itertuples()]
    starts = [site(r) for r in f[f.concept == "start_codon"].itertuples()]
    assert set(stops) <= {"TAA", "TAG", "TGA"} and len(stops) >= len(cds) - 2
    assert pd.Series(starts).isin(["ATG", "GTG", "TTG"]).mean() > 0.95
    t = ss.tracks(ss.ids[0])
    assert not (t["intergenic"] & t["cds"]).any() and (t["intergenic"] | t["cds"]).all()
    assert t["codon_pos_1"][f[(f.concept == "start_codon") & (f.strand == "+")].start.to_numpy()].all()
    assert (f[f.concept == "rbs"].shape[0]) > 0.5 * len(cds)
    with pytest.raises(ValueError, match="is outside"):
        genome.prokaryote("NCTC11397_100kb", region=(0, 10**7))
    with pytest.raises(ValueError, match="unknown genome"):
        genome.prokaryote("E_coli")


def test_token_codon_frame_reads_the_gene_strand():
    "Frame k = codon position of the token's 5' base on the gene's strand; 0 outside or across a CDS end."
    ss = genome.prokaryote("NCTC11397_100kb")
    sid = ss.ids[0]
    seq = ss.sequence(sid)
    cds = ss.features[ss.features.concept == "cds"]
    plus, minus = cds[cds.strand == "+"].iloc[2], cds[cds.strand == "-"].iloc[2]
    a, b = int(plus.start), int(minus.end)
    got = genome.token_codon_frame(
        ss,
        sid,
        [a + 3 * j + r for j in (0, 5) for r in (0, 1, 2)],
        [a + 3 * j + r + 6 for j in (0, 5) for r in (0, 1, 2)],
    )
    assert got.tolist() == [1, 2, 3] * 2
    # a minus-strand gene is read from its end: the token [e - 6, e) starts (5') at e - 1
    got = genome.token_codon_frame(ss, sid, [b - 6 - r for r in (0, 1, 2)], [b - r for r in (0, 1, 2)])
    assert got.tolist() == [1, 2, 3] and reverse_complement(seq[b - 3 : b]) in {"ATG", "GTG", "TTG"}
    coding = ss.tracks(sid, ["cds"])["cds"]
    lone = next(int(r.start) for r in cds[cds.strand == "+"].itertuples() if not coding[int(r.start) - 3])
    assert genome.token_codon_frame(ss, sid, [lone - 3], [lone + 3]).tolist() == [0]  # across the gene's start
    region = ss.region(a, a + 600, sid)
    assert region.sequence(region.ids[0]) == seq[a : a + 600]
    assert genome.token_codon_frame(region, region.ids[0], [0, 1], [6, 7]).tolist() == [1, 2]  # frames survive the cut
    with pytest.raises(ValueError, match="is outside"):
        ss.region(5, 5, sid)


def test_read_fasta_errors(tmp_path):
    (tmp_path / "bad.fa").write_text(">x\nACGTXX\n")
    with pytest.raises(ValueError, match="bad.fa:x: invalid character 'X' at position 4"):
        genome.read_fasta(tmp_path / "bad.fa")
    with gzip.open(tmp_path / "ok.fa.gz", "wt") as fh:
        fh.write(">a desc\nacg\nTT\n>b\nNN\n")
    assert genome.read_fasta(tmp_path / "ok.fa.gz") == {"a": "ACGTT", "b": "NN"}
    with pytest.raises(FileNotFoundError):
        genome.read_fasta(tmp_path / "missing.fa")


# -- bed-fasta ----------------------------------------------------------------------------------------------
@pytest.fixture()
def bed_fixture(tmp_path):
    rng = np.random.default_rng(1)
    chr1 = "".join(rng.choice(list("ACGT"), 3000))
    chr2 = "".join(rng.choice(list("ACGT"), 500))
    (tmp_path / "g.fa").write_text(f">chr1\n{chr1}\n>chr2 second\n{chr2[:250]}\n{chr2[250:]}\n")
    (tmp_path / "bind.bed").write_text("track name=x\nchr1\t100\t700\tsite1\t0\t+\nchr1\t1000\t1600\tsite2\t0\t-\n")
    (tmp_path / "ctrl.bed").write_text("chr2\t10\t400\n")
    gtf = [
        ("gene", 201, 1500, "."),
        ("exon", 201, 400, "."),
        ("CDS", 251, 400, "0"),
        ("exon", 1101, 1500, "."),
        ("CDS", 1101, 1300, "2"),
    ]
    (tmp_path / "a.gtf").write_text(
        "".join(
            f'chr1\tt\t{ft}\t{a}\t{b}\t.\t+\t{fr}\tgene_id "G1"; transcript_id "T1"; gene_name "DEMO";\n'
            for ft, a, b, fr in gtf
        )
    )
    return tmp_path, chr1, chr2


def test_bed_fasta_sequences_and_annotations(bed_fixture):
    d, chr1, chr2 = bed_fixture
    ss = genome.bed_fasta({"binding": d / "bind.bed", "control": d / "ctrl.bed"}, d / "g.fa", d / "a.gtf")
    assert dict(ss.labels) == {"site1": "binding", "site2": "binding", "chr2:10-400(.)": "control"}
    assert ss.sequence("site1") == chr1[100:700] and ss.sequence("site2") == reverse_complement(chr1[1000:1600])
    assert ss.sequence("chr2:10-400(.)") == chr2[10:400]
    f1 = ss.features_of("site1").set_index("concept")
    assert (f1.loc["intron", "start"], f1.loc["intron", "end"]) == (
        300,
        600,
    )  # exon [200,400) + [1100,1500) -> intron [400,1100)
    assert (f1.loc["exon", "start"], f1.loc["exon", "end"]) == (100, 300)
    # minus-strand window: mirrored coordinates, flipped strand, codon phase kept on the reverse complement
    t2 = ss.tracks("site2")
    cds_genome = np.zeros(3000, bool)
    cds_genome[1100:1300] = True
    assert (t2["cds"] == cds_genome[1000:1600][::-1]).all()
    assert set(ss.features_of("site2").strand) == {"-"}
    first = np.flatnonzero(t2["codon_pos_1"])  # GTF frame 2 at 1100: first codon at 1102
    assert 1600 - 1 - first.max() == 1102


def test_bed_fasta_bad_input(bed_fixture):
    d, *_ = bed_fixture
    (d / "out.bed").write_text("chr1\t10\t20\nchr2\t400\t501\n")
    with pytest.raises(
        ValueError, match=r"out.bed:2: interval chr2:400-501 extends past the end of chr2 \(length 500\)"
    ):
        genome.bed_fasta(d / "out.bed", d / "g.fa")
    (d / "chrom.bed").write_text("chrX\t1\t20\n")
    with pytest.raises(ValueError, match="chromosome 'chrX' is not in g.fa"):
        genome.bed_fasta(d / "chrom.bed", d / "g.fa")
    (d / "neg.bed").write_text("chr1\t50\t20\n")
    with pytest.raises(ValueError, match="neg.bed:1: invalid interval"):
        genome.bed_fasta(d / "neg.bed", d / "g.fa")
    (d / "short.bed").write_text("chr1\t50\n")
    with pytest.raises(ValueError, match="at least 3 columns"):
        genome.bed_fasta(d / "short.bed", d / "g.fa")
    (d / "iupac.fa").write_text(">chr1\nACGTRYACGT\n")
    (d / "w.bed").write_text("chr1\t0\t10\n")
    with pytest.raises(ValueError, match=r"w.bed:1 \(chr1:0-10\): invalid character 'R' at position 4"):
        genome.bed_fasta(d / "w.bed", d / "iupac.fa")
    with pytest.raises(FileNotFoundError):
        genome.bed_fasta(d / "missing.bed", d / "g.fa")
