"""`xai-hsg`: the command line of the repository.

xai-hsg reproduce [--profile smoke|paper] [--only 03] [--from 05] [--force] [--no-render]
xai-hsg render [--profile smoke] [--engine auto|quarto|pandoc]
xai-hsg simulate --n N --rc NM --sigma-loc NM --seed S --out DIR
xai-hsg fit-radius TRACKS --out fit.json [--sigma-loc NM] [--state-from truth|ms2]
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _cmd_reproduce(args) -> int:
    from .pipeline import reproduce

    reproduce(profile=args.profile, only=args.only or (), start=args.start, force=args.force, render=not args.no_render)
    return 0


def _cmd_render(args) -> int:
    from rich.console import Console

    from .render import render_paper

    render_paper(args.profile, engine=args.engine, console=Console(stderr=True, highlight=False))
    return 0


def _cmd_simulate(args) -> int:
    from .simulate import SimParams, write_simulation

    params = SimParams(r_c_nm=args.rc, sigma_loc_nm=args.sigma_loc, n_frames=args.frames)
    tracks, truth = write_simulation(args.out, args.n, params, seed=args.seed, device=args.device, fmt=args.format)
    print(
        f"wrote {tracks} and {truth} ({args.n} traces x {args.frames} frames, r_c = {args.rc:g} nm, "
        f"sigma_loc = {args.sigma_loc:g} nm, seed {args.seed})"
    )
    return 0


def _cmd_fit_radius(args) -> int:
    from .radius import fit_radius

    res = fit_radius(
        args.tracks,
        args.out,
        sigma_loc_nm=args.sigma_loc,
        state_from=args.state_from,
        n_boot=args.n_boot,
        seed=args.seed,
        dt_s=args.dt,
    )
    lo, hi = res["r_c_interval_nm"]
    h = res["heldout"]
    gain = f", held-out gain {h['test_gain_nats_per_event']:.2f} nats/event over no distance" if h else ""
    print(
        f"r_c = {res['r_c_nm']:.1f} nm ({100 * res['ci']:.0f}% interval {lo:.1f}-{hi:.1f}), k_on = {res['k_on_per_s']:.3g}/s, "
        f"k_off = {res['k_off_per_s']:.3g}/s, {res['n_events']} activations{gain}; wrote {args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xai-hsg", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="execute the notebook chain with papermill, then render the manuscript")
    p.add_argument("--profile", default="smoke", help="profiles/<name>.yml or a YAML path (default: smoke)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (number or name)")
    p.add_argument("--from", dest="start", metavar="NN", help="run this notebook and every later one")
    p.add_argument("--force", action="store_true", help="re-run selected notebooks even when cached")
    p.add_argument("--no-render", action="store_true", help="skip rendering the manuscript")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("render", help="render paper/ to HTML and PDF from results/ and figures/ of a profile")
    p.add_argument("--profile", default="smoke")
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "quarto", "pandoc"],
        help="quarto if on PATH (auto), else pandoc + typst",
    )
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser(
        "simulate", help="simulate EP-distance + MS2 traces with ground truth (tracks file + truth.json)"
    )
    p.add_argument("--n", type=int, default=100, help="number of traces (default: 100)")
    p.add_argument("--rc", type=float, default=100.0, help="contact radius r_c in nm (default: 100)")
    p.add_argument(
        "--sigma-loc", type=float, default=40.0, help="localization error per spot and axis in nm (default: 40)"
    )
    p.add_argument("--frames", type=int, default=601, help="frames per trace, 30 s apart (default: 601)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--format", default="csv", choices=["csv", "parquet"], help="tracks file format (default: csv)")
    p.add_argument("--out", required=True, help="output folder: writes tracks.csv and truth.json")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "fit-radius", help="maximum-likelihood contact radius (nm, with interval) from a tracks file with state or MS2"
    )
    p.add_argument("tracks", help="tracks file (CSV or Parquet, any layout; gaps allowed)")
    p.add_argument(
        "--out", required=True, help="output JSON: radius in nm with interval, k_on, k_off, held-out metrics"
    )
    p.add_argument(
        "--sigma-loc", type=float, default=40.0, help="localization error per spot and axis in nm (default: 40)"
    )
    p.add_argument(
        "--state-from",
        default="truth",
        choices=["truth", "ms2"],
        help="promoter state from the 'state' column (truth) or inferred from MS2 (crude; default: truth)",
    )
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples over traces (default: 200)")
    p.add_argument("--dt", type=float, default=None, help="frame interval in s (default: from the file)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_fit_radius)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .pipeline import PipelineError
    from .render import RenderError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PipelineError, RenderError, FileNotFoundError, ValueError) as err:
        print(f"xai-hsg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"xai-hsg {args.command}: interrupted (finished stages stay cached)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
