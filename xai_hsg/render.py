"""Render the Quarto manuscript in `paper/` to HTML and PDF.

Numbers reach the manuscript as Quarto variables: `write_variables` turns `results/<profile>/*.json` into
`paper/_variables.yml` (`{{< var simulation.msd_slope >}}`); figures are copied from `figures/<profile>/`
to `paper/figures/` and tables (`core.save_table`) from `tables/<profile>/` to `paper/tables/`, where the manuscript
includes them (`{{< include tables/tbl-x.md >}}`). With `quarto` on PATH, Quarto renders the manuscript project. Without it (it cannot be
installed offline), the same `index.qmd` goes through pandoc (`pypandoc-binary`) with a Lua filter for
Quarto-style figure and table numbering and `@fig-` / `@tbl-` cross-references, to standalone HTML and, via Typst (`typst`), to PDF.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import core
from .core import format_value  # the manuscript's number format lives in core (save_table uses it too)

__all__ = [
    "RenderError",
    "check_profile",
    "format_value",
    "collect_variables",
    "write_variables",
    "substitute_variables",
    "expand_includes",
    "manuscript_text",
    "render_paper",
]

_VAR_RE = re.compile(r"\{\{<\s*var\s+([^\s>]+)\s*>\}\}")
_SHORTCODE_RE = re.compile(r"\{\{<.*?>\}\}")
_INCLUDE_RE = re.compile(r"^\{\{<\s*include\s+(\S+)\s*>\}\}\s*$")
_FIGURE_PATH_RE = re.compile(r"\]\((figures/[^)\s]+)")


class RenderError(RuntimeError):
    "The manuscript could not be rendered; the message says where and why."


def stage_variable_name(stage: str) -> str:
    "`01_simulation` -> `simulation`: variables read `{{< var simulation.key >}}`."
    return re.sub(r"^\d+_", "", stage)


def collect_variables(profile: str, root: str | Path | None = None) -> dict:
    "All results of `profile`, formatted, keyed by stage name without its number."
    results_dir = core.paths(profile, root).results
    variables: dict = {"profile": profile}
    for f in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except ValueError as e:
            raise RenderError(f"{f}: not valid JSON ({e}); re-run the notebook that writes it") from None
        variables[stage_variable_name(f.stem)] = format_value(data)
    return variables


def write_variables(profile: str, root: str | Path | None = None, variables: dict | None = None) -> Path:
    "Write `paper/_variables.yml` from `results/<profile>/` (read by Quarto and by the fallback renderer)."
    out = core.paths(profile, root).paper / "_variables.yml"
    header = f"# Written by xai-hsg from results/{profile}/ — do not edit; edit the notebooks instead.\n"
    variables = collect_variables(profile, root) if variables is None else variables
    text = header + yaml.safe_dump(variables, sort_keys=True, allow_unicode=True)
    return core.atomic_write(out, lambda p: p.write_text(text))


def _lookup(variables: dict, name: str):
    node: Any = variables
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(name)
        node = node[part]
    if isinstance(node, dict):
        raise KeyError(name)
    return node


def _known_names(variables: dict, prefix: str = "") -> list[str]:
    names = []
    for k, v in variables.items():
        names += _known_names(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return names


def substitute_variables(text: str, variables: dict, source: str = "index.qmd") -> str:
    "Replace `{{< var a.b >}}` by its value; an unknown variable or another shortcode is an error naming the line."

    def replace(m: re.Match, lineno: int) -> str:
        try:
            return str(_lookup(variables, m.group(1)))
        except KeyError:
            near = [n for n in _known_names(variables) if n.split(".")[0] == m.group(1).split(".")[0]]
            raise RenderError(
                f"{source}:{lineno}: unknown variable {m.group(1)!r} (has its notebook run and saved it "
                f"with core.save_results?); known here: {near or sorted(variables)}"
            ) from None

    lines = []
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        line = _VAR_RE.sub(lambda m, lineno=lineno: replace(m, lineno), line)
        if other := _SHORTCODE_RE.search(line):
            raise RenderError(
                f"{source}:{lineno}: the fallback renderer supports only {{{{< var ... >}}}}, not {other.group(0)}"
            )
        lines.append(line)
    return "".join(lines)


def _stage_outputs(source: Path, staged: Path, suffixes: tuple) -> Path:
    "Copy the files of `source` with these suffixes into the new folder `staged` (swapped in later by `_swap_in`)."
    staged.mkdir(parents=True)
    if source.is_dir():
        for f in source.iterdir():
            if f.suffix in suffixes:
                shutil.copy2(f, staged / f.name)
    return staged


def _swap_in(staged: Path, target: Path) -> Path:
    "Replace the folder `target` by `staged` as a whole (a stale file of an earlier run must not survive)."
    trash = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, trash)
    os.replace(staged, target)
    shutil.rmtree(trash, ignore_errors=True)
    return target


_STAGED = ("figures", "tables")


def _update_paper(profile: str, root: Path, variables: dict, check_text: bool) -> None:
    """Copy the profile's figures and tables into `paper/` and write `_variables.yml`, after checking (`check_text`)
    that the manuscript's variables, includes and figures resolve: a failed check leaves `paper/` as it was."""
    where = core.paths(profile, root)
    staged = where.paper / f".render-stage-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        _stage_outputs(where.tables, staged / "tables", (".md", ".csv"))
        _stage_outputs(where.figures, staged / "figures", (".png", ".svg"))
        if check_text:
            manuscript_text(where.paper, variables, staged)
        for name in _STAGED:
            _swap_in(staged / name, where.paper / name)
        write_variables(profile, root, variables)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def check_profile(profile: str, root: str | Path | None = None) -> Path:
    """Before anything is written: `profile` is known (a `profiles/<name>.yml` or a results folder) and has results;
    returns `results/<profile>/`."""
    where = core.paths(profile, root)
    known = sorted(
        {p.stem for p in where.profiles.glob("*.yml")}
        | {p.name for p in where.results.parent.glob("*") if p.is_dir() and any(p.glob("*.json"))}
    )
    if profile not in known and not where.results.is_dir():
        raise RenderError(f"no profile {profile!r} (known: {', '.join(known) or 'none'})")
    if not any(where.results.glob("*.json")):
        raise RenderError(
            f"no results for profile {profile!r} in {where.results}; run the chain first: "
            f"xai-hsg reproduce --profile {profile}"
        )
    return where.results


