"""`xai-hsg`: the command line of the repository.

    xai-hsg reproduce [--profile smoke|paper] [--only 03] [--from 05] [--force] [--no-render]
    xai-hsg render [--profile smoke] [--engine auto|quarto|pandoc]
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
    p.add_argument("--engine", default="auto", choices=["auto", "quarto", "pandoc"],
                   help="quarto if on PATH (auto), else pandoc + typst")
    p.set_defaults(func=_cmd_render)
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
