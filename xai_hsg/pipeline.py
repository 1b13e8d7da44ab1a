"""Run the numbered notebooks of `nbs/` in order with papermill: cached, with progress, failing loudly.

A *stage* is one notebook `nbs/NN_name.ipynb`. Its cache key (`plan_stages`, `stage_keys`) hashes its code cells, the
parameters the profile gives it, the keys of the stages it needs and the code version of exactly the library
modules its code reaches (`core.code_version` of the import closure of what its cells import, plus the module it
exports): a docstring edit in the renderer re-runs nothing, an edit of `simulate.py` re-runs the stages that use it
and their downstream. A stage whose key is unchanged since its last successful run is skipped. A stage needs every
earlier stage unless its `parameters` cell says otherwise with a comment line `# needs: 01_simulation, 02_ep_ms2`
(or `# needs: none`).

A stage writes its outputs (results, figures, tables, its artifact folder, the executed notebook) into a hidden staging
folder `runs/<profile>/.NN_name.tmp-…` (`core.Staging`, `core.output_folder`); when it has finished they move into
place in one commit (`_commit`): the staging folder is renamed to `runs/<profile>/.NN_name.commit` (the commit point),
holding a manifest of the moves, the stale files to delete and the stage's new `_state.json` entry, which
`_finish_commit` then carries out. Every step is repeatable, and `reproduce` (also `finish_pending_commits`) first
finishes a commit that an interruption left pending: a stage's outputs are those of its last complete run or of the
new one, never a mix, and its key is recorded only with its outputs in place.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat

from . import core

__all__ = [
    "PipelineError",
    "Stage",
    "StagePlan",
    "parse_stage",
    "discover_stages",
    "select_stages",
    "stage_modules",
    "plan_stages",
    "stage_keys",
    "finish_pending_commits",
    "reproduce",
]

STAGE_GLOB = "[0-9][0-9]_*.ipynb"
_NEEDS_RE = re.compile(r"^#\s*needs:\s*(.*)$", re.M)
_DEFAULT_EXP_RE = re.compile(r"^#\|\s*default_exp\s+(\S+)", re.M)
_TABLE_LABEL_RE = re.compile(r"""(?<![\w-])["'](tbl-[A-Za-z0-9_-]+)["']""")
_MAGIC_RE = re.compile(r"^\s*[%!].*$", re.M)  # IPython magics and shell lines are not Python


class PipelineError(RuntimeError):
    "A stage could not be prepared or failed; the message names the notebook (and cell)."


@dataclass(frozen=True)
class Stage:
    "One notebook of the chain."

    name: str  # "01_simulation"
    path: Path
    declared: dict  # parameter name -> default (from the parameters cell)
    needs: tuple | None  # stage names, or None for "every earlier stage"
    source_hash: str  # hash of the code cells
    figure_labels: tuple  # labels of `#| label: fig-...` cells
    modules: tuple = ()  # xai_hsg modules its code cells import, and the one it exports (`#| default_exp`)
    table_labels: tuple = ()  # 'tbl-...' labels named in its code cells (core.save_table)

    @property
    def number(self) -> str:
        return self.name[:2]


def _declared_parameters(source: str, path: Path) -> dict:
    "Top-level assignments of a parameters cell, with literal defaults where they are literals."
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise PipelineError(f"{path}: the parameters cell does not parse: {e}") from e
    declared = {}
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    declared[t.id] = ast.literal_eval(node.value) if node.value is not None else None
                except ValueError:
                    declared[t.id] = ast.unparse(node.value)
    return declared


def parse_stage(path: str | Path) -> Stage:
    "Read a notebook into a `Stage`; a missing or doubled `parameters` cell is an error, not a silent default."
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code_cells if "parameters" in (c.metadata.get("tags") or [])]
    if not tagged:
        raise PipelineError(
            f"{path}: no cell is tagged 'parameters'. Papermill would ignore the profile's parameters "
            f"for this notebook; tag the cell holding `profile = ...` with 'parameters'."
        )
    if len(tagged) > 1:
        raise PipelineError(f"{path}: {len(tagged)} cells are tagged 'parameters'; keep exactly one.")
    source = tagged[0].source
    declared = _declared_parameters(source, path)
    if "profile" not in declared:
        raise PipelineError(f'{path}: the parameters cell must declare `profile = "smoke"` (the pipeline injects it).')
    needs = None
    if m := _NEEDS_RE.search(source):
        items = [s for s in re.split(r"[,\s]+", m.group(1).strip()) if s]
        needs = () if items in ([], ["none"]) else tuple(items)
    labels = tuple(label for c in code_cells if (label := core.cell_label(c.source)) and label.startswith("fig-"))
    return Stage(
        name=path.stem,
        path=path,
        declared=declared,
        needs=needs,
        source_hash=core.stable_hash([c.source for c in code_cells]),
        figure_labels=labels,
        modules=_notebook_modules(code_cells, path),
        table_labels=tuple(sorted({t for c in code_cells for t in _TABLE_LABEL_RE.findall(c.source)})),
    )


