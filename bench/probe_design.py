"""Does the probe verdict of notebook 05 depend on how the probe is built? The paper's trained model (read from the
artifact cache of `xai-hsg reproduce --profile paper --only 05`) is probed on held-out sequences three ways, each
against the same two controls built the same way:

* per token (the notebook's probe): the token's hidden state, logistic regression at C = 1;
* the same with C = 0.1 and C = 10 (stronger and weaker L2 regularisation);
* windowed: the hidden states of the token and of its neighbour on either side, concatenated (the receptive window
  of the token-identity control, which reads the one-hot of the token and its neighbours); the random-weight
  control is windowed the same way.

Per concept it prints the best layer's AUROC, both controls and the margin, and how many concepts meet the issue's
criterion (best AUROC ≥ 0.9 and ≥ 0.05 above both controls). Rows go to `--out` (JSON). ~2 min on 2 CPU cores.

    python bench/probe_design.py --out bench/results/probe_design.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xai_hsg import core, embed, genome, probe


def windowed(features: np.ndarray, groups: np.ndarray, window: int = 1) -> np.ndarray:
    """Row i = the rows i-window..i+window of `features` concatenated (zeros where the neighbour lies in another
    sequence or outside the array); rows in sequence order within each group."""
    n, d = features.shape
    out = np.zeros((n, (2 * window + 1) * d), np.float32)
    for k, offset in enumerate(range(-window, window + 1)):
        src = np.arange(n) + offset
        ok = (src >= 0) & (src < n)
        ok[ok] &= groups[src[ok]] == groups[ok]
        out[ok, k * d : (k + 1) * d] = features[src[ok]]
    return out


def verdict(table) -> dict:
    "Per concept the best layer's probe and controls (`probe.best_layers`), and the count that meets the criterion."
    best = probe.best_layers(table)
    meets = (best["trained"] >= 0.9) & (best["margin"] >= 0.05)
    concepts = {c: {k: float(v) for k, v in r.items()} | {"meets": bool(meets[c])} for c, r in best.iterrows()}
    return {"n_meet": int(meets.sum()), "n_concepts": len(best), "concepts": concepts}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--n-sequences", type=int, default=1000, help="held-out sequences probed (the paper's 1,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    art = core.find_root() / "artifacts" / args.profile / "05_embedding"
    if not (art / "model").is_dir():
        raise SystemExit(f"{art / 'model'} not found: run `xai-hsg reproduce --profile {args.profile} --only 05` first")
    model, tok = embed.load_genomic_lm(art / "model", device="cpu")
    seqs = genome.SequenceSet.load(art / "sequences")  # 05's held-out sequences (never seen in pretraining)
    rng = np.random.default_rng(args.seed)
    ids = np.sort(rng.choice(seqs.ids, size=min(args.n_sequences, len(seqs)), replace=False))
    models = {"trained": model, "random": probe.random_weight_model(model, seed=args.seed + 1)}
    data = probe.probe_data(models, tok, seqs.subset(ids), num_threads=args.threads)
    win = {s: {l: windowed(X, data.groups) for l, X in layers.items()} for s, layers in data.features.items()}
    windowed_data = probe.ProbeData(win, data.labels, data.groups, data.token_ids, data.vocab_size)
    designs = {
        "per token, C = 1 (the notebook's)": (data, {}),
        "per token, C = 0.1": (data, {"C": 0.1}),
        "per token, C = 10": (data, {"C": 10.0}),
        "token and neighbours (window 1), C = 1": (windowed_data, {}),
    }
    rows = {"profile": args.profile, "n_sequences": len(ids), "n_tokens": len(data.labels), "designs": {}}
    for name, (d, kw) in designs.items():
        t0 = time.perf_counter()
        res = verdict(probe.probe_table(d, min_positives=20, seed=args.seed, **kw))
        rows["designs"][name] = res | {"seconds": time.perf_counter() - t0}
        print(f"{name}: {res['n_meet']} of {res['n_concepts']} concepts meet AUROC >= 0.9 and margin >= 0.05")
        for c, r in res["concepts"].items():
            print(
                f"  {c:20s} layer {r['layer']:.0f}  trained {r['trained']:.3f}  random {r['random']:.3f}  "
                f"token identity {r['token identity']:.3f}  margin {r['margin']:+.3f}"
            )
    if args.out:
        core.write_json_atomic(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
