"""`fit-radius` as a user runs it on one simulation written the ways real files come: the E–P vectors, distances only,
the Brückner et al. 2023 layout (two loci, frame numbers), frames and values missing, jittered timestamps, and times
in minutes (which must be refused, not fitted).

One simulation (`--n` traces × `--frames` frames of 30 s, r_c 150 nm, σ_loc 20 nm, ON periods of 10 min, seed `--seed`)
is written as each variant without its truth columns; the command (`xai_hsg.cli.main`, defaults: no state, σ_loc
estimated) runs on each. One JSON line per variant, appended to `--jsonl` as it finishes (variants already there are
skipped, so an interrupted run resumes). About 5 min per variant on 2 CPU cores at the defaults.

    python bench/check_fit_radius_inputs.py --jsonl bench/results/fit_radius_inputs.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xai_hsg.cli import main as cli
from xai_hsg.simulate import SimParams, simulate
from xai_hsg.tracks import BRUECKNER_DT_S, write_tracks

PARAMS = dict(n_frames=241, dt_s=30.0, r_c_nm=150.0, sigma_loc_nm=20.0, k_off_per_s=1 / 600)


def _gaps(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    "A tenth of the rows deleted (never a trace's first), 15% of MS2 values and 15% of positions blank."
    out = df.copy()
    out.loc[rng.random(len(out)) < 0.15, "ms2"] = np.nan
    out.loc[rng.random(len(out)) < 0.15, ["dx_nm", "dy_nm", "dz_nm"]] = np.nan
    return out[(rng.random(len(out)) > 0.10) | (out["t_s"] == 0)]


def variants(vec: pd.DataFrame, seed: int) -> dict[str, tuple[pd.DataFrame, list[str], str | None]]:
    """name -> (the file's table, extra `fit-radius` arguments, `write_tracks` layout); `vec` is the simulation's long
    table without truth (`SimResult.to_frame(truth=False)`)."""
    rng = np.random.default_rng(seed)
    gaps = _gaps(vec, rng)
    codes, ids = pd.factorize(vec["trace_id"])
    enhancer_nm = rng.uniform(0, 5000, size=(len(ids), 3))[codes]  # somewhere in the nucleus; the promoter at + vector
    loci = vec[["trace_id", "t_s", "ms2"]].assign(
        **{f"{a}_e": enhancer_nm[:, i] for i, a in enumerate("xyz")},
        **{f"{a}_p": enhancer_nm[:, i] + vec[f"d{a}_nm"].to_numpy() for i, a in enumerate("xyz")},
    )
    distances = vec.assign(distance_nm=np.linalg.norm(vec[["dx_nm", "dy_nm", "dz_nm"]], axis=1))
    return {
        "E-P vectors": (vec, [], None),
        "distances only": (distances.drop(columns=["dx_nm", "dy_nm", "dz_nm"]), [], None),
        "Brückner layout (two loci, frame numbers)": (loci, ["--dt", f"{PARAMS['dt_s']:g}"], "brueckner"),
        "10% of frames and 15% of values missing": (gaps, [], None),
        "jittered timestamps (sd 0.3 s) and gaps": (
            gaps.assign(t_s=gaps["t_s"] + rng.normal(0, 0.3, len(gaps))),
            [],
            None,
        ),
        "times in minutes": (vec.assign(t_s=vec["t_s"] / 60), [], None),
    }


def write_variant(table: pd.DataFrame, path: Path, layout: str | None) -> Path:
    "The variant's file, as `write_tracks` writes tracks (the Brückner layout with frame numbers of 30 s)."
    return write_tracks(table, path, layout=layout, dt_s=PARAMS["dt_s"])


def run_variant(name: str, table: pd.DataFrame, extra: list[str], layout: str | None = None) -> dict:
    "Write `table`, run `fit-radius` on it; the row: exit status, the fit or the one-line error."
    with tempfile.TemporaryDirectory() as tmp:
        tracks, out = Path(tmp) / "tracks.csv", Path(tmp) / "fit.json"
        write_variant(table, tracks, layout)
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err):
            status = cli(["fit-radius", str(tracks), "--out", str(out), *extra])
        row = dict(variant=name, exit_status=status, seconds=time.perf_counter() - t0, r_c_true=PARAMS["r_c_nm"])
        if status == 0:
            res = json.loads(out.read_text())
            lo, hi = res["r_c_interval_nm"]
            row.update(r_c=res["r_c_nm"], lo=lo, hi=hi, covered=bool(lo <= PARAMS["r_c_nm"] <= hi))
            row.update(sigma_loc=res["sigma_loc_nm"], dt_s=res["dt_s"], n_traces=res["n_traces"])
            row.update(bridge_anchor=res["bridge_anchor"], warnings=res["warnings"])
        else:
            row["error"] = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="traces")
    ap.add_argument("--frames", type=int, default=241)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=None, help="names (default: all)")
    ap.add_argument("--jsonl", default=None, help="append rows here; variants already in it are skipped")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    assert BRUECKNER_DT_S != PARAMS["dt_s"]  # so the Brückner variant needs, and checks, --dt
    sim = simulate(args.n, SimParams(**{**PARAMS, "n_frames": args.frames}), seed=args.seed)
    table = variants(sim.to_frame(truth=False), args.seed)
    jsonl = Path(args.jsonl) if args.jsonl else None
    done = set()
    if jsonl and jsonl.exists():
        done = {json.loads(line)["variant"] for line in jsonl.read_text().splitlines() if line.strip()}
    rows = []
    for name in args.variants or list(table):
        if name in done:
            continue
        row = dict(run_variant(name, *table[name]), seed=args.seed, n_traces_simulated=args.n, frames=args.frames)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if jsonl:
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