def expand_includes(text: str, base: Path, source: str = "index.qmd", resolve=None) -> str:
    """Quarto's `{{< include path >}}` (alone on its line) for the fallback renderer; a missing file is an error naming
    the line. `resolve(relative path) -> Path` overrides `base / path` (to check staged outputs before they move in)."""
    lines = []
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        if m := _INCLUDE_RE.match(line.strip()):
            f = resolve(m.group(1)) if resolve else base / m.group(1)
            if not f.is_file():
                raise RenderError(
                    f"{source}:{lineno}: included file {m.group(1)!r} not found in {base} — did the notebook "
                    f"that writes it (core.save_table) run for this profile?"
                )
            line = f.read_text().rstrip("\n") + "\n"
        lines.append(line)
    return "".join(lines)


def _asset(name: str) -> str:
    return str(resources.files("xai_hsg") / "assets" / name)


def _pandoc(args: list[str], cwd: Path) -> None:
    import pypandoc

    proc = subprocess.run([pypandoc.get_pandoc_path(), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RenderError(f"pandoc failed ({' '.join(args)}):\n{proc.stderr.strip()}")
    if unresolved := re.findall(r"Citeproc: citation (\S+) not found", proc.stderr):
        raise RenderError(f"citations not found in the bibliography: {sorted(set(unresolved))}")


def _project_metadata(paper: Path) -> list[str]:
    "Project-level options of `_quarto.yml` that pandoc needs too (bibliography, csl)."
    config = paper / "_quarto.yml"
    data = (yaml.safe_load(config.read_text()) or {}) if config.exists() else {}
    args = []
    bibs = data.get("bibliography") or []
    for bib in [bibs] if isinstance(bibs, str) else bibs:
        if not (paper / bib).is_file():
            raise RenderError(f"{config}: bibliography {bib!r} not found in {paper}")
        args += ["--bibliography", bib]
    if csl := data.get("csl"):
        args += ["--csl", csl]
    return args


def manuscript_text(paper: Path, variables: dict, staged: Path | None = None) -> str:
    """`index.qmd` with its includes expanded and its variables substituted, every figure it shows checked to exist;
    with `staged`, `figures/` and `tables/` are read from there (outputs not yet moved into `paper/`)."""
    qmd = paper / "index.qmd"

    def resolve(rel: str) -> Path:
        return (staged if staged is not None and rel.split("/")[0] in _STAGED else paper) / rel

    text = expand_includes(qmd.read_text(), paper, source=str(qmd), resolve=resolve)
    text = substitute_variables(text, variables, source=str(qmd))
    missing = sorted({p for p in _FIGURE_PATH_RE.findall(text) if not resolve(p).exists()})
    if missing:
        raise RenderError(
            f"{qmd}: figures not found: {missing} — did the notebook that makes them run for this profile?"
        )
    return text


def render_with_pandoc(paper: Path, variables: dict) -> dict:
    "The Quarto-free path: pandoc + Lua cross-references → HTML; pandoc → Typst → PDF."
    import typst

    text = manuscript_text(paper, variables)
    out = paper / "_output"
    out.mkdir(exist_ok=True)
    source = paper / ".render-index.md"
    core.atomic_write(source, lambda p: p.write_text(text), fsync=False)
    common = [
        source.name,
        "--from",
        "markdown",
        "--lua-filter",
        _asset("crossref.lua"),
        "--citeproc",
        *_project_metadata(paper),
        "--resource-path",
        str(paper),
    ]
    try:
        html = out / "index.html"
        _pandoc(
            [
                *common,
                "--to",
                "html5",
                "--standalone",
                "--embed-resources",
                "--css",
                _asset("paper.css"),
                "--mathml",
                "--section-divs",
                "--output",
                str(html),
            ],
            cwd=paper,
        )
        typ = paper / ".render-index.typ"  # next to the figures so that typst resolves their relative paths
        _pandoc([*common, "--to", "typst", "--standalone", "--output", typ.name], cwd=paper)
        pdf = out / "index.pdf"
        try:
            typst.compile(str(typ), output=str(pdf), root=str(paper))
        except Exception as e:
            raise RenderError(f"typst failed on {typ}: {e}") from e
        shutil.copy2(typ, out / "index.typ")
    finally:
        source.unlink(missing_ok=True)
        (paper / ".render-index.typ").unlink(missing_ok=True)
    return {"engine": "pandoc+typst", "html": html, "pdf": pdf}


def render_with_quarto(paper: Path) -> dict:
    proc = subprocess.run(["quarto", "render", str(paper)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RenderError(f"quarto render failed:\n{proc.stderr.strip()[-4000:]}")
    out = paper / "_output"
    return {"engine": "quarto", "html": out / "index.html", "pdf": out / "index.pdf"}


def render_paper(profile: str = "smoke", root: str | Path | None = None, engine: str = "auto", console=None) -> dict:
    "Write the variables, copy the figures and render `paper/` with Quarto if present, else pandoc + Typst."
    root = Path(root).resolve() if root else core.find_root()
    paper = root / "paper"
    if not (paper / "index.qmd").is_file():
        raise RenderError(f"no manuscript at {paper / 'index.qmd'}")
    if engine not in ("auto", "quarto", "pandoc"):
        raise ValueError(f"engine must be auto, quarto or pandoc, not {engine!r}")
    use_quarto = engine == "quarto" or (engine == "auto" and shutil.which("quarto"))
    if engine == "quarto" and not shutil.which("quarto"):
        raise RenderError("engine='quarto' but quarto is not on PATH")
    check_profile(profile, root)  # nothing in paper/ changes before the profile, its results and the text check out
    variables = collect_variables(profile, root)
    _update_paper(profile, root, variables, check_text=not use_quarto)
    result = render_with_quarto(paper) if use_quarto else render_with_pandoc(paper, variables)
    if console is not None:
        console.print(
            f"rendered manuscript ({result['engine']}): {result['html'].relative_to(root)}, "
            f"{result['pdf'].relative_to(root)}",
            soft_wrap=True,
        )
    return result
