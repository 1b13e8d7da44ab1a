"""Accuracy and interval coverage of `fit-radius` without a state (the marginal model), on the project's simulator and
on simulations whose polymer or contact the model does not assume.

Each cell: simulate `--n` traces x `--frames` frames, write the tracks file, run `marginal.fit_radius_marginal` with
σ_loc estimated (as the command does by default), and the truth-state MLE (`RadiusMLE`, σ_loc given) on the same data
as the upper bound. One line of JSON per cell (printed as it finishes) and, with `--out`, all rows as a JSON list.
Not identifiable verdicts are rows too. About 1-6 min per cell on 2 CPU cores at the defaults. `--cells limits`: r_c 5 nm
and 3,000 nm (always in contact), which must come out not identifiable. `--cells frames`: 10-, 15-, 20- and 45-s frames.

`--cells grid` is the acceptance grid of the marginal model: r_c ∈ {60, 100, 150, 250} nm × σ_loc ∈ {0, 20, 40} nm ×
3 seeds × two regimes (fast switching, ON periods of 5 min; the simulator's default, ON periods of 1 h), 30-s frames.
Rows are appended to `--jsonl` as each cell finishes, and cells already there are skipped: an interrupted run resumes.

    python bench/check_marginal_radius.py --cells own misspecified --out rows.json
    python bench/check_marginal_radius.py --cells grid --jsonl grid.jsonl
    python bench/check_marginal_radius.py --cells grid --regimes default --radii 100 150 --sigma-locs 20 --n 1200 \
        --threads 1 --jsonl bench/results/marginal_grid_1200.jsonl   # a part of the grid at 4x the traces
    python bench/check_marginal_radius.py --cells grid --regimes default --sigma-loc-given --threads 1 \
        --jsonl bench/results/marginal_grid_sigma_given.jsonl   # the ON-1-h grid with the true σ_loc given
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from xai_hsg.core import write_json_atomic
from xai_hsg.marginal import fit_radius_marginal
from xai_hsg.radius import DegenerateFitError, RadiusMLE
from xai_hsg.simulate import SimParams, save_simulation, simulate

SIGMA_LOC_NM = 20.0
# the project's simulator: (frame interval s, true r_c nm)
OWN = {
    "60 s, r_c 100": dict(dt_s=60.0, r_c_nm=100.0),
    "60 s, r_c 250": dict(dt_s=60.0, r_c_nm=250.0),
    "30 s, r_c 150": dict(dt_s=30.0, r_c_nm=150.0),
    "30 s, r_c 100": dict(dt_s=30.0, r_c_nm=100.0),
}
# polymer and contact variations the bridge (a Gaussian motion model) does not assume; 60-s frames, r_c 150 nm
MISSPECIFIED = {
    "soft contact (width 30 nm)": dict(contact_width_nm=30.0),
    "short chain, 45-bead separation": dict(n_beads=100, separation_beads=45),
    "stiffer chain (4x spring rate)": dict(spring_rate_per_s=4 / 0.177),
    "slower diffusion (D / 4)": dict(diffusion_nm2_per_s=2810.0 / 4),
    "looser chain (spring rate / 2)": dict(spring_rate_per_s=1 / 0.177 / 2),
    "E and P 5 beads from the free ends (100 beads)": dict(n_beads=100, separation_beads=90),
}
# frame intervals other than the grid's 30 s (ON periods of 5 min, r_c 150 nm, σ_loc 20 nm, 241 frames): the MS2 kernel
# spans L = 360 s / dt frames, so finer frames mean a larger compound state and a higher emission order
FRAMES = {f"{dt:g}-s frames": dict(dt_s=float(dt), k_off_per_s=1 / 300) for dt in (10, 15, 20, 45)}

# radii the data cannot determine (fast switching, 30-s frames, σ_loc 20 nm): the verdict must be "not identifiable".
# k_on is held at the r_c = 150 nm cell's rate: Yang's scaling (30 nm / r_c)^3 gives 72/s at 5 nm, and the simulator's
# thinning then draws ~5e5 candidate events per trace (a 1.3-GB allocation per chunk of 512 traces)
LIMITS = {
    "r_c 5 nm (almost never in contact)": dict(dt_s=30.0, r_c_nm=5.0, k_off_per_s=1 / 300, k_on_per_s=0.16 / 60),
    "r_c 3,000 nm (always in contact)": dict(dt_s=30.0, r_c_nm=3000.0, k_off_per_s=1 / 300, k_on_per_s=0.16 / 60),
}

SEEDS = {"own": 31, "misspecified": 41, "limits": 51, "frames": 61}  # simulation seed of each group (--seed overrides)

GRID_R_C_NM = (60.0, 100.0, 150.0, 250.0)
GRID_SIGMA_LOC_NM = (0.0, 20.0, 40.0)
GRID_SEEDS = (101, 102, 103)
GRID_REGIMES = {"fast": 1 / 300, "default": 1 / 3600}  # k_off, 1/s


def grid_cells() -> list[tuple[str, dict, int]]:
    "(name, SimParams changes, seed) of the acceptance grid, seed-major so that a partial run covers every cell once."
    cells = []
    for seed in GRID_SEEDS:
        for regime, k_off in GRID_REGIMES.items():
            for sigma in GRID_SIGMA_LOC_NM:
                for r_c in GRID_R_C_NM:
                    name = f"{regime}, r_c {r_c:g}, sigma_loc {sigma:g}"
                    changes = dict(dt_s=30.0, r_c_nm=r_c, sigma_loc_nm=sigma, k_off_per_s=k_off)
                    cells.append((name, changes, seed))
    return cells


def run_cell(
    name: str,
    changes: dict,
    n: int,
    frames: int,
    seed: int,
    sigma_loc_given: bool = False,
    emission: str = "gaussian",
    ms2_baseline: str | float = "fit",
    bleaching: str | float = "auto",
) -> dict:
    """One simulated condition: the marginal fit (σ_loc estimated, or the simulation's with `sigma_loc_given`; MS2
    `emission` "gaussian" or "counts"; `ms2_baseline` as `fit-radius --ms2-baseline`, `bleaching` as `--bleaching`) and
    the truth-state MLE on the same traces."""
    base = dict(n_frames=frames, dt_s=60.0, r_c_nm=150.0, sigma_loc_nm=SIGMA_LOC_NM, k_off_per_s=1 / 600)
    params = SimParams(**{**base, **changes})
    sim = simulate(n, params, seed=seed)
    row = dict(cell=name, r_c_true=params.r_c_nm, dt_s=params.dt_s, n_traces=n, seed=seed, k_on_true=params.k_on)
    row.update(sigma_loc_true=params.sigma_loc_nm, k_off_true=params.k_off_per_s)
    if sigma_loc_given:
        row["sigma_loc_given"] = True
    if emission != "gaussian":
        row["emission"] = emission
    if ms2_baseline != "fit":
        row["ms2_baseline_option"] = ms2_baseline
    if bleaching != "auto":
        row["bleaching_option"] = bleaching
    try:
        row["truth_state_mle"] = RadiusMLE(sigma_loc_nm=params.sigma_loc_nm, n_boot=0).fit(sim.to_arrays()).r_c_nm_
    except ValueError as err:  # DegenerateFitError, or no activation at all
        row["truth_state_mle"] = None
        row["truth_state_verdict"] = str(err)
    with tempfile.TemporaryDirectory() as tmp:
        tracks, _ = save_simulation(sim, tmp)
        t0 = time.perf_counter()
        try:
            sigma = params.sigma_loc_nm if sigma_loc_given else None
            res = fit_radius_marginal(
                tracks,
                None,
                sigma_loc_nm=sigma,
                test_fraction=0.0,
                emission=emission,
                ms2_baseline=ms2_baseline,
                bleaching=bleaching,
            )
            lo, hi = res["r_c_interval_nm"]
            row.update(r_c=res["r_c_nm"], lo=lo, hi=hi, covered=bool(lo <= params.r_c_nm <= hi))
            row.update(sigma_loc=res["sigma_loc_nm"], k_on=res["k_on_per_s"], bridge_anchor=res["bridge_anchor"])
            row.update(ms2_baseline=res["ms2_baseline"]["estimate"], ms2_baseline_fitted=res["ms2_baseline"]["fitted"])
            decay = res["bleaching"]
            row.update(
                bleach_score_z=decay["score_z"], bleach_fitted=decay["fitted"], bleach_rate_per_h=decay["rate_per_h"]
            )
            sandwich = res["parameters"]["parameters"]["r_c_nm"]  # the Wald interval at σ̂, for comparison
            row.update(sandwich_lo=sandwich["lo"], sandwich_hi=sandwich["hi"], interval=res["interval_method"])
        except DegenerateFitError as err:
            row.update(verdict=str(err))
        row["seconds"] = time.perf_counter() - t0
    return row


def auto_fit_or_number(text: str) -> str | float:
    "`--ms2-baseline` / `--bleaching`: 'auto', 'fit' or a number held."
    return text if text in ("auto", "fit") else float(text)


def summarise(rows: list[dict], label: str) -> dict:
    "Median |relative error| and interval coverage of the fitted rows (cells with r_c ≥ 2σ_loc), truth-state MLE beside."
    keep = [r for r in rows if r["r_c_true"] >= 2 * r.get("sigma_loc_true", 0.0)]
    fitted = [r for r in keep if "r_c" in r]
    truth = [r for r in keep if r.get("truth_state_mle")]
    out = dict(label=label, n_cells=len(keep), n_fitted=len(fitted), n_not_identifiable=len(keep) - len(fitted))
    if fitted:
        out["median_abs_rel_error"] = float(np.median([abs(r["r_c"] / r["r_c_true"] - 1) for r in fitted]))
        out["median_rel_error"] = float(np.median([r["r_c"] / r["r_c_true"] - 1 for r in fitted]))
        out["coverage"] = float(np.mean([r["covered"] for r in fitted]))
    if truth:
        out["truth_state_median_abs_rel_error"] = float(
            np.median([abs(r["truth_state_mle"] / r["r_c_true"] - 1) for r in truth])
        )
    return out


def read_rows(path: str | None) -> list[dict]:
    """The rows of a `--jsonl` file, one per (group, cell, seed): two processes sharing the file can both run the cell
    they meet at, and the later row of such a pair is dropped. [] when there is no file."""
    if not path:
        return []
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    first = {}
    for r in rows:
        first.setdefault((r["group"], r["cell"], r["seed"]), r)
    return list(first.values())


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cells",
        nargs="+",
        choices=["own", "misspecified", "limits", "frames", "grid"],
        default=["own", "misspecified"],
    )
    ap.add_argument("--n", type=int, default=300, help="traces per cell")
    ap.add_argument("--frames", type=int, default=241)
    ap.add_argument("--seed", type=int, default=None, help=f"simulation seed (default: {SEEDS})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write all rows as JSON here")
    ap.add_argument(
        "--jsonl", default=None, help="append each row here as it finishes; cells already there are skipped"
    )
    ap.add_argument("--regimes", nargs="+", choices=list(GRID_REGIMES), default=list(GRID_REGIMES))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(GRID_SEEDS), help="grid seeds to run")
    ap.add_argument("--radii", nargs="+", type=float, default=list(GRID_R_C_NM), help="grid radii to run (nm)")
    ap.add_argument(
        "--sigma-locs", nargs="+", type=float, default=list(GRID_SIGMA_LOC_NM), help="grid σ_loc values to run (nm)"
    )
    ap.add_argument(
        "--sigma-loc-given",
        action="store_true",
        help="give the fit the simulation's σ_loc instead of estimating it (how much of the error is σ_loc's; use its own --jsonl)",
    )
    ap.add_argument(
        "--emission",
        choices=["gaussian", "counts"],
        default="gaussian",
        help="the marginal model's MS2 emission (counts: loading counts in the state; use its own --jsonl)",
    )
    ap.add_argument(
        "--ms2-baseline",
        default="fit",
        type=auto_fit_or_number,
        help="the marginal fit's MS2 baseline: fit (the library's default), auto, or a value held (0: as before "
        "2026-12-07; use its own --jsonl)",
    )
    ap.add_argument(
        "--bleaching",
        default="auto",
        type=auto_fit_or_number,
        help="the decay rate of the MS2 amplitude: auto (the library's default since 2026-12-07: fitted when its score "
        "test says so), fit, or a value held (0: as before; use its own --jsonl)",
    )
    ap.add_argument(
        "--reverse", action="store_true", help="run the cells last to first (a second process can share --jsonl)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = read_rows(args.jsonl)
    seen = {(r["group"], r["cell"], r["seed"]) for r in rows}
    todo = []
    for group, cells in (("own", OWN), ("misspecified", MISSPECIFIED), ("limits", LIMITS), ("frames", FRAMES)):
        if group in args.cells:
            seed = SEEDS[group] if args.seed is None else args.seed
            todo += [(group, name, changes, seed) for name, changes in cells.items()]
    if "grid" in args.cells:
        todo += [
            ("grid", name, changes, seed)
            for name, changes, seed in grid_cells()
            if seed in args.seeds
            and name.split(",")[0] in args.regimes
            and changes["r_c_nm"] in args.radii
            and changes["sigma_loc_nm"] in args.sigma_locs
        ]
    for group, name, changes, seed in reversed(todo) if args.reverse else todo:
        # another process may share the file
        seen |= {(r["group"], r["cell"], r["seed"]) for r in read_rows(args.jsonl)}
        if (group, name, seed) in seen:
            continue
        rows.append(
            {
                "group": group,
                **run_cell(
                    name,
                    changes,
                    args.n,
                    args.frames,
                    seed,
                    sigma_loc_given=args.sigma_loc_given,
                    emission=args.emission,
                    ms2_baseline=args.ms2_baseline,
                    bleaching=args.bleaching,
                ),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    rows = read_rows(args.jsonl) or rows
    for group in args.cells:
        print(json.dumps(summarise([r for r in rows if r["group"] == group], group)))
    if args.out:
        write_json_atomic(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