def _notebook_modules(code_cells: list, path: Path) -> tuple:
    "The `xai_hsg` modules the code cells import (any name imported from the package) and the module they export."
    found = set()
    for i, cell in enumerate(code_cells):
        try:
            found |= core.imported_modules(_MAGIC_RE.sub("", cell.source))
        except SyntaxError as e:
            raise PipelineError(f"{path}: code cell {i + 1} does not parse, so its imports are unknown: {e}") from e
        found.update(m.split(".")[0] for m in _DEFAULT_EXP_RE.findall(cell.source))
    return tuple(sorted(found))


def discover_stages(root: str | Path) -> list[Stage]:
    "All `nbs/NN_*.ipynb` of the repository at `root`, in order, with their `needs` checked."
    stages = [parse_stage(p) for p in sorted((Path(root) / "nbs").glob(STAGE_GLOB))]
    names = [s.name for s in stages]
    for i, s in enumerate(stages):
        for need in s.needs or ():
            if need not in names[:i]:
                raise PipelineError(f"{s.path}: needs {need!r}, which is not an earlier notebook ({names[:i]})")
    return stages


def _match(spec: str, stages: list[Stage]) -> Stage:
    hits = [s for s in stages if s.name == spec or s.number == spec or s.name.startswith(spec)]
    if len(hits) != 1:
        raise PipelineError(f"{spec!r} matches {len(hits)} notebooks; choose one of {[s.name for s in stages]}")
    return hits[0]


def select_stages(stages: list[Stage], only: Iterable[str] = (), start: str | None = None) -> list[Stage]:
    "The stages `--only` names (any of them), or those from `--from` on, or all."
    only = list(only or ())
    if only and start:
        raise PipelineError("use --only or --from, not both")
    if only:
        chosen = {_match(spec, stages).name for spec in only}
        return [s for s in stages if s.name in chosen]
    if start:
        first = _match(start, stages)
        return stages[stages.index(first) :]
    return list(stages)


def _needs_of(stage: Stage, stages: list[Stage]) -> list[str]:
    if stage.needs is not None:
        return list(stage.needs)
    names = [s.name for s in stages]
    return names[: names.index(stage.name)]


def stage_modules(stage: Stage, root: str | Path | None = None) -> tuple[str, ...]:
    """The library modules `stage` depends on: the import closure (`core.module_closure`) of the modules its code cells
    import, read from `<root>/xai_hsg` when the repository holds the library, else from the installed package."""
    lib_root = _library_root(root)
    known = core.library_modules(lib_root)
    return core.module_closure([m for m in stage.modules if m in known], lib_root)


def _library_root(root: str | Path | None) -> Path | None:
    "The repository whose `xai_hsg/` keys the stages: `root` if it holds the library, else None (the installed one)."
    return Path(root) if root and (Path(root) / "xai_hsg").is_dir() else None


@dataclass(frozen=True)
class StagePlan:
    "One stage as `reproduce` will treat it: the parameters it gets, its key, and the keys of the stages it needs."

    stage: Stage
    params: dict
    key: str
    upstream: tuple


