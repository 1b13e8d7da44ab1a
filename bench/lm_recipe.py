"""Pretraining recipe: which preset / learning rate / batch / steps learns the planted corpus fastest on CPU.

One run per call (append a JSON line to --jsonl): `embed.pretrain_mlm` on the training split of a planted corpus,
then, on held-out sequences and the same masked tokens, the masked-token cross-entropy of the model, of the 6-mer
frequency baseline and of the best possible predictor (`probe.PlantedOracle`), overall and by the concept a token
overlaps (95% bootstrap over sequences), with the share of the achievable gain. Wall time is what the run took on
the threads given (1 by default: compare runs made under the same load).

  python bench/lm_recipe.py --name tiny-600 --preset tiny --lr 3e-3 --steps 600
  python bench/lm_recipe.py --name small-150 --preset small --lr 1.5e-3 --steps 150
  python bench/lm_recipe.py --name random-start --preset small --steps 1500 --embedding-init random
  python bench/lm_recipe.py --name mask-30 --preset small --steps 4000 --mask-prob 0.3

The held-out tokens are always masked at NT's 15%, whatever `--mask-prob` trains with.

With `--probe-sequences N` the run also probes its model as notebook 05 does (`probe.probe_data` / `probe_table` on N
held-out sequences, the random-weight and token-identity controls, the sequence scanners) and counts the concepts whose
best probe reaches AUROC >= 0.9 and >= 0.05 above both controls; `--compare-model DIR` probes a saved model (e.g. the
paper's `results/paper/05_embedding_model`) on the same sequences, so two recipes are judged on the same tokens.

  python bench/lm_recipe.py --name small-8000 --preset small --lr 2e-3 --steps 8000 --n-sequences 20000 \
      --n-heldout 1000 --planted motifs_per_seq=8 --probe-sequences 1000 --compare-model results/paper/05_embedding_model
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from xai_hsg import embed, genome, probe

PRIORITY = ["tandem_repeat", "interspersed_repeat", "g4", "polya_signal", "splice_donor", "splice_acceptor"]
PRIORITY += ["exon", "intron", "cpg_island"]


def token_labels(held, tok, eval_set) -> list[str]:
    "The concept each masked token overlaps (first in PRIORITY, then any TF motif, else background), as in 05."
    concepts = [c for c in held.concepts if not c.startswith("codon_pos")]
    spans, out = {}, []
    for k, t in zip(eval_set.masked_seq, eval_set.masked_token):
        if k not in spans:
            sid = held.ids[k]
            _, s_, e_ = tok.tokenize_with_spans(held.sequence(sid))
            spans[k] = embed.token_annotations(held, sid, s_, e_, concepts)
        hit = dict(zip(concepts, spans[k][t]))
        lab = next((c for c in PRIORITY if hit.get(c)), None)
        if lab is None:
            lab = "tf_motif" if any(v for c, v in hit.items() if c.startswith("tf_")) else "background"
        out.append(lab)
    return out


def corpus_split(n_sequences: int, n_heldout: int, seed: int = 0, **planted) -> tuple:
    """(training split, `n_heldout` held-out sequences) of a planted corpus of 600-bp sequences, split as notebook 05
    splits it (a fifth held out), so that with 05's corpus settings the held-out sequences are also 05's."""
    corpus = genome.planted(n_sequences=n_sequences, length_bp=600, seed=seed, **planted)
    train, held = corpus.split(0.2, seed=seed)
    pick = np.random.default_rng(seed).choice(held.ids, min(n_heldout, len(held)), replace=False)
    return train, held.subset(list(pick))


def probe_rows(model, tok, held, seed: int = 0, threads: int = 1) -> probe.ProbeData:
    "Notebook 05's probe inputs: the hidden states of `model` and of its random-weight twin on every token of `held`."
    models = {"trained": model, "random": probe.random_weight_model(model, seed=seed + 1)}
    return probe.probe_data(models, tok, held, num_threads=threads)


def verdict(best) -> dict:
    "The concepts of `probe.best_layers` whose best probe reaches AUROC >= 0.9 and >= 0.05 above both controls."
    learned = best.index[(best["trained"] >= 0.9) & (best["margin"] >= 0.05)].tolist()
    print(best.round(3).to_string())
    print(f"{len(learned)} of {len(best)} concepts reach AUROC >= 0.9 and >= 0.05 above both controls: {learned}")
    rows = {c: {k: float(v) for k, v in r.items() if np.isfinite(v)} for c, r in best.iterrows()}
    return {"learned": learned, "n_learned": len(learned), "n_concepts": len(best), "concepts": rows}


def probe_verdict(model, tok, held, seed: int = 0, threads: int = 1) -> dict:
    "Notebook 05's probes of `model` on `held`: per concept the best layer's AUROC, controls, scanner; the count learned."
    data = probe_rows(model, tok, held, seed, threads)
    best = probe.best_layers(probe.probe_table(data, min_positives=20, seed=seed))
    scan = probe.scanner_scores(probe.PlantedOracle(held), tok, data.groups)
    best["scanner"] = probe.reference_auroc(scan, data.labels, data.groups, seed=seed).reindex(best.index)
    return verdict(best)


def main(argv=None, extra: dict | None = None) -> dict:
    "One run; `extra` (e.g. a wrapper's own settings) is added to its row."
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--preset", default="tiny", choices=list(embed.NT_PRESETS))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=101)
    ap.add_argument("--mask-prob", type=float, default=0.15, help="share of tokens selected for the loss (NT: 0.15)")
    ap.add_argument("--n-sequences", type=int, default=2000)
    ap.add_argument("--n-heldout", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl", default="lm_recipe.jsonl")
    ap.add_argument(
        "--planted", nargs="*", default=[], metavar="KEY=VALUE", help="PlantedConfig overrides, e.g. motifs_per_seq=8"
    )
    ap.add_argument(
        "--embedding-init",
        default="nucleotide",
        choices=["random", "nucleotide"],
        help="nucleotide (the library's default): each 6-mer's embedding (tied to the output layer) starts with its six "
        "bases one-hot (centred, x --nucleotide-scale; embed.nucleotide_embedding_init); random: transformers' start",
    )
    ap.add_argument("--nucleotide-scale", type=float, default=0.1)
    ap.add_argument("--probe-sequences", type=int, default=0, help="held-out sequences to probe (0: no probes)")
    ap.add_argument("--compare-model", default=None, help="a saved model folder probed on the same sequences")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = {k: float(v) for k, v in (kv.split("=", 1) for kv in a.planted)}
    train, held = corpus_split(a.n_sequences, a.n_heldout, a.seed, **overrides)
    t0 = time.time()
    res = embed.pretrain_mlm(
        train,
        held,
        config=a.preset,
        steps=a.steps,
        batch_size=a.batch,
        max_tokens=a.max_tokens,
        lr=a.lr,
        mask_prob=a.mask_prob,
        eval_every=max(a.steps // 4, 1),
        seed=a.seed,
        device="cpu",
        num_threads=a.threads,
        progress=False,
        embedding_init=a.embedding_init,
        nucleotide_scale=a.nucleotide_scale,
    )
    train_s = time.time() - t0
    tok = res.tokenizer
    es = embed.make_eval_set(tok, held.sequences["sequence"].tolist(), max_tokens=101, seed=a.seed + 1)
    ev = embed.evaluate_mlm(res.model, tok, es, return_predictions=True)
    base = embed.kmer_frequency_baseline(tok, train.sequences["sequence"].tolist(), es, return_losses=True)
    bayes = probe.bayes_token_losses(probe.PlantedOracle(held), held, es, tok, 101)
    losses = {"model": ev["losses"], "baseline": base["losses"], "bayes": bayes["bayes_loss"].to_numpy()}
    table = probe.ce_by_label(token_labels(held, tok, es), es.masked_seq, losses, n_boot=500, seed=a.seed)
    heldout = res.history[res.history["split"] == "heldout"]
    out = {
        **{k: v for k, v in vars(a).items() if k != "jsonl"},
        **(extra or {}),
        "train_seconds": train_s,
        "n_parameters": res.metrics["n_parameters"],
        "heldout_accuracy": ev["accuracy"],
        "curve": heldout[["step", "loss", "accuracy", "elapsed_s"]].to_dict("records"),
        "ce_by_label": table.round(4).to_dict("index"),
    }
    if a.probe_sequences:
        probed = held.subset(held.ids[: a.probe_sequences])
        out["probes"] = probe_verdict(res.model.eval(), tok, probed, a.seed, a.threads)
        if a.compare_model:
            other, _ = embed.load_genomic_lm(a.compare_model, device="cpu")
            print(f"compared with {a.compare_model}:")
            out["compare_model"] = a.compare_model
            out["compare_probes"] = probe_verdict(other, tok, probed, a.seed, a.threads)
    with open(a.jsonl, "a") as f:
        f.write(json.dumps(out, default=float) + "\n")
    cols = ["n", "model", "model_lo", "model_hi", "baseline", "bayes", "gain_share"]
    print(f"{a.name}: {train_s:.0f} s, held-out CE {ev['loss']:.3f} (baseline {base['loss']:.3f})")
    print(table[cols].round(3).to_string())
    return out


if __name__ == "__main__":
    main()
