"""Pretraining with an auxiliary per-base loss: does a denser signal teach the LM short PWM-like sites?

A masked 6-mer is one of 4,096 classes to the MLM head, but a PWM motif is six per-base distributions: the
4,096-way softmax has to learn their product from one-hot targets. This experiment adds a second head on the last
hidden state of each masked token (`Linear(hidden, 6 x 4)`) with the cross-entropy of each of the token's six bases,
weighted by `BASE_LOSS_WEIGHT`, to the MLM loss. Everything else is `bench/lm_recipe.py` (same arguments, same
evaluation, same probes, which read the LM head and the hidden states only). The library's objective is not
changed: this script swaps `embed._mlm_loss` for the run, and attaches the head where `pretrain_mlm` starts the
embeddings (so that the head's parameters join the optimiser and gradient clipping).

  BASE_LOSS_WEIGHT=1 python bench/lm_recipe_base_loss.py --name base-loss-1 --preset small --lr 2e-3 --steps 4000 \
      --n-sequences 20000 --n-heldout 1000 --planted motifs_per_seq=8 --probe-sequences 1000

Rows go to --jsonl as lm_recipe's, with `base_loss_weight` added.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import lm_recipe  # noqa: E402

from xai_hsg import embed  # noqa: E402

BASE_LOSS_WEIGHT = float(os.environ.get("BASE_LOSS_WEIGHT", "1"))


def token_bases(tokenizer: embed.NTTokenizer) -> torch.Tensor:
    "[vocab, 6]: each 6-mer's bases as 0-3 in the tokenizer's base order (ATCG); -100 (ignored) for other tokens."
    table = np.full((len(tokenizer.vocab), embed.NT_KMER), -100, np.int64)
    for i in tokenizer.kmer_ids:
        table[i] = ["ATCG".index(b) for b in tokenizer.vocab[i]]
    return torch.as_tensor(table)


BASES = token_bases(embed.NTTokenizer())
_start_embeddings = embed.nucleotide_embedding_init


def start_with_base_head(model, tokenizer, scale: float = 0.1):
    "The library's embedding start, plus the per-base head as a submodule (so the optimiser sees it)."
    _start_embeddings(model, tokenizer, scale)
    model.base_head = torch.nn.Linear(model.config.hidden_size, 4 * embed.NT_KMER)
    return model


def mlm_and_base_loss(model, batch, device):
    "The MLM cross-entropy of the masked tokens + BASE_LOSS_WEIGHT x the mean cross-entropy of their bases."
    if not hasattr(model, "base_head"):
        raise ValueError(
            "the per-base head is attached by the nucleotide embedding start: drop --embedding-init random"
        )
    inputs, att, labels = (x.to(device) for x in batch)
    m = labels != -100
    if not m.any():
        return None, {}
    h = getattr(model, model.base_model_prefix)(input_ids=inputs, attention_mask=att).last_hidden_state[m]
    logits = model.lm_head(h)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[m])
    base_logits = model.base_head(h).view(-1, 4).float()
    base_loss = torch.nn.functional.cross_entropy(base_logits, BASES.to(device)[labels[m]].view(-1), ignore_index=-100)
    accuracy = (logits.detach().argmax(-1) == labels[m]).float().mean()
    return loss + BASE_LOSS_WEIGHT * base_loss, {"accuracy": accuracy, "tokens": att.sum()}


if __name__ == "__main__":
    embed.nucleotide_embedding_init = start_with_base_head
    embed._mlm_loss = mlm_and_base_loss
    lm_recipe.main(sys.argv[1:], extra={"base_loss_weight": BASE_LOSS_WEIGHT})