def plan_stages(
    profile: core.Profile,
    stages: list[Stage],
    root: str | Path | None = None,
    selected: Iterable[Stage] | None = None,
    recorded: Mapping[str, str] | None = None,
) -> list[StagePlan]:
    """Key every stage of `selected` (default: all) without running anything: its code cells, its parameters, the code
    version of its library closure (`stage_modules`) and the keys of the stages it needs. A stage outside `selected`
    keeps its `recorded` key (its last successful run); a needed stage with no key is an error naming the command."""
    chosen = {s.name for s in (stages if selected is None else selected)}
    lib_root = _library_root(root)
    keys: dict[str, str] = {}
    plans = []
    for stage in stages:
        if stage.name not in chosen:
            if recorded and recorded.get(stage.name):  # not selected: downstream stages use its last run
                keys[stage.name] = recorded[stage.name]
            continue
        params = profile.params_for(stage.name, stage.declared)
        upstream = []
        for need in _needs_of(stage, stages):
            if need not in keys:
                raise PipelineError(
                    f"{stage.name} needs {need}, which has not run for profile {profile.name!r}; "
                    f"run it first: xai-hsg reproduce --profile {profile.name} --only {need[:2]}"
                )
            upstream.append(keys[need])
        version = core.code_version(stage_modules(stage, root), lib_root)
        key = core.cache_key({"notebook": stage.source_hash, "params": params}, upstream, version)
        keys[stage.name] = key
        plans.append(StagePlan(stage, params, key, tuple(upstream)))
    return plans


def _load(profile: str, root: str | Path | None) -> tuple[Path, core.Profile, list[Stage]]:
    "The repository root, its profile and its stages, checked against each other."
    root = Path(root).resolve() if root else core.find_root()
    prof = core.load_profile(profile, root=root)
    stages = discover_stages(root)
    if not stages:
        raise PipelineError(f"no notebooks matching nbs/{STAGE_GLOB} in {root}")
    prof.check({s.name: s.declared for s in stages})  # a key no notebook reads (`defaults: {sede: 5}`) is an error
    return root, prof, stages


def stage_keys(profile: str = "smoke", root: str | Path | None = None) -> dict[str, str]:
    "Every stage's key for `profile` in the repository at `root`, computed without running anything (see `plan_stages`)."
    root, prof, stages = _load(profile, root)
    return {plan.stage.name: plan.key for plan in plan_stages(prof, stages, root)}


class _State:
    "`runs/<profile>/_state.json`: last successful key and duration per stage."

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, name: str) -> dict:
        return self.data.get(name, {})

    @staticmethod
    def entry(key: str, seconds: float, tables: Iterable[str] = (), **extra) -> dict:
        """A successful run: its key, duration, the tables it wrote and (`extra`) e.g. `outputs`, the files it put
        in place (its next run deletes those it does not write again)."""
        return {
            "key": key,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "tables": sorted(tables),
            **extra,
        }

    def record(self, name: str, key: str, seconds: float, tables: Iterable[str] = (), **extra) -> None:
        "Record a successful run of `name` (see `entry`)."
        self.put(name, self.entry(key, seconds, tables, **extra))

    def put(self, name: str, entry: dict) -> None:
        """Record `entry` (made by `entry`) for `name`. Under a lock, the file is read again and only this entry
        changes: two runs of one profile at once (`--only 03` beside `--only 05`) keep each other's records."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)  # the lock is on the folder: no lock file left beside the state
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
            self.data[name] = dict(entry)
            core.write_json_atomic(self.path, self.data, sort_keys=False)
        finally:
            os.close(folder)  # closing the last descriptor releases the lock

    def keys(self) -> dict[str, str]:
        "Stage name -> key of its last successful run."
        return {name: entry["key"] for name, entry in self.data.items() if entry.get("key")}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _failure_message(stage: Stage, err, out_nb: Path) -> str:
    "Name the notebook, the cell (numbered as in the source notebook, from 1) and the error."
    cells = nbformat.read(stage.path, as_version=4).cells
    source = getattr(err, "source", None) or ""
    where = next((i for i, c in enumerate(cells) if c.cell_type == "code" and c.source == source), None)
    cell = (
        f"{where + 1} of {len(cells)}" if where is not None else f"#{getattr(err, 'exec_count', '?')} (execution count)"
    )
    first_line = next((ln for ln in source.splitlines() if ln.strip()), "")
    return (
        f"{stage.path.name} failed in cell {cell} ({first_line!r}): {err.ename}: {err.evalue}\n"
        f"  the executed notebook with the full traceback: {out_nb}"
    )


KERNEL = "python3"


def _ast_translator(stage: Stage):
    """Papermill's Python translator with its parameters-cell parser replaced by the pipeline's (`ast`).

    Papermill reads the parameters cell line by line and gives up on a line with two `=`, a comment included
    (`n_traces = 100  # paper: >= 1000`): it warns "Unable to parse line" and then "Passed unknown parameter" for a
    parameter it injects all the same. The pipeline has already parsed the cell with `ast` (`Stage.declared`) and
    refuses a parameter the cell does not declare (`Profile.params_for`), so papermill gets that list instead;
    injection (`translate_*`) is papermill's own."""
    from papermill.models import Parameter
    from papermill.translators import PythonTranslator

    class StageTranslator(PythonTranslator):
        @classmethod
        def inspect(cls, parameters_cell):
            return [Parameter(name, type(value).__name__, repr(value), "") for name, value in stage.declared.items()]

    return StageTranslator


