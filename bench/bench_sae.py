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

  python bench/bench_sae.py                       # CPU: 128 -> 1024 latents, k = 32, batch 4096
  python bench/bench_sae.py --device cuda --d-in 1280 --latents 10240   # the issue's GPU shape (goal >= 1M tokens/s)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn

from xai_hsg.sae import SAE, ActivationSource, SAEConfig, SAETrainer, TrainerConfig


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
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
