"""`xai-hsg`: the command line of the repository.

xai-hsg [--debug] reproduce [--profile smoke|paper] [--only 03] [--from 05] [--force] [--no-render]
xai-hsg [--debug] render [--profile smoke] [--engine auto|quarto|pandoc]
xai-hsg [--debug] simulate --n N --rc NM --sigma-loc NM --seed S --out DIR [--force]
xai-hsg [--debug] fit-radius TRACKS --out fit.json [--sigma-loc NM] [--state-from none|truth|ms2] [--states CSV] [--force]
xai-hsg [--debug] events MS2_FILE --out events.csv [--t-rise-s S] [--t-plateau-s S] [--dt S] [--wide] [--model DIR]
    [--save-model DIR] [--force]
xai-hsg [--debug] train-sae ACTIVATIONS --out DIR [--kind batchtopk|topk|l1|matryoshka] [--latents N] [--k K] [--l1 C] [--epochs E] [--layer L] [--seed S]

An expected failure (a bad file, a bad value, a missing device, an interruption) is one line on stderr,
`xai-hsg <command>: error: <message>`, with exit status 2 for usage errors (a bad option or option value),
1 for data and runtime errors and 130 for Ctrl-C; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["main", "build_parser", "UsageError", "check_output_file", "check_output_folder"]

EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    "A bad option value found after parsing (e.g. `--device cuda` without CUDA): exit status 2, like argparse's own."


class _Parser(argparse.ArgumentParser):
    "argparse with its usage errors as one line: `xai-hsg <command>: error: <message>`, exit status 2."

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, minimum: float | None = None, strict: bool = False, unit: str = ""):
    "An argparse `type=`: a finite `kind` (int or float) ≥ `minimum` (> when `strict`), with a message saying so."
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}{unit}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number{unit}, got {text!r}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}{unit}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


KERNEL_DEFAULTS_S = {"t_rise_s": 120.0, "t_plateau_s": 240.0}


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    """The MS2 kernel of the construct, shared by `fit-radius` and `events`: --t-rise-s, --t-plateau-s (None when not
    given: `_kernel_args` fills in `KERNEL_DEFAULTS_S`, or a loaded model's own kernel)."""
    p.add_argument(
        "--t-rise-s",
        type=_number(float, 0, strict=True, unit=" s"),
        default=None,
        help="MS2 kernel: rise time of the construct's loops in s (default: 120)",
    )
    p.add_argument(
        "--t-plateau-s",
        type=_number(float, 0, unit=" s"),
        default=None,
        help="MS2 kernel: plateau (loops to the end of the gene) in s (default: 240)",
    )


def _kernel_args(args, given: dict | None = None) -> dict:
    "{t_rise_s, t_plateau_s} from the options, else from `given` (a loaded model's kernel), else `KERNEL_DEFAULTS_S`."
    base = given or KERNEL_DEFAULTS_S
    return {k: base[k] if getattr(args, k) is None else getattr(args, k) for k in KERNEL_DEFAULTS_S}


def _auto_fit_or_number(text: str) -> float | str:
    "`--ms2-baseline` (MS2 units to subtract) and `--bleaching` (a decay rate, 1/h, to hold): 'auto', 'fit' or a finite number."
    return text if text in ("auto", "fit") else _number(float)(text)


def _n_boot(text: str) -> int:
    "`--n-boot`: 0 (no interval) or at least `radius.MIN_BOOT` resamples."
    from .radius import MIN_BOOT

    value = _number(int, 0)(text)
    if 0 < value < MIN_BOOT:
        raise argparse.ArgumentTypeError(
            f"must be 0 (no interval) or >= {MIN_BOOT} resamples (fewer leave the interval's tails empty), got {text}"
        )
    return value


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path.cwd()


def _probe_writable(folder: Path) -> None:
    "Raise the OSError that writing into `folder` would raise (a real probe: permission bits do not bind root)."
    if not folder.is_dir():
        raise NotADirectoryError(20, "not a folder", str(folder))
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise type(err)(err.errno, f"cannot write there ({err.strerror})", str(folder)) from None


def check_output_file(out: str | Path, inputs=(), force: bool = False) -> Path:
    """Refuse, before any work (`core.check_output_path`): an output file that is an input, a folder, or in a place
    that cannot be written; and, unless `force`, an existing file that is not an earlier fit (JSON with `r_c_nm`)."""
    from .core import OutputError, check_output_path

    out = check_output_path(out, inputs=inputs, force=force, kind="file")
    if out.exists() and not force:
        try:
            earlier = json.loads(out.read_text())
        except (UnicodeDecodeError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and "r_c_nm" in earlier):
            raise OutputError(
                f"{out}: exists and is not an earlier fit-radius output; choose another --out, or use --force to replace it"
            )
    _probe_writable(_nearest_existing(out.absolute().parent))
    return out


def check_output_folder(out: str | Path, force: bool = False) -> Path:
    """Refuse, before any work (`core.check_output_path`): an output folder that is a file or in a place that cannot
    be written; and, unless `force`, a folder that holds anything (another run, or the user's files)."""
    from .core import OutputError, check_output_path

    out = check_output_path(out, force=force, kind="folder")
    if out.is_dir() and (held := sorted(p.name for p in out.iterdir())) and not force:
        shown = ", ".join(held[:4]) + (", …" if len(held) > 4 else "")
        raise OutputError(
            f"{out}: already holds files ({shown}); choose a new or empty folder, or use --force to replace the "
            f"folder as a whole"
        )
    _probe_writable(_nearest_existing(out.absolute()))
    return out


def _check_device(name: str) -> None:
    "Parse and check `--device` before any work: a bad name or CUDA without CUDA is a usage error."
    from .core import get_device

    try:
        get_device(name)
    except RuntimeError as err:
        raise UsageError(f"argument --device: {err}") from None


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
    _check_device(args.device)
    check_output_folder(args.out, force=args.force)
    tracks, truth = write_simulation(
        args.out, args.n, params, seed=args.seed, device=args.device, fmt=args.format, force=args.force
    )
    print(
        f"wrote {tracks} and {truth} ({args.n} traces x {args.frames} frames, r_c = {args.rc:g} nm, "
        f"sigma_loc = {args.sigma_loc:g} nm, seed {args.seed})"
    )
    return 0


def _fmt_nm(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _cmd_fit_radius(args) -> int:
    if not Path(args.tracks).is_file():
        raise FileNotFoundError(2, "no such file", args.tracks)
    check_output_file(args.out, inputs=[args.tracks], force=args.force)
    if args.states is not None:
        from .core import check_output_path

        check_output_path(args.states, inputs=[args.tracks, args.out], force=args.force, kind="file")
    if args.state_from == "none":
        return _fit_radius_marginal(args)
    from .radius import fit_radius

    if args.states is not None:
        raise ValueError("--states needs the marginal model (no --state-from): the state is given here")
    res = fit_radius(
        args.tracks,
        args.out,
        sigma_loc_nm=40.0 if args.sigma_loc is None else args.sigma_loc,
        state_from="truth" if args.state_from == "column" else args.state_from,
        n_boot=args.n_boot,
        seed=args.seed,
        dt_s=args.dt,
        sanity=not args.no_sanity,
    )
    for warning in res.get("warnings") or ():
        print(f"xai-hsg fit-radius: warning: {warning}", file=sys.stderr)
    lo, hi = res.get("r_c_interval_nm") or (None, None)
    h = res["heldout"]
    gain = f", held-out gain {h['test_gain_nats_per_event']:.2f} nats/event over no distance" if h else ""
    print(
        f"r_c = {_fmt_nm(res['r_c_nm'])} nm ({100 * res['ci']:.0f}% interval {_fmt_nm(lo)}-{_fmt_nm(hi)}), "
        f"k_on = {res['k_on_per_s']:.3g}/s, k_off = {res['k_off_per_s']:.3g}/s, {res['n_events']} activations{gain}; "
        f"wrote {args.out}"
    )
    return 0


def _fit_radius_marginal(args) -> int:
    "`fit-radius` without a state: `marginal.fit_radius_marginal`."
    from .marginal import fit_radius_marginal

    res = fit_radius_marginal(
        args.tracks,
        args.out,
        sigma_loc_nm=args.sigma_loc,
        **_kernel_args(args),
        emission_order=args.emission_order,
        emission=args.emission,
        ms2_baseline=args.ms2_baseline,
        bleaching=args.bleaching,
        seed=args.seed,
        dt_s=args.dt,
        sanity=not args.no_sanity,
        states_out=args.states,
        anchor=args.bridge_anchor,
        progress=True,
    )
    for warning in res.get("warnings") or ():
        print(f"xai-hsg fit-radius: warning: {warning}", file=sys.stderr)
    lo, hi = res["r_c_interval_nm"]
    s = res["sigma_loc"]
    sigma = f"σ_loc = {res['sigma_loc_nm']:.1f} nm" + (
        f" (estimated, {_fmt_nm(s.get('lo_nm'))}-{_fmt_nm(s.get('hi_nm'))})" if "given" not in s else " (given)"
    )
    h = res["heldout"]
    gain = f", held-out gain {h['test_gain_nats_per_frame']:.4f} nats/frame over no distance" if h else ""
    states = f" and {args.states}" if args.states else ""
    print(
        f"r_c = {_fmt_nm(res['r_c_nm'])} nm ({100 * res['ci']:.0f}% profile-likelihood interval {_fmt_nm(lo)}-{_fmt_nm(hi)}), "
        f"k_on = {res['k_on_per_s']:.3g}/s, k_off = {res['k_off_per_s']:.3g}/s, {sigma}, "
        f"{res['expected_activations']:.0f} expected activations{gain}; wrote {args.out}{states}"
    )
    return 0


def _cmd_events(args) -> int:
    "`events`: the binary-latent VAE of MS2 (`vae.events_table`), one row per frame; trained here or `--model`."
    from .core import atomic_write, check_output_path

    if not Path(args.ms2_file).is_file():
        raise FileNotFoundError(2, "no such file", args.ms2_file)
    _check_device(args.device)
    out = check_output_path(args.out, inputs=[args.ms2_file], force=args.force, kind="file")
    if out.exists() and not args.force:
        raise ValueError(f"{out}: exists; choose another --out, or use --force to replace it")
    _probe_writable(_nearest_existing(out.absolute().parent))
    import torch

    from .vae import MS2EventModel, events_table

    model = None
    if args.model is not None:
        model = MS2EventModel.load(args.model, device=args.device)
        own = {k: getattr(model.cfg, k) for k in KERNEL_DEFAULTS_S}
        if _kernel_args(args, own) != own:
            raise UsageError(f"--t-rise-s/--t-plateau-s differ from the kernel of --model {args.model}: {own}")
    torch.set_num_threads(args.threads)
    table, model = events_table(
        args.ms2_file,
        dt_s=args.dt,
        wide=args.wide,
        model=model,
        upsample=args.upsample,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        causal=args.causal,
        progress=True,
        **_kernel_args(args),
    )
    atomic_write(out, lambda p: table.to_csv(p, index=False))
    if args.save_model is not None:
        model.save(args.save_model)
    fit = model.learned()
    saved = f" and the model to {args.save_model}" if args.save_model is not None else ""
    print(
        f"{table.trace_id.nunique()} traces, {len(table)} frames: {table.expected_loadings.sum():.0f} expected loadings, "
        f"P(ON) > 0.5 in {100 * (table.p_on > 0.5).mean():.0f}% of frames; one Pol II = {fit['amplitude']:.3g} MS2 "
        f"units, k_on = {fit['k_on_per_s']:.3g}/s, k_off = {fit['k_off_per_s']:.3g}/s; wrote {out}{saved}"
    )
    return 0


def _cmd_train_sae(args) -> int:
    "`train-sae`: a sparse autoencoder on a .npy array or a hidden-state store layer (`sae.train_sae`)."
    _check_device(args.device)
    import torch

    from .sae import train_sae

    torch.set_num_threads(args.threads)
    m = train_sae(
        args.activations,
        args.out,
        kind=args.kind,
        latents=args.latents,
        k=args.k,
        l1=args.l1,
        epochs=args.epochs,
        layer=args.layer,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(
        f"{m['split']} tokens: {m['n_tokens']:,}; FVU {m['fvu']:.4f}, L0 {m['l0']:.2f}, dead {m['dead_fraction']:.1%}, "
        f"dense {m['dense_fraction']:.1%} ({m['steps']} steps in {m['seconds']:.0f} s); wrote {args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    parser = _Parser(prog="xai-hsg", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "reproduce", parents=[common], help="execute the notebook chain with papermill, then render the manuscript"
    )
    p.add_argument("--profile", default="smoke", help="profiles/<name>.yml or a YAML path (default: smoke)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (number or name)")
    p.add_argument("--from", dest="start", metavar="NN", help="run this notebook and every later one")
    p.add_argument("--force", action="store_true", help="re-run selected notebooks even when cached")
    p.add_argument("--no-render", action="store_true", help="skip rendering the manuscript")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "render", parents=[common], help="render paper/ to HTML and PDF from results/ and figures/ of a profile"
    )
    p.add_argument("--profile", default="smoke")
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "quarto", "pandoc"],
        help="quarto if on PATH (auto), else pandoc + typst",
    )
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser(
        "simulate",
        parents=[common],
        help="simulate EP-distance + MS2 traces with ground truth (tracks file + truth.json)",
    )
    p.add_argument("--n", type=_number(int, 1), default=100, help="number of traces (default: 100)")
    p.add_argument("--rc", type=_number(float), default=100.0, help="contact radius r_c in nm (default: 100)")
    p.add_argument(
        "--sigma-loc",
        type=_number(float, 0, unit=" nm"),
        default=40.0,
        help="localization error per spot and axis in nm (default: 40)",
    )
    p.add_argument("--frames", type=_number(int, 2), default=601, help="frames per trace, 30 s apart (default: 601)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--format", default="csv", choices=["csv", "parquet"], help="tracks file format (default: csv)")
    p.add_argument("--out", required=True, help="output folder (new or empty): writes tracks.csv and truth.json")
    p.add_argument("--force", action="store_true", help="replace a folder that holds another run, as a whole")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "fit-radius",
        parents=[common],
        help="maximum-likelihood contact radius (nm, with interval) from distances and MS2 (or a given state)",
    )
    p.add_argument("tracks", help="tracks file (CSV or Parquet, any layout; gaps allowed)")
    p.add_argument(
        "--out", required=True, help="output JSON: radius in nm with interval, k_on, k_off, held-out metrics"
    )
    p.add_argument(
        "--sigma-loc",
        type=_number(float, 0, unit=" nm"),
        default=None,
        help="localization error per spot and axis in nm (default: estimated from the data; 40 with --state-from)",
    )
    p.add_argument(
        "--state-from",
        default="none",
        choices=["none", "truth", "column", "ms2"],
        help="none (default): the promoter state is summed out (marginal model, MS2 and distances only); "
        "truth/column: the file's 'state' column; ms2: HMM state calls (crude baseline)",
    )
    p.add_argument("--states", default=None, help="marginal model: write per-frame P(ON) and expected loadings (CSV)")
    _add_kernel_args(p)
    p.add_argument(
        "--emission-order",
        type=_number(int, 0),
        default=None,
        help="marginal model: MS2 frames conditioned on this many previous frames "
        "(default: max(2, kernel length in frames / 3), 4 at 30-s frames)",
    )
    p.add_argument(
        "--emission",
        default="gaussian",
        choices=["gaussian", "counts"],
        help="marginal model: MS2 given the promoter path as a Gaussian matched to the Poisson loadings' moments "
        "(default) or with the loading counts in the compound state (exact for sparse loadings, ~0.5 per minute; "
        "fits frames >= 60 s apart with the default kernel)",
    )
    p.add_argument(
        "--ms2-baseline",
        type=_auto_fit_or_number,
        default="fit",
        help="marginal model: the MS2 level with no Pol II on the gene. fit (default): read from the frames called OFF "
        "over a whole kernel window, taken out, and what is left fitted with the model; auto: so only when the level "
        "read exceeds 0.1 of their noise, else held at 0; a value: subtracted and held (0: the MS2 as it is)",
    )
    p.add_argument(
        "--bleaching",
        type=_auto_fit_or_number,
        default="auto",
        help="marginal model: the decay rate of the MS2 amplitude over the frames, exp(-rate * t), per hour "
        "(photobleaching). auto (default): held at 0 unless a score test finds the amplitude changing (|z| > 3), then "
        "fitted; fit: always fitted; a value: held there (0: no decay)",
    )
    p.add_argument(
        "--bridge-anchor",
        default="smoothed",
        choices=["smoothed", "observed"],
        help="marginal model: bridge each frame interval on the Kalman-smoothed E-P vectors (default; all frames inform "
        "each end) or on its two observed ends (the earlier model, biased low under localization noise)",
    )
    p.add_argument(
        "--n-boot",
        type=_n_boot,
        default=200,
        help="with --state-from: bootstrap resamples over traces, 0 (no interval) or at least 20 (default: 200)",
    )
    p.add_argument(
        "--dt",
        type=_number(float, 0, strict=True, unit=" s"),
        default=None,
        help="frame interval in s (default: from the file)",
    )
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument(
        "--no-sanity",
        action="store_true",
        help="accept a file whose units look implausible (frame step, distances, MS2) and list the problems",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file that is not an earlier fit")
    p.set_defaults(func=_cmd_fit_radius)

    p = sub.add_parser(
        "events",
        parents=[common],
        help="Pol II loading events and promoter state from MS2 alone (binary-latent VAE), one row per frame",
    )
    p.add_argument("ms2_file", help="tracks file with an ms2 column (CSV or Parquet, any layout), or --wide")
    p.add_argument("--out", required=True, help="output CSV: trace_id, t_s, expected_loadings, p_on")
    _add_kernel_args(p)
    p.add_argument(
        "--dt",
        type=_number(float, 0, strict=True, unit=" s"),
        default=None,
        help="frame interval in s (default: from the file; 20 with --wide)",
    )
    p.add_argument("--wide", action="store_true", help="the file is in burstInfer's wide layout (one row per cell)")
    p.add_argument("--upsample", type=int, choices=[1, 2, 4, 8], default=2, help="latent bins per frame (default: 2)")
    p.add_argument("--epochs", type=_number(int, 1), default=60, help="training epochs (default: 60)")
    p.add_argument("--causal", action="store_true", help="online variant: P(ON) and loadings from frames <= t only")
    p.add_argument(
        "--model", default=None, metavar="DIR", help="apply a model saved by --save-model instead of training one"
    )
    p.add_argument("--save-model", default=None, metavar="DIR", help="also save the fitted model to this folder")
    p.add_argument("--threads", type=_number(int, 1), default=1, help="CPU threads for training (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_events)

    p = sub.add_parser(
        "train-sae", parents=[common], help="train a sparse autoencoder on LM activations (SAELens layout)"
    )
    p.add_argument("activations", help=".npy array [tokens, d_in], or a hidden-state store folder (with --layer)")
    p.add_argument("--out", required=True, help="output folder: cfg.json, sae_weights.safetensors, metrics.json")
    p.add_argument("--kind", choices=["batchtopk", "topk", "l1", "matryoshka"], default="batchtopk")
    p.add_argument("--latents", type=_number(int, 1), default=None, help="latents (default: 8 x d_in)")
    p.add_argument("--k", type=_number(int, 1), default=32, help="active latents per token (default: 32)")
    p.add_argument("--l1", type=_number(float, 0), default=1.0, help="L1 coefficient for --kind l1 (default: 1)")
    p.add_argument("--epochs", type=_number(int, 1), default=10)
    p.add_argument("--layer", type=_number(int, 0), default=None, help="hidden_states index of a store")
    p.add_argument("--batch-size", type=_number(int, 1), default=4096, help="tokens per batch (default: 4096)")
    p.add_argument("--threads", type=_number(int, 1), default=1, help="CPU threads (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.set_defaults(func=_cmd_train_sae)
    return parser


def _one_line(err: BaseException) -> str:
    "The error as one line: an OSError as 'file: reason', a YAML error with its line and column, the rest by str."
    import yaml

    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else ""
        text = f"{where}: {err.strerror}" if where else err.strerror
    elif isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        text = f"{where}YAML syntax error: {err.problem}" + (f" ({err.context})" if err.context else "")
    else:
        text = str(err) or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _package_folder(name: str) -> str | None:
    "The folder of an installed package (with a trailing separator), found without importing it; None if absent."
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) + os.sep if spec is not None and spec.origin else None


# where a KeyboardInterrupt is unsafe (see `_interrupts_outside_native_code`): packages whose Python code native code
# calls or shares memory with, and the file names of Cython frames (pandas, pyarrow, scipy, sklearn)
_NATIVE_PACKAGES = ("torch", "pandas", "pyarrow")
_COMPILED_SUFFIXES = (".pyx", ".pxi", ".pxd")


@contextlib.contextmanager
def _interrupts_outside_native_code(retry_s: float = 0.02):
    """Deliver Ctrl-C (SIGINT) as a KeyboardInterrupt only where no frame of native-backed libraries or of an import is
    on the stack.

    A KeyboardInterrupt raised in Python code that native code called, or that shares memory with it, can kill the
    process instead of ending it with status 130: under torch's C++ (its import, its lazy imports, autograd callbacks) it
    escapes as a C++ exception and aborts (`terminate called after throwing ... pybind11::error_already_set`, SIGABRT);
    inside pandas' `read_csv` (3.1 parses a file in threads over a memory map; its columns go through pyarrow's Cython)
    it ended `fit-radius` with SIGSEGV (1 of 10 interrupted runs in CI); inside an import of an extension module
    (scipy's HiGHS) it becomes an ImportError. So while a frame of torch, pandas, pyarrow, compiled (Cython) code or an
    import is on the stack the interrupt waits and is tried again `retry_s` later; it is raised in our own code, at the
    latest when the block ends. Only the main thread may set handlers; an ignored SIGINT stays ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield
        return
    pending, active = threading.Event(), threading.Event()
    folders = [_package_folder(name) for name in _NATIVE_PACKAGES]
    unsafe_prefixes = ("<frozen importlib", *(folder for folder in folders if folder))

    def retry():
        if active.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    def handler(signum, frame):
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(unsafe_prefixes) or name.endswith(_COMPILED_SUFFIXES):
                pending.set()
                threading.Timer(retry_s, retry).start()
                return
            frame = frame.f_back
        pending.clear()
        raise KeyboardInterrupt

    active.set()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        active.clear()
        signal.signal(signal.SIGINT, previous)
    if pending.is_set():
        raise KeyboardInterrupt


_INTERRUPTED = {
    "reproduce": "interrupted; finished notebooks stay cached, the interrupted one's results, figures and tables "
    "were cleared (run the same command again to finish)",
}


def main(argv: list[str] | None = None) -> int:
    "Run `xai-hsg`; returns the exit status (0 ok, 1 data or runtime error, 2 usage error, 130 interrupted)."
    import yaml

    args = None
    try:
        # the whole run, parsing included: some arguments' checks import torch (see `_interrupts_outside_native_code`)
        with _interrupts_outside_native_code():
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed as one line
                return stop.code if isinstance(stop.code, int) else EXIT_USAGE
            return args.func(args)
    except KeyboardInterrupt:
        if args is not None and args.debug:
            raise
        command = "xai-hsg" if args is None else f"xai-hsg {args.command}"
        what = "interrupted" if args is None else _INTERRUPTED.get(args.command, "interrupted")
        print(f"{command}: error: {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as err:
        if args.debug:
            raise
        command = f"xai-hsg {args.command}"
        print(f"{command}: error: {_one_line(err)} (see {command} --help)", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError, yaml.YAMLError) as err:
        if args is None or args.debug:
            raise
        print(f"xai-hsg {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_DATA


if __name__ == "__main__":
    sys.exit(main())