@contextmanager
def _papermill_parameters(stage: Stage, params: dict):
    "Papermill inspects the parameters cell with `_ast_translator(stage)` (for this kernel) while the block runs."
    from papermill.translators import papermill_translators

    if undeclared := sorted(set(params) - set(stage.declared)):  # Profile.params_for refuses these already
        raise PipelineError(f"{stage.path}: parameters {undeclared} are not declared in its parameters cell")
    registry = papermill_translators._translators
    before = registry.get(KERNEL)
    papermill_translators.register(KERNEL, _ast_translator(stage))
    try:
        yield
    finally:
        if before is None:
            registry.pop(KERNEL, None)
        else:
            registry[KERNEL] = before


def _execute(stage: Stage, params: dict, out_nb: Path, root: Path, shown_nb: Path | None = None) -> None:
    "Run `stage` with papermill into `out_nb`; a failure names `shown_nb` (default `out_nb`) as the executed notebook."
    import papermill as pm
    import psutil
    from papermill.exceptions import PapermillExecutionError

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:  # the kernel inherits XAI_HSG_ROOT: notebooks find this repository
        with _environment({core.ROOT_ENV: str(root)}), _papermill_parameters(stage, params):
            pm.execute_notebook(
                str(stage.path),
                str(out_nb),
                parameters=params,
                kernel_name=KERNEL,
                cwd=str(stage.path.parent),
                progress_bar={"desc": f"  {stage.name}", "leave": False},
                log_output=False,
                request_save_on_cell_execute=True,
                shutdown_kernel="immediate",  # after the last cell, or on Ctrl-C: no half-interrupted kernel's noise
            )
    except PapermillExecutionError as err:
        raise PipelineError(_failure_message(stage, err, shown_nb or out_nb)) from None
    except BaseException:
        _kill_new_children(before)
        raise


def _kill_new_children(before: set[int]) -> None:
    """Kill the child processes started since `before` (pids): the kernel runs in its own session, so Ctrl-C does not
    reach it, and an interrupted papermill does not always shut it down (it would keep computing, and this process
    would wait for it at exit)."""
    import psutil

    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for proc in new:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(new, timeout=5)


COMMIT_SUFFIX = ".commit"  # runs/<profile>/.NN_name.commit: a stage's committed outputs, being moved into place
COMMIT_MANIFEST = "_commit.json"


@contextmanager
def _environment(values: Mapping[str, str]):
    "Set the environment variables `values` (the kernel inherits them) while the block runs; restore them after."
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _previous_outputs(stage: Stage, where: core.Paths, last: dict) -> set[str]:
    "Files (relative to the root) that an earlier run of `stage` may have put in place: recorded, or named in its cells."
    named = [where.results / f"{stage.name}.json", where.runs / f"{stage.name}.failed.ipynb"]
    named += [where.figures / f"{label}{ext}" for label in stage.figure_labels for ext in (".png", ".svg")]
    tables = {*stage.table_labels, *last.get("tables", ())}
    named += [where.tables / f"{label}{ext}" for label in tables for ext in (".md", ".csv")]
    return {*last.get("outputs", ()), *(str(p.relative_to(where.root)) for p in named)}


def _staged_moves(stage: Stage, staging: Path, where: core.Paths) -> list[tuple[str, str]]:
    """(path in `staging`, path from the root) of every staged file but the artifact folder (which moves as a whole).
    results/ may also hold folders (a published model, `results/<profile>/05_embedding_model/`): each moves whole."""
    moves = []
    for kind in ("results", "figures", "tables"):
        folder = staging / kind
        files = sorted(f for f in folder.iterdir() if not f.name.startswith(".")) if folder.is_dir() else []
        ok = (lambda f: f.is_file() or f.is_dir()) if kind == "results" else (lambda f: f.is_file())
        if odd := [f.name for f in files if f.is_symlink() or not ok(f)]:
            holds = "files and folders" if kind == "results" else "files"
            raise PipelineError(f"{stage.path.name}: wrote {odd} into {kind}/, which holds {holds} only")
        target = getattr(where, kind).relative_to(where.root)
        moves += [(f"{kind}/{f.name}", str(target / f.name)) for f in files]
    return [*moves, (stage.path.name, str((where.runs / stage.path.name).relative_to(where.root)))]


