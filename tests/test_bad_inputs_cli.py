"""Issue 12 through the command line: every expected failure is one line `xai-hsg <command>: error: ...` with exit status
2 (usage) or 1 (data, runtime), Ctrl-C is 130, `--debug` shows the traceback, and no user file changes (hashes)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import make_notebook, sigint_default

from xai_hsg import cli, radius
from xai_hsg.simulate import SimParams, write_simulation


def _hashes(root: Path) -> dict:
    "Every file under `root` (hidden ones too) -> sha256 of its bytes."
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _run(capsys, *argv) -> tuple[int, list[str]]:
    "cli.main(argv) -> (exit status, non-empty stderr lines)."
    code = cli.main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _one_line(lines: list[str], command: str, *fragments: str) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"xai-hsg {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    "A small simulated run: sim/tracks.csv + sim/truth.json."
    out = tmp_path_factory.mktemp("user") / "sim"
    write_simulation(out, 12, SimParams(n_frames=61), seed=1)
    return out


@pytest.fixture
def user(tmp_path, sim) -> Path:
    "The user's folder: a copy of the simulated run in `user/sim`."
    folder = tmp_path / "user"
    (folder / "sim").mkdir(parents=True)
    for f in sim.iterdir():
        (folder / "sim" / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.fixture
def no_fit(monkeypatch):
    "fit_radius must not run: a refusal comes before any work."

    def fail(*args, **kwargs):
        raise AssertionError("the fit ran before the output was checked")

    monkeypatch.setattr(radius, "fit_radius", fail)


def test_row1_fit_radius_output_equal_to_input_is_refused_before_the_fit(user, capsys, no_fit, monkeypatch):
    before = _hashes(user)
    monkeypatch.chdir(user)
    for out in ("sim/tracks.csv", "./sim/../sim/tracks.csv", str(user / "sim" / "tracks.csv")):
        code, lines = _run(capsys, "fit-radius", "sim/tracks.csv", "--out", out)
        assert code == 1
        _one_line(lines, "fit-radius", "is the input", "sim/tracks.csv")
    assert _hashes(user) == before


def test_row6_fit_radius_out_folder_or_foreign_file_is_refused_before_the_fit(user, capsys, no_fit):
    before = _hashes(user)
    tracks = user / "sim" / "tracks.csv"
    code, lines = _run(capsys, "fit-radius", tracks, "--out", user / "sim")
    assert code == 1
    _one_line(lines, "fit-radius", "is a folder", str(user / "sim"))
    code, lines = _run(capsys, "fit-radius", tracks, "--out", user / "sim" / "truth.json")  # not an earlier fit
    assert code == 1
    _one_line(lines, "fit-radius", "truth.json", "not an earlier fit-radius output", "--force")
    code, lines = _run(capsys, "fit-radius", user / "sim" / "missing.csv", "--out", user / "fit.json")
    assert code == 1
    _one_line(lines, "fit-radius", "missing.csv")
    assert _hashes(user) == before


@pytest.mark.parametrize(
    "option, message",
    [
        (["--dt", "-30"], "argument --dt: must be > 0 s, got -30"),
        (["--dt", "0"], "argument --dt: must be > 0 s"),
        (["--dt", "abc"], "argument --dt: expected a number"),
        (["--dt", "nan"], "argument --dt: expected a finite number"),
        (["--sigma-loc", "-1"], "argument --sigma-loc: must be >= 0 nm"),
        (["--n-boot", "5"], "argument --n-boot: must be 0 (no interval) or >= 20"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
        (["--state-from", "oracle"], "argument --state-from: invalid choice"),
        (["--bridge-anchor", "kalman"], "argument --bridge-anchor: invalid choice"),
        (["--ms2-baseline", "none"], "argument --ms2-baseline: expected a number, got 'none'"),
        (["--ms2-baseline", "inf"], "argument --ms2-baseline: expected a finite number"),
        (["--bleaching", "fast"], "argument --bleaching: expected a number, got 'fast'"),
        (["--bleaching", "nan"], "argument --bleaching: expected a finite number"),
    ],
)
def test_row6_bad_option_values_are_usage_errors(user, capsys, no_fit, option, message):
    before = _hashes(user)
    code, lines = _run(capsys, "fit-radius", user / "sim" / "tracks.csv", "--out", user / "fit.json", *option)
    assert code == 2
    _one_line(lines, "fit-radius", message, "see xai-hsg fit-radius --help")
    assert _hashes(user) == before and not (user / "fit.json").exists()


def test_argparse_errors_are_one_line_with_status_2(capsys):
    code, lines = _run(capsys, "bogus")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xai-hsg: error: argument command: invalid choice")
    code, lines = _run(capsys, "simulate", "--n", "0", "--out", "x")
    assert code == 2
    _one_line(lines, "simulate", "argument --n: must be >= 1, got 0")


def test_row6_simulate_out_an_existing_file(user, capsys):
    before = _hashes(user)
    code, lines = _run(capsys, "simulate", "--n", "2", "--frames", "11", "--out", user / "sim" / "tracks.csv")
    assert code == 1
    _one_line(lines, "simulate", "tracks.csv", "is a file")
    assert _hashes(user) == before


def _unwritable(tmp_path: Path) -> Path:
    "A folder this process cannot write into (permission bits bind a normal user; /sys refuses root)."
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
        return folder
    folder = Path("/sys")
    try:
        (folder / "xai-hsg-probe").mkdir()
    except OSError:
        return folder
    pytest.skip("no unwritable folder for root here")


def test_row6_simulate_out_an_unwritable_place(tmp_path, capsys):
    place = _unwritable(tmp_path)
    code, lines = _run(capsys, "simulate", "--n", "2", "--frames", "11", "--out", place / "x" / "y")
    assert code == 1
    _one_line(lines, "simulate", str(place), "cannot")
    assert not (place / "x").exists()


def test_row6_simulate_device_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, lines = _run(capsys, "simulate", "--n", "2", "--frames", "11", "--device", "cuda", "--out", tmp_path / "s")
    assert code == 2
    _one_line(lines, "simulate", "argument --device", "CUDA is not available")
    assert not (tmp_path / "s").exists()


def test_row2_simulate_into_a_folder_holding_another_run(user, capsys):
    "Refused without --force, the user's files untouched; --force replaces the folder as a whole (no old tracks.csv)."
    before = _hashes(user)
    args = ["simulate", "--n", "3", "--frames", "11", "--seed", "2", "--format", "parquet", "--out", user / "sim"]
    code, lines = _run(capsys, *args)
    assert code == 1
    _one_line(lines, "simulate", "already holds files", "tracks.csv", "--force")
    assert _hashes(user) == before
    assert _run(capsys, *args, "--force")[0] == 0
    names = {p.name for p in (user / "sim").iterdir() if not p.name.startswith(".")}
    assert names == {"tracks.parquet", "truth.json"}


def _stage_repo(root: Path, profile: dict | str) -> Path:
    "A repository with one stage notebook (parameters profile, seed, n) and profiles/smoke.yml."
    make_notebook(
        root / "nbs" / "01_one.ipynb",
        [("code", 'from xai_hsg import core\ncore.save_results("01_one", {"n": n}, profile=profile)')],
        '# needs: none\nprofile = "smoke"\nseed = 0\nn = 3  # count (paper: >= 10)',
    )
    (root / "profiles").mkdir(parents=True)
    text = profile if isinstance(profile, str) else yaml.safe_dump(profile)
    (root / "profiles" / "smoke.yml").write_text(text)
    return root


def test_row6_profile_with_a_yaml_syntax_error(tmp_path, capsys, monkeypatch):
    root = _stage_repo(tmp_path / "repo", "defaults:\n  seed: 0\nnotebooks:\n  01_one: {n: 4\n")
    monkeypatch.setenv("XAI_HSG_ROOT", str(root))
    before = _hashes(root)
    code, lines = _run(capsys, "reproduce", "--no-render")
    assert code == 1
    _one_line(lines, "reproduce", "smoke.yml", "YAML", "line")
    assert _hashes(root) == before and not (root / "runs").exists()


def test_row11_unknown_profile_key_is_an_error_naming_file_and_key(tmp_path, capsys, monkeypatch):
    root = _stage_repo(tmp_path / "repo", {"defaults": {"sede": 5}, "notebooks": {"01_one": {"n": 4}}})
    monkeypatch.setenv("XAI_HSG_ROOT", str(root))
    before = _hashes(root)
    code, lines = _run(capsys, "reproduce", "--no-render")
    assert code == 1
    _one_line(lines, "reproduce", "smoke.yml", "defaults.sede", "'seed'")
    assert _hashes(root) == before and not (root / "runs").exists()


def _paper_repo(root: Path) -> Path:
    "A repository whose paper/ holds an earlier rendering's figures, tables and variables, with smoke results."
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "smoke.yml").write_text("defaults: {}\nnotebooks: {}\n")
    for rel, text in {
        "paper/index.qmd": "Value {{< var one.n >}}.\n\n{{< include tables/tbl-x.md >}}\n",
        "paper/_variables.yml": "one:\n  n: '3'\n",
        "paper/figures/fig-a.png": "png",
        "paper/tables/tbl-x.md": "| x |\n|---|\n| 1 |\n",
        "results/smoke/01_one.json": '{"n": 3}\n',
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_row7_render_unknown_profile_touches_nothing(tmp_path, capsys, monkeypatch):
    root = _paper_repo(tmp_path / "repo")
    monkeypatch.setenv("XAI_HSG_ROOT", str(root))
    before = _hashes(root)
    code, lines = _run(capsys, "render", "--profile", "nope", "--engine", "pandoc")
    assert code == 1
    _one_line(lines, "render", "no profile 'nope' (known: smoke)")
    assert _hashes(root) == before
    # a known profile without results: the same, before anything is wiped
    (root / "profiles" / "paper.yml").write_text("defaults: {}\n")
    before = _hashes(root)
    code, lines = _run(capsys, "render", "--profile", "paper", "--engine", "pandoc")
    assert code == 1
    _one_line(lines, "render", "no results for profile 'paper'", "xai-hsg reproduce --profile paper")
    assert _hashes(root) == before
    # results that lack the table the manuscript includes: refused before paper/ changes
    code, lines = _run(capsys, "render", "--profile", "smoke", "--engine", "pandoc")
    assert code == 1
    _one_line(lines, "render", "index.qmd:3", "tbl-x.md")
    assert _hashes(root) == before


def test_ctrl_c_is_one_line_with_status_130_and_debug_shows_the_traceback(user, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(radius, "fit_radius", interrupted)
    argv = ["fit-radius", user / "sim" / "tracks.csv", "--out", user / "fit.json", "--state-from", "truth"]
    code, lines = _run(capsys, *argv)
    assert code == 130
    _one_line(lines, "fit-radius", "interrupted")
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", *map(str, argv)])
    with pytest.raises(FileNotFoundError):
        cli.main(["fit-radius", str(user / "missing.csv"), "--out", str(user / "fit.json"), "--debug"])
    assert not (user / "fit.json").exists()


SLOW_CELL = """
import time
from xai_hsg import core
core.save_results("02_slow", {"half": 1}, profile=profile)
time.sleep(120)
"""


@pytest.mark.slow  # two notebooks through papermill, then SIGINT
def test_row6_ctrl_c_in_reproduce(tmp_path):
    "SIGINT while the second notebook runs: one line, status 130, the first stays cached, the second leaves nothing."
    root = _stage_repo(tmp_path / "repo", {"defaults": {"seed": 0}, "notebooks": {}})
    make_notebook(root / "nbs" / "02_slow.ipynb", [("code", SLOW_CELL)], '# needs: none\nprofile = "smoke"')
    env = {**os.environ, "XAI_HSG_ROOT": str(root)}
    cmd = [sys.executable, "-m", "xai_hsg.cli", "reproduce", "--no-render"]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=sigint_default
    )
    staged, t0 = root / "runs" / "smoke", time.monotonic()
    while not (halves := list(staged.glob(".02_slow.tmp-*/results/02_slow.json"))):  # the stage writes to staging
        assert proc.poll() is None and time.monotonic() - t0 < 300, proc.stderr.read()
        time.sleep(0.2)
    half = halves[0]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground process group
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("xai-hsg reproduce: error: interrupted"), err
    assert not half.exists() and not (root / "results" / "smoke" / "02_slow.json").exists()
    assert (root / "results" / "smoke" / "01_one.json").exists()
    kernels = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(root / "nbs")]
    assert not kernels, f"the interrupted stage's kernel still runs: {kernels}"
    state = yaml.safe_load((root / "runs" / "smoke" / "_state.json").read_text())
    assert list(state) == ["01_one"]
    rerun = subprocess.run([*cmd, "--only", "01"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "cached" in rerun.stderr, rerun.stderr


def test_ctrl_c_is_held_while_torch_or_compiled_code_is_on_the_stack_and_raised_in_our_code():
    """Ctrl-C landing in Python code that torch's C++ called (its import: 3 of 150 interrupted `simulate` runs; a lazy
    import inside `fit-radius`: 1 of 10) aborted the process (SIGABRT, "terminate called after throwing ...
    pybind11::error_already_set"); inside pandas' threaded `read_csv` it unmapped the file under a parsing thread
    (SIGSEGV: 2 of 150 interrupted `fit-radius` runs). The CLI's guard holds SIGINT while a frame of torch, pandas,
    pyarrow or Cython code is on the stack, raises it as a KeyboardInterrupt (exit 130) once Python is back in our code
    or at the end of the block, and keeps an ignored SIGINT ignored."""
    folder = cli._package_folder("torch")
    assert folder and os.path.isfile(os.path.join(folder, "__init__.py"))
    steps, space = [], {"signal": signal}
    exec(compile("def in_torch(steps):\n    signal.raise_signal(signal.SIGINT)\n    steps.append('in torch')\n",
                 os.path.join(folder, "_test_frame.py"), "exec"), space)  # fmt: skip
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background test run inherits it ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            with cli._interrupts_outside_native_code(retry_s=0.01):
                space["in_torch"](steps)  # held inside "torch", retried...
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # ... and raised here, in our code
                    time.sleep(0.001)
                steps.append("not interrupted")
        assert steps == ["in torch"]
        with pytest.raises(KeyboardInterrupt):
            with cli._interrupts_outside_native_code(retry_s=60):
                space["in_torch"](steps)
                steps.append("block ends")  # no retry before the end: raised as the block ends
        assert steps == ["in torch", "in torch", "block ends"]
        # pandas' threaded read_csv (the SIGSEGV in CI) and Python that compiled (Cython) code called: held too
        for where in (os.path.join(cli._package_folder("pandas"), "io", "parsers", "_test_frame.py"), "x/y.pxi"):
            exec(compile("def held(steps):\n    signal.raise_signal(signal.SIGINT)\n    steps.append('held')\n",
                         where, "exec"), space)  # fmt: skip
            with pytest.raises(KeyboardInterrupt):
                with cli._interrupts_outside_native_code(retry_s=60):
                    space["held"](steps)
                    steps.append("block ends")
            assert steps[-2:] == ["held", "block ends"], where
        with pytest.raises(KeyboardInterrupt):
            with cli._interrupts_outside_native_code():
                signal.raise_signal(signal.SIGINT)  # our own code: at once
                steps.append("not interrupted")
        assert "not interrupted" not in steps and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with cli._interrupts_outside_native_code():
            signal.raise_signal(signal.SIGINT)  # ignored before, ignored during and after
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
