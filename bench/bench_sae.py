"""SAE training throughput: ours (`xai_hsg.sae`, BatchTopK + AuxK) vs an L1-ReLU baseline like the seeds', one run.

ours     : `SAETrainer.fit` on a BatchTopK SAE — normalisation, unit-norm decoder with the parallel gradient removed,
           AuxK on dead latents, dead-latent bookkeeping, batches streamed from an `ActivationSource` (bf16 autocast
           on CUDA).
baseline : the seeds' L1-ReLU SAE — `nn.Linear` encoder and decoder, ReLU, MSE + L1, plain Adam loop over
           pre-shuffled in-memory batches (no decoder constraint, no bookkeeping).

Both see the same activations (Gaussian, synthetic: throughput only), the same shapes, batch and steps. Reported:
training tokens/s of each over steps 2..N (ours without its one-off initialisation and the threshold calibration
after the last step) and the ratio ours / baseline. Each side's time is the fastest of `--repeats` runs (robust
to load bursts on a shared machine).

With `--saelens` (needs the optional extra: `pip install -e ".[saelens]"`), also ours against SAELens' own BatchTopK
trainer (`sae_lens.BatchTopKTrainingSAE` + `sae_lens.SAETrainer`) on the same activations: a known sparse dictionary in
superposition (`synthetic_activations`: 4 x d_in unit directions, ~k/4 active per token; centred), the same k, batch, learning
rates (`--compare-lrs`) and token budget (`--compare-steps` batches); each side's whole `fit` timed (its set-up
included), then held-out FVU, L0 and the mean max cosine of its decoder with the true directions (MMCS).

  python bench/bench_sae.py                       # CPU: 128 -> 1024 latents, k = 32, batch 4096
  python bench/bench_sae.py --device cuda --d-in 1280 --latents 10240   # the issue's GPU shape (goal >= 1M tokens/s)
  python bench/bench_sae.py --saelens --compare-lrs 8e-4 3e-3 1e-2   # + ours vs SAELens' BatchTopK trainer
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from xai_hsg.sae import (
    SAE,
    ActivationSource,
    SAEConfig,
    SAETrainer,
    TrainerConfig,
    default_lr,
    mean_max_cosine,
    synthetic_activations,
)


class SeedsL1SAE(nn.Module):
    "The baseline: an L1-ReLU SAE as the seeds wrote it."

    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        self.enc, self.dec = nn.Linear(d_in, d_sae), nn.Linear(d_sae, d_in)

    def forward(self, x):
        z = torch.relu(self.enc(x))
        return self.dec(z), z


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_ours(x: torch.Tensor, args, dev) -> float:
    sae = SAE(SAEConfig(x.shape[1], args.latents, kind="batchtopk", k=args.k), seed=0)
    cfg = TrainerConfig(batch_size=args.batch, steps=args.steps, lr=1e-3, device=str(dev), dead_tokens=args.batch * 4)
    src = ActivationSource.from_array(x, shard_tokens=len(x))
    stamps = []

    def clock(step, _):
        _sync(dev)
        stamps.append(time.perf_counter())

    SAETrainer(sae, cfg).fit(src, callback=clock)
    # steps 2..N: the one-off initialisation (normalisation, geometric median) and the threshold calibration after
    # the last step are not training throughput
    return (args.steps - 1) * args.batch / (stamps[-1] - stamps[0])


def run_baseline(x: torch.Tensor, args, dev) -> float:
    torch.manual_seed(0)
    m = SeedsL1SAE(x.shape[1], args.latents).to(dev)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    xs = x.to(dev)
    n_batches = len(xs) // args.batch
    t0 = None
    for s in range(args.steps):
        xb = xs[(s % n_batches) * args.batch : (s % n_batches + 1) * args.batch]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            xh, z = m(xb)
            loss = (xh.float() - xb).pow(2).sum(-1).mean() + 1e-3 * z.float().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s == 0:  # time steps 2..N, as for ours
            _sync(dev)
            t0 = time.perf_counter()
    _sync(dev)
    return (args.steps - 1) * args.batch / (time.perf_counter() - t0)


@torch.no_grad()
def fvu_and_l0(encode, decode, x: torch.Tensor, batch: int = 8192) -> tuple[float, float]:
    "Held-out fraction of variance unexplained and mean active latents per token of any encode/decode pair."
    err, l0 = 0.0, 0.0
    for a in range(0, len(x), batch):
        xb = x[a : a + batch]
        z = encode(xb)
        err += float((xb.double() - decode(z).double()).pow(2).sum())
        l0 += float((z > 0).sum())
    total_var = float((x.double() - x.double().mean(0)).pow(2).sum())
    return err / total_var, l0 / len(x)


def train_ours(x_train, x_test, true_dict, args, dev, lr: float) -> dict:
    "Our BatchTopK trainer on `x_train` at `lr`: its time and held-out FVU, L0 and MMCS."
    sae = SAE(SAEConfig(args.d_in, args.latents, kind="batchtopk", k=args.k), seed=0)
    cfg = TrainerConfig(batch_size=args.batch, steps=args.compare_steps, lr=lr, device=str(dev), progress=False)
    _sync(dev)
    t0 = time.perf_counter()
    SAETrainer(sae, cfg).fit(ActivationSource.from_array(x_train, shard_tokens=len(x_train)))
    _sync(dev)
    seconds = time.perf_counter() - t0
    fvu, l0 = fvu_and_l0(sae.encode, sae.decode, x_test)
    mmcs = mean_max_cosine(sae.W_dec.detach().cpu(), true_dict)
    return {"lr": lr, "seconds": seconds, "tokens_per_s": len(x_train) / seconds, "fvu": fvu, "l0": l0, "mmcs": mmcs}


def train_saelens(x_train, x_test, true_dict, args, dev, lr: float) -> dict:
    "SAELens' BatchTopK trainer (its defaults: decoder rows initialised at norm 0.1, inputs scaled) at `lr`; as above."
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(0)
    lens_cfg = sae_lens.BatchTopKTrainingSAEConfig(
        d_in=args.d_in,
        d_sae=args.latents,
        k=args.k,
        device=str(dev),
        normalize_activations="expected_average_only_in",  # SAELens' own input scaling (ours: mean-centred, scaled)
    )
    lens = sae_lens.BatchTopKTrainingSAE(lens_cfg)
    xs = x_train.to(dev)

    def provider():
        epoch = 0
        while True:
            perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(epoch)).to(dev)
            for b in range(len(xs) // args.batch):
                yield xs[perm[b * args.batch : (b + 1) * args.batch]]
            epoch += 1

    trainer_cfg = SAETrainerConfig(
        total_training_samples=len(x_train),
        train_batch_size_samples=args.batch,
        lr=lr,
        lr_end=lr,
        device=str(dev),
        autocast=dev.type == "cuda",
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
    )
    _sync(dev)
    t0 = time.perf_counter()
    sae_lens.SAETrainer(trainer_cfg, lens, provider()).fit()
    _sync(dev)
    seconds = time.perf_counter() - t0
    folder = Path(tempfile.mkdtemp())
    lens.save_inference_model(str(folder))  # BatchTopK is saved as JumpReLU with its learned threshold
    inference = sae_lens.SAE.load_from_disk(folder, device=str(dev))
    fvu, l0 = fvu_and_l0(inference.encode, inference.decode, x_test)
    mmcs = mean_max_cosine(inference.W_dec.detach().cpu(), true_dict)
    return {"lr": lr, "seconds": seconds, "tokens_per_s": len(x_train) / seconds, "fvu": fvu, "l0": l0, "mmcs": mmcs}


def compare_saelens(args, dev) -> dict:
    """Ours vs SAELens' BatchTopK trainer: same activations, k, batch and token budget, each over the same learning
    rates (`--compare-lrs`; the first is the d_sae rule both libraries' users start from); time, FVU, L0, MMCS."""
    import sae_lens

    n_train = args.compare_steps * args.batch
    x, true_dict = synthetic_activations(n_train + 20_000, args.d_in, 4 * args.d_in, k=args.k / 4, seed=1)
    # centred: SAELens scales its inputs but does not centre them, and the generator's constant offset would then
    # measure how fast its b_dec learns the mean rather than the dictionary
    x = x - x[:n_train].mean(0)
    x_train, x_test = x[:n_train], x[n_train:].to(dev)
    lrs = args.compare_lrs or [default_lr(args.latents)]
    ours = [train_ours(x_train, x_test, true_dict, args, dev, lr) for lr in lrs]
    theirs = [train_saelens(x_train, x_test, true_dict, args, dev, lr) for lr in lrs]
    best_ours, best_theirs = min(ours, key=lambda r: r["fvu"]), min(theirs, key=lambda r: r["fvu"])
    return {
        "sae_lens_version": sae_lens.__version__,
        "setup": (
            f"{args.d_in} -> {args.latents}, k = {args.k}, batch {args.batch}, {args.compare_steps} steps "
            f"({n_train:,} tokens); {4 * args.d_in} true directions, ~{args.k / 4:g} active per token"
        ),
        "ours": ours,
        "sae_lens": theirs,
        "best_fvu_ours": best_ours["fvu"],
        "best_fvu_sae_lens": best_theirs["fvu"],
        "ratio_tokens_per_s_ours_over_sae_lens": float(
            np.median([o["tokens_per_s"] for o in ours]) / np.median([t["tokens_per_s"] for t in theirs])
        ),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--latents", type=int, default=1024)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--saelens", action="store_true", help="also compare with SAELens' BatchTopK trainer")
    p.add_argument("--compare-steps", type=int, default=300, help="batches each side trains on in the comparison")
    p.add_argument(
        "--compare-lrs",
        type=float,
        nargs="*",
        default=None,
        help="learning rates both sides train at (default: the d_sae rule)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    x = torch.randn(args.batch * 8, args.d_in, generator=torch.Generator().manual_seed(0))
    ours = max(run_ours(x, args, dev) for _ in range(args.repeats))
    base = max(run_baseline(x, args, dev) for _ in range(args.repeats))
    out = {
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "shape": f"{args.d_in} -> {args.latents}, k = {args.k}, batch {args.batch}, {args.steps} steps",
        "ours_tokens_per_s": ours,
        "baseline_l1_tokens_per_s": base,
        "ratio_ours_over_baseline": ours / base,
    }
    if args.saelens:
        out["vs_sae_lens"] = compare_saelens(args, dev)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