def _commit(stage: Stage, key: str, seconds: float, staging: Path, where: core.Paths, state: _State) -> None:
    """Put the outputs staged in `staging` in place with the stage's key: write the manifest (moves, stale files to
    delete, the `_state.json` entry), then rename `staging` to `runs/<profile>/.NN_name.commit`, the commit point
    (before it the previous outputs stand; after it `_finish_commit`, now or in the next `reproduce`, completes the
    new ones), then finish."""
    moves = _staged_moves(stage, staging, where)
    outputs = sorted(dst for _, dst in moves)
    tables = sorted({Path(src).stem for src, _ in moves if src.startswith("tables/") and src.endswith(".md")})
    manifest = {
        "stage": stage.name,
        "moves": moves,
        "delete": sorted(_previous_outputs(stage, where, state.get(stage.name)) - set(outputs)),
        "artifacts": (staging / "artifacts").is_dir(),
        "state": _State.entry(key, seconds, tables, outputs=outputs),
    }
    core.write_json_atomic(staging / COMMIT_MANIFEST, manifest, sort_keys=False)
    core._fsync_tree(staging)  # the staged files are on disk before the commit names them
    commit = where.runs / f".{stage.name}{COMMIT_SUFFIX}"
    os.rename(staging, commit)  # the commit point
    _finish_commit(commit, where, state)


def _move(source: Path, target: Path) -> None:
    "Rename `source` to `target` (a file over a file, or a folder to a free name), creating `target`'s folder."
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _move_over(source: Path, target: Path, replaced: Path) -> None:
    """`_move`, and a folder over a folder: the old one first moves into the folder `replaced` (inside the commit
    folder, removed with it), then the new one takes its name."""
    if source.is_dir() and target.is_dir() and not target.is_symlink():
        replaced.mkdir(parents=True, exist_ok=True)
        os.rename(target, core._temp_sibling(replaced / target.name))
    _move(source, target)


