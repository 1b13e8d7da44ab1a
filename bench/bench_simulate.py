"""Vectorised simulator vs the plain reference, side by side in one run.

    .venv/bin/python bench/bench_simulate.py                      # 1,000 traces x 601 frames on CPU
    .venv/bin/python bench/bench_simulate.py --device cuda --n 100000

The reference (one trace at a time, NumPy) runs on a subset of `--n-ref` traces and its time is scaled linearly to
`--n` traces (its cost is exactly per trace); the output says so. Throughput is traces x frames per second.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from xai_hsg.simulate import SimParams, simulate, simulate_reference


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="traces for the vectorised simulator")
    ap.add_argument("--n-frames", type=int, default=601)
    ap.add_argument("--n-ref", type=int, default=50, help="traces actually run by the reference (scaled to --n)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the library's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    params = SimParams(n_frames=args.n_frames)
    simulate(8, params, seed=args.seed, device=args.device, threads=args.threads)           # warm-up
    if args.device.startswith("cuda"): torch.cuda.synchronize()
    t = time.perf_counter()
    res = simulate(args.n, params, seed=args.seed, device=args.device, threads=args.threads)
    if args.device.startswith("cuda"): torch.cuda.synchronize()
    t_fast = time.perf_counter() - t
    t = time.perf_counter(); simulate_reference(args.n_ref, params, seed=args.seed); t_ref_sub = time.perf_counter() - t
    t_ref = t_ref_sub * args.n / args.n_ref
    tf = args.n * args.n_frames
    out = {"n_traces": args.n, "n_frames": args.n_frames, "device": args.device, "n_modes": res.n_modes,
           "torch_threads": args.threads or "library default", "cpu_threads_available": torch.get_num_threads(),
           "vectorised_s": t_fast, "reference_s_measured": t_ref_sub, "reference_traces_measured": args.n_ref,
           "reference_s_scaled": t_ref, "speedup": t_ref / t_fast,
           "vectorised_trace_frames_per_s": tf / t_fast, "reference_trace_frames_per_s": tf / t_ref,
           "machine": platform.processor() or platform.machine()}
    if args.device.startswith("cuda"): out["gpu"] = torch.cuda.get_device_name()
    print(f"simulate: {args.n} traces x {args.n_frames} frames, {res.n_modes} Rouse modes, device {args.device}")
    print(f"  vectorised : {t_fast:8.2f} s   {tf / t_fast:12,.0f} trace-frames/s")
    print(f"  reference  : {t_ref:8.2f} s   {tf / t_ref:12,.0f} trace-frames/s  "
          f"(measured on {args.n_ref} traces in {t_ref_sub:.2f} s, scaled x{args.n / args.n_ref:g})")
    print(f"  speedup    : {t_ref / t_fast:8.1f}x")
    if args.json:
        with open(args.json, "w") as f: json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
