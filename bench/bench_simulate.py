"""Vectorised simulator vs the plain reference, side by side in one run.

    .venv/bin/python bench/bench_simulate.py                      # 1,000 traces x 601 frames on CPU
    .venv/bin/python bench/bench_simulate.py --threads 2          # force the threads (default: the library's choice)
    .venv/bin/python bench/bench_simulate.py --device cuda --n 100000

Both simulate the same model with the same Rouse modes (`rouse_modes(params)`), so the ratio compares like with like.
The reference (one trace at a time, NumPy) runs on a subset of `--n-ref` traces and its time is scaled linearly to
`--n` traces (its cost is exactly per trace); the output says so. Throughput is traces x frames per second. The 1-min
load average is printed before and after: the machine may be shared, and a load above the core count slows both.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from xai_hsg import core
from xai_hsg.core import default_threads
from xai_hsg.simulate import FRESH_DECAY, SimParams, rouse_modes, simulate, simulate_reference

# the fields of the report `main` returns (and writes with --json); "gpu" is added on CUDA
FIELDS = (
    "n_traces",
    "n_frames",
    "device",
    "n_modes",
    "n_slow_modes",
    "variance_fraction_kept",
    "threads",
    "cpu_cores",
    "load_avg_1min_before",
    "load_avg_1min_after",
    "vectorised_s",
    "vectorised_s_all_runs",
    "vectorised_trace_frames",  # traces x frames the timed vectorised run returned
    "reference_s_measured",
    "reference_traces_measured",
    "reference_trace_frames_measured",  # traces x frames the timed reference run returned
    "reference_n_modes",  # Rouse modes of the reference run (the same model: equals n_modes)
    "reference_s_scaled",  # reference_s_measured x n_traces / reference_traces_measured
    "speedup",  # reference_s_scaled / vectorised_s
    "vectorised_trace_frames_per_s",
    "reference_trace_frames_per_s",
    "machine",
)


def _load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _sync(device: str) -> None:
    "Wait for queued CUDA work, so that the clock measures it."
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_vectorised(n, params, seed, device, threads, repeat):
    "The fastest of `repeat` runs (after a warm-up) and the result of the last; returns (times, result)."
    simulate(8, params, seed=seed, device=device, threads=threads)  # warm-up
    times, res = [], None
    for _ in range(max(1, repeat)):
        _sync(device)
        t = time.perf_counter()
        res = simulate(n, params, seed=seed, device=device, threads=threads)
        _sync(device)
        times.append(time.perf_counter() - t)
    return times, res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="traces for the vectorised simulator")
    ap.add_argument("--n-frames", type=int, default=601)
    ap.add_argument("--n-ref", type=int, default=50, help="traces actually run by the reference (scaled to --n)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's choice)")
    ap.add_argument("--repeat", type=int, default=3, help="vectorised runs; the fastest is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    params = SimParams(n_frames=args.n_frames)
    modes = rouse_modes(params)
    n_slow = int(np.sum(modes.rate_per_s * params.dt_s < FRESH_DECAY))
    load_before = _load_avg()
    threads = args.threads or (default_threads() if args.device == "cpu" else 1)
    times, fast = time_vectorised(args.n, params, args.seed, args.device, threads, args.repeat)
    t_fast = min(times)
    t = time.perf_counter()
    ref = simulate_reference(args.n_ref, params, seed=args.seed)
    t_ref_sub = time.perf_counter() - t
    t_ref = t_ref_sub * args.n / args.n_ref
    load_after = _load_avg()
    tf = fast.n_traces * fast.n_frames
    out = {
        "n_traces": args.n,
        "n_frames": args.n_frames,
        "device": args.device,
        "n_modes": modes.n_modes,
        "n_slow_modes": n_slow,
        "variance_fraction_kept": modes.fraction_kept,
        "threads": threads,
        "cpu_cores": os.cpu_count(),
        "load_avg_1min_before": load_before,
        "load_avg_1min_after": load_after,
        "vectorised_s": t_fast,
        "vectorised_s_all_runs": times,
        "vectorised_trace_frames": tf,
        "reference_s_measured": t_ref_sub,
        "reference_traces_measured": args.n_ref,
        "reference_trace_frames_measured": ref.n_traces * ref.n_frames,
        "reference_n_modes": ref.n_modes,
        "reference_s_scaled": t_ref,
        "speedup": t_ref / t_fast,
        "vectorised_trace_frames_per_s": tf / t_fast,
        "reference_trace_frames_per_s": tf / t_ref,
        "machine": platform.processor() or platform.machine(),
    }
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    print(
        f"simulate: {args.n} traces x {args.n_frames} frames, {modes.n_modes} Rouse modes ({n_slow} slow, "
        f"{modes.fraction_kept:.4%} of Var(r)), device {args.device}, {threads} thread(s)"
    )
    print(f"  load avg   : {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores)")
    print(f"  vectorised : {t_fast:8.3f} s   {tf / t_fast:12,.0f} trace-frames/s  (best of {len(times)})")
    print(
        f"  reference  : {t_ref:8.2f} s   {tf / t_ref:12,.0f} trace-frames/s  "
        f"(measured on {args.n_ref} traces in {t_ref_sub:.2f} s, scaled x{args.n / args.n_ref:g})"
    )
    print(f"  speedup    : {t_ref / t_fast:8.1f}x")
    if args.json:
        core.write_json_atomic(args.json, out, sort_keys=False)
    return out


if __name__ == "__main__":
    main()