def _remove(path: Path) -> None:
    "Delete a stale output: a file, or a folder (a published model) with what it holds."
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _finish_commit(commit: Path, where: core.Paths, state: _State) -> None:
    """Carry out the commit in `commit` (see `_commit`); every step can be repeated, so an interrupted finish is
    completed by running it again: files move in, the artifact folder is swapped, stale files go, the key is recorded,
    and the commit folder is removed last."""
    manifest = json.loads((commit / COMMIT_MANIFEST).read_text())
    name = manifest["stage"]
    for src, dst in manifest["moves"]:
        if (commit / src).exists():
            _move_over(commit / src, where.root / dst, commit / "replaced")
    final, staged, previous = where.artifacts / name, commit / "artifacts", commit / "artifacts.previous"
    if staged.exists() or not manifest["artifacts"]:  # not swapped yet (or no new folder: the old one goes)
        if final.exists() or final.is_symlink():
            _move(final, previous)
        if manifest["artifacts"]:
            _move(staged, final)
    for dst in manifest["delete"]:
        _remove(where.root / dst)
    state.put(name, manifest["state"])
    trash = core._temp_sibling(where.runs / name)  # a temporary's name: removed as stale if this process dies
    os.rename(commit, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _finish_pending(where: core.Paths) -> list[str]:
    "Finish the commits an interruption left in `where.runs`, remove stale staging folders; the stages committed."
    if not where.runs.is_dir():
        return []
    done = []
    for commit in sorted(where.runs.glob(f".*{COMMIT_SUFFIX}")):
        if (commit / COMMIT_MANIFEST).is_file():
            _finish_commit(commit, where, _State(where.runs / "_state.json"))
            done.append(commit.name[1 : -len(COMMIT_SUFFIX)])
    core.remove_stale_temporaries(where.runs)
    return done


def finish_pending_commits(profile: str = "smoke", root: str | Path | None = None) -> list[str]:
    """Complete what an interrupted `reproduce` of `profile` was putting in place (it does this itself first): after
    it, each stage's outputs are those of its last complete run. Returns the stages whose commit it finished."""
    return _finish_pending(core.paths(profile, Path(root).resolve() if root else core.find_root()))


def _run_stage(plan: StagePlan, where: core.Paths, root: Path, state: _State) -> float:
    """Execute one stage with its outputs staged (`core.Staging`), check its figures, commit them with its key
    (`_commit`); the seconds it took. A stage that fails or is interrupted before its commit leaves its previous
    outputs and key as they were (the next `reproduce` runs it again when its key changed); its executed notebook
    goes to `runs/<profile>/NN_name.failed.ipynb`."""
    stage = plan.stage
    where.runs.mkdir(parents=True, exist_ok=True)
    staging = core._temp_sibling(where.runs / stage.name)  # removed as stale if this process dies
    staging.mkdir()
    staged_nb, failed_nb = staging / stage.path.name, where.runs / f"{stage.name}.failed.ipynb"
    t0 = time.perf_counter()
    try:
        staged = {core.STAGING_ENV: core.Staging(root, where.profile, stage.name, staging).to_env()}
        with _environment({**staged, core.PROFILE_ENV: where.profile}):  # a call without a profile: this run's
            _execute(stage, plan.params, staged_nb, root, shown_nb=failed_nb)
        seconds = time.perf_counter() - t0
        missing = [label for label in stage.figure_labels if not (staging / "figures" / f"{label}.png").exists()]
        if missing:
            raise PipelineError(
                f"{stage.path.name}: cells labelled {missing} ran but saved no figure; "
                f"call core.save_figure(fig) in each labelled figure cell"
            )
        _commit(stage, plan.key, seconds, staging, where, state)
    except BaseException:  # failed or interrupted before the commit point: the previous outputs stand
        if staging.exists():
            if staged_nb.exists():
                os.replace(staged_nb, failed_nb)
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return seconds


def reproduce(
    profile: str = "smoke",
    root: str | Path | None = None,
    only: Iterable[str] = (),
    start: str | None = None,
    force: bool = False,
    render: bool = True,
    console=None,
) -> dict:
    """Execute the chain for `profile` into `runs/<profile>/`; skip stages whose key is unchanged; render the paper.

    Returns {stage name: "ran" | "cached"} (plus "render": outputs when rendered)."""
    from rich.console import Console

    console = console or Console(stderr=True, highlight=False)
    root, prof, stages = _load(profile, root)
    where = core.paths(prof.name, root)
    _finish_pending(where)  # an interrupted run's commit completes before anything reads the state
    selected = select_stages(stages, only, start)
    state = _State(where.runs / "_state.json")
    plans = plan_stages(prof, stages, root, selected, state.keys())  # every key before anything runs

    outcome: dict = {}
    remaining = {p.stage.name: state.get(p.stage.name).get("seconds") for p in plans}
    t_chain = time.perf_counter()
    console.print(f"[bold]xai-hsg reproduce[/] profile [cyan]{prof.name}[/] — {len(plans)} of {len(stages)} notebooks")
    for i, plan in enumerate(plans, 1):
        name, last = plan.stage.name, state.get(plan.stage.name)
        out_nb = where.runs / plan.stage.path.name
        if not force and last.get("key") == plan.key and out_nb.exists():
            outcome[name] = "cached"
            remaining.pop(name, None)
            console.print(
                f"[{i}/{len(plans)}] {name:<20} [green]cached[/] (key {plan.key}, unchanged since {last.get('finished')})",
                soft_wrap=True,
            )
            continue
        eta = None if any(v is None for v in remaining.values()) else sum(remaining.values())
        console.print(
            f"[{i}/{len(plans)}] {name:<20} [yellow]running[/] (last run {_fmt_s(last.get('seconds'))}; "
            f"chain ≈ {_fmt_s(eta)} left; elapsed {_fmt_s(time.perf_counter() - t_chain)})",
            soft_wrap=True,
        )
        seconds = _run_stage(plan, where, root, state)
        outcome[name] = "ran"
        remaining.pop(name, None)
        console.print(
            f"      {name:<20} [green]done[/] in {_fmt_s(seconds)} → {out_nb.relative_to(root)}", soft_wrap=True
        )
    if render:
        from .render import render_paper

        outcome["render"] = render_paper(prof.name, root=root, console=console)
    console.print(f"[bold]finished[/] in {_fmt_s(time.perf_counter() - t_chain)}")
    return outcome
