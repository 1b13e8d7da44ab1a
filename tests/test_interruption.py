"""Fault test of issue 12: SIGINT and SIGKILL at random points of `xai-hsg simulate --out D` over an existing run in D,
of `xai-hsg fit-radius --out fit.json` over an existing fit.json, of the hidden-state store and of `xai-hsg reproduce`
over an earlier run of the chain leave the old complete outputs or the new ones, never a mix.

Each trial runs `xai_hsg.cli.main(argv)` in a child forked from a driver process that has imported the library but
computed nothing (so no OpenMP pool is forked): the CLI's own code path without paying the interpreter and torch import
per trial. The driver is this file run as a script; the test checks the folders it leaves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sigint_default

SIM_OLD = ["--n", "150", "--frames", "61", "--seed", "1"]
SIM_NEW = ["--n", "300", "--frames", "61", "--seed", "2", "--force"]
FIT_DATA = ["--n", "200", "--frames", "241", "--seed", "3"]
FIT_ARGS = ["--state-from", "truth", "--n-boot", "20", "--sigma-loc", "40"]  # the CLI takes 0 or >= 20
N_SIM, N_FIT = 20, 20  # trials per command, half SIGINT and half SIGKILL


def _digest(folder: Path) -> dict:
    "sha256 of each visible file of `folder` (the outputs a user sees; the hidden run marker is not one)."
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


CHILD_LIMIT_S = 600  # no trial's child runs this long unless it hangs


def _fork_and_signal(job, delay_s: float | None, sig: int, pids: list | None = None) -> tuple[int, float]:
    """Fork, run `job()` in the child (its return value is the exit status; stdout discarded, stderr to
    `$XAI_HSG_TEST_LOG` when set); kill it with `sig` after `delay_s`. Returns (wait status, seconds); the child's pid
    is appended to `pids`."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: never return into the driver
        try:
            code = 1
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                if "XAI_HSG_TEST_LOG" in os.environ:
                    os.dup2(os.open(os.environ["XAI_HSG_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT), 2)
                code = job()
            except KeyboardInterrupt:  # Ctrl-C before main's handler (parsing the arguments): nothing written yet
                code = 98
            except BaseException:
                code = 99
            finally:
                os._exit(code if isinstance(code, int) else 1)
        finally:  # the one SIGINT landed in the finally above, after the job: exit all the same
            os._exit(97)
    if pids is not None:
        pids.append(pid)
    if delay_s is not None:
        deadline = start + delay_s
        while time.perf_counter() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, time.perf_counter() - start
            time.sleep(0.005)
        os.kill(pid, sig)
    while True:  # a child that never ends (a deadlock) fails the trial instead of hanging the suite
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, time.perf_counter() - start
        if time.perf_counter() - start > CHILD_LIMIT_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} still running after {CHILD_LIMIT_S} s (signal {sig} at {delay_s} s)")
        time.sleep(0.01)


def _run_child(argv: list[str], delay_s: float | None, sig: int) -> tuple[int, float]:
    "`xai_hsg.cli.main(argv)` in a forked child, killed with `sig` after `delay_s` (see `_fork_and_signal`)."

    def job():
        from xai_hsg.cli import main

        return main(argv)

    return _fork_and_signal(job, delay_s, sig)


def _delays(rng, n: int, run_s: float) -> list[float]:
    """`n` delays spread evenly (one per stratum, random within it) over [0, 1.5 run_s]: early, mid-write, after the
    end; the last one at least 3 run_s, so that one trial ends before its signal even on a machine that has slowed
    down since `run_s` was measured (other processes on the cores)."""
    delays = [run_s * 1.5 * (i + rng.random()) / n for i in range(n)]
    return [*delays[:-1], max(delays[-1], 3 * run_s)]


SIGINT_STATUSES = (0, 97, 98, 130)  # finished before the signal, interrupted at exit, before main's handler, Ctrl-C


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def _trial_text(seed: int, trial: dict) -> str:
    "The trial, for an assertion message: enough to reproduce it (seed, folder, signal, delay) and what the child did."
    return (
        f"seed {seed}, {trial['folder']}: {signal.Signals(trial['signal']).name} after {trial['delay_s']:.3f} s; "
        f"child {_status_text(trial['status'])} after {trial.get('seconds', float('nan')):.3f} s"
    )


def _mix_text(got: dict, old: dict, new: dict) -> str:
    "Which run each file of a folder comes from (old, new, neither, missing), given the digests of the folders."
    origin = {}
    for name in sorted({*got, *old, *new}):
        h = got.get(name)
        origin[name] = (
            "missing" if h is None else "old" if h == old.get(name) else "new" if h == new.get(name) else "neither"
        )
    return ", ".join(f"{name}: {where}" for name, where in origin.items())


def _drive(work: Path, seed: int) -> dict:
    "Run every trial in `work`; return what the test checks (the folders are left for it)."
    import random

    import xai_hsg.cli  # noqa: F401  (imported once, before any fork)

    os.environ["XAI_HSG_TEST_LOG"] = str(work / "children.log")
    rng = random.Random(seed)
    log = {"simulate": [], "fit": []}
    old, ref = work / "old", work / "ref"
    assert _run_child(["simulate", *SIM_OLD, "--out", str(old)], None, 0)[0] == 0
    status, sim_s = _run_child(["simulate", *SIM_NEW, "--out", str(ref)], None, 0)
    assert status == 0
    for i, delay in enumerate(_delays(rng, N_SIM, sim_s)):
        sig = (signal.SIGINT, signal.SIGKILL)[i % 2]
        target = work / f"sim{i:02d}"
        shutil.copytree(old, target)
        status, seconds = _run_child(["simulate", *SIM_NEW, "--out", str(target)], delay, sig)
        log["simulate"].append(
            {"folder": target.name, "signal": int(sig), "delay_s": delay, "status": status, "seconds": seconds}
        )
    # fit-radius needs data that determine the radius (a weaker file is refused as not identifiable)
    assert _run_child(["simulate", *FIT_DATA, "--out", str(work / "radius_data")], None, 0)[0] == 0
    tracks = work / "radius_data" / "tracks.csv"
    fit_old, fit_ref = work / "fit_old.json", work / "fit_ref.json"
    assert _run_child(["fit-radius", str(tracks), "--out", str(fit_old), *FIT_ARGS, "--seed", "0"], None, 0)[0] == 0
    status, fit_s = _run_child(["fit-radius", str(tracks), "--out", str(fit_ref), *FIT_ARGS, "--seed", "1"], None, 0)
    assert status == 0
    for i, delay in enumerate(_delays(rng, N_FIT, fit_s)):
        sig = (signal.SIGINT, signal.SIGKILL)[i % 2]
        folder = work / f"fit{i:02d}"
        folder.mkdir()
        shutil.copy(fit_old, folder / "fit.json")
        argv = ["fit-radius", str(tracks), "--out", str(folder / "fit.json"), *FIT_ARGS, "--seed", "1"]
        status, seconds = _run_child(argv, delay, sig)
        log["fit"].append(
            {"folder": folder.name, "signal": int(sig), "delay_s": delay, "status": status, "seconds": seconds}
        )
    log["sim_s"], log["fit_s"] = sim_s, fit_s
    return log


@pytest.mark.slow
def test_interrupted_simulate_and_fit_radius_leave_old_or_new_outputs(tmp_path):
    from xai_hsg import core
    from xai_hsg.simulate import load_simulation

    started = time.perf_counter()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    seed = 12
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(seed)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=sigint_default,
    )
    children = tmp_path / "children.log"
    assert proc.returncode == 0, proc.stderr[-2000:] + (children.read_text()[-2000:] if children.exists() else "")
    log = json.loads(proc.stdout.splitlines()[-1])
    old, new = _digest(tmp_path / "old"), _digest(tmp_path / "ref")
    assert set(old) == set(new) == {"tracks.csv", "truth.json"} and old != new
    outcomes = {"old": 0, "new": 0}
    for trial in log["simulate"]:
        folder = tmp_path / trial["folder"]
        got, what = _digest(folder), _trial_text(seed, trial)
        hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != core.OUTPUT_MARKER)
        assert got in (old, new), f"{what}: a mix of runs ({_mix_text(got, old, new)}; hidden: {hidden})"
        outcomes["old" if got == old else "new"] += 1
        sim = load_simulation(folder)  # tracks and truth from the same run
        n_traces = (sim.tracks.n_traces, sim.truth["n_traces"])
        assert n_traces == ((150, 150) if got == old else (300, 300)), f"{what}: (tracks, truth) traces {n_traces}"
        if trial["signal"] == signal.SIGINT:
            assert os.WIFEXITED(trial["status"]) and os.WEXITSTATUS(trial["status"]) in SIGINT_STATUSES, (
                f"{what}; the children's stderr ends: {children.read_text()[-1500:]}"
            )
    fit_old, fit_new = (tmp_path / "fit_old.json").read_bytes(), (tmp_path / "fit_ref.json").read_bytes()
    assert fit_old != fit_new
    for trial in log["fit"]:
        got, what = (tmp_path / trial["folder"] / "fit.json").read_bytes(), _trial_text(seed, trial)
        assert got in (fit_old, fit_new), f"{what}: fit.json is neither run's ({len(got)} bytes: {got[:200]!r})"
        outcomes["old" if got == fit_old else "new"] += 1
        assert json.loads(got)["r_c_nm"] is not None, what
        if trial["signal"] == signal.SIGINT:
            assert os.WIFEXITED(trial["status"]) and os.WEXITSTATUS(trial["status"]) in SIGINT_STATUSES, (
                f"{what}; the children's stderr ends: {children.read_text()[-1500:]}"
            )
    # SIGINT leaves no temporary; SIGKILL may, and the next writer of that name removes it (its process is gone)
    sigint = {t["folder"] for t in log["simulate"] + log["fit"] if t["signal"] == signal.SIGINT}
    (tmp_path / "children.log").unlink()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    leftovers += [p for d in tmp_path.glob("fit*") if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]
    trials = {t["folder"]: t for t in log["simulate"] + log["fit"]}
    for p in leftovers:
        owner = p.parent.name if p.parent != tmp_path else p.name.split(".tmp-")[0].lstrip(".")
        assert owner not in sigint, f"{_trial_text(seed, trials[owner])}: left {p.name}"
    for name in {t["folder"] for t in log["simulate"]}:
        core.remove_stale_temporaries(tmp_path, name)
    for d in tmp_path.glob("fit[0-9]*"):
        core.check_output_path(d / "fit.json")  # removes what a killed writer of fit.json left
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # not removed: their writer looks alive
    left += [f"{d.name}/{p.name}" for d in tmp_path.glob("fit[0-9]*") for p in d.iterdir() if p.name != "fit.json"]
    assert not left, f"seed {seed}: temporaries of killed writers not removed: {left}"
    assert len(log["simulate"]) + len(log["fit"]) >= 20
    runs = f"simulate {log['sim_s']:.2f} s, fit {log['fit_s']:.2f} s; trials {[round(t['seconds'], 2) for t in trials.values()]}"
    assert outcomes["old"] > 0 and outcomes["new"] > 0, (
        f"seed {seed}: {outcomes}; {runs}"
    )  # the delays spread past the end
    print(f"{outcomes}, simulate {log['sim_s']:.1f} s, fit {log['fit_s']:.1f} s, {time.perf_counter() - started:.0f} s")


N_STORE = 20  # store trials, half SIGINT and half SIGKILL


def _store_job(model_dir: Path, out: Path) -> int:
    "Child: extract the hidden states of a small fixed corpus into `out` (resuming whatever is there)."
    import numpy as np
    import torch

    from xai_hsg import embed
    from xai_hsg.genome import SequenceSet

    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    seqs = {f"s{i:02d}": "".join(rng.choice(list("ACGT"), size=int(rng.integers(30, 240)))) for i in range(24)}
    model, tok = embed.load_genomic_lm(model_dir, device="cpu")
    embed.extract_hidden_states(
        model, tok, SequenceSet.from_sequences(seqs), out, layers=[1, 2], shard_tokens=150, progress=False
    )
    return 0


def _run_store_child(model_dir: Path, out: Path, delay_s: float | None, sig: int) -> tuple[int, float]:
    return _fork_and_signal(lambda: _store_job(model_dir, out), delay_s, sig)


def _drive_store(work: Path, seed: int) -> dict:
    "Store trials: a random-weight tiny model (plumbing only), a reference store, then interrupted extractions."
    import random

    import torch
    from transformers import EsmForMaskedLM

    from xai_hsg import embed

    model_dir = work / "model"

    def save_model() -> int:  # in a child: a driver that ran torch would fork children into OpenMP's held locks
        torch.manual_seed(0)
        embed.save_genomic_lm(EsmForMaskedLM(embed.nt_config("tiny", max_tokens=256)), embed.NTTokenizer(), model_dir)
        return 0

    assert _fork_and_signal(save_model, None, 0)[0] == 0
    status, run_s = _run_store_child(model_dir, work / "ref", None, 0)
    assert status == 0
    rng = random.Random(seed)
    trials = []
    for i, delay in enumerate(_delays(rng, N_STORE, run_s)):
        sig = (signal.SIGINT, signal.SIGKILL)[i % 2]
        status, _ = _run_store_child(model_dir, work / f"store{i:02d}", delay, sig)
        trials.append({"folder": f"store{i:02d}", "signal": int(sig), "delay_s": delay, "status": status})
    return {"trials": trials, "run_s": run_s, "model_dir": str(model_dir)}


@pytest.mark.slow
def test_interrupted_store_is_complete_or_resumes_to_the_same_store(tmp_path):
    "Interrupted at random points, a store is either complete and verified, or resumes to the uninterrupted store."
    import torch

    from xai_hsg import embed

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), "3", "store"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=sigint_default,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads(proc.stdout.splitlines()[-1])
    ref = embed.HiddenStateStore.open(tmp_path / "ref")
    assert ref.complete and not ref.verify()
    outcomes = {"complete": 0, "resumed": 0, "not started": 0}
    for trial in log["trials"]:
        folder = tmp_path / trial["folder"]
        manifest = folder / "manifest.json"
        if manifest.exists() and embed.HiddenStateStore.open(folder).complete:
            outcomes["complete"] += 1
        else:
            outcomes["resumed" if manifest.exists() else "not started"] += 1
            assert _store_child_resume(Path(log["model_dir"]), folder) == 0, trial
        store = embed.HiddenStateStore.open(folder)
        assert store.complete and not store.verify(), trial  # every shard present and matching its checksum
        assert store.n_tokens == ref.n_tokens and store.tokens().equals(ref.tokens()), trial
        for layer in ref.layers:
            assert torch.equal(store.load_layer(layer), ref.load_layer(layer)), trial
    assert len(log["trials"]) >= N_STORE and outcomes["resumed"] > 0, outcomes


def _store_child_resume(model_dir: Path, out: Path) -> int:
    return _run_store_child(model_dir, out, None, 0)[0]


N_REPRO = 22  # reproduce trials, half SIGINT and half SIGKILL

MAKE_PARAMS = """
# needs: none
profile = "smoke"
run = 0
"""
MAKE_CELLS = [
    (
        "code",
        """
        import time
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "fixed"  # with $SOURCE_DATE_EPOCH: the same figure, the same bytes
        import matplotlib.pyplot as plt
        import pandas as pd
        from xai_hsg import core
        core.save_results("01_make", {"run": run}, profile=profile)
        time.sleep(0.2)
        """,
    ),
    (
        "code",
        """
        #| label: fig-make
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.set_title(f"run {run}")
        core.save_figure(fig)
        time.sleep(0.2)
        """,
    ),
    (
        "code",
        """
        core.save_table(pd.DataFrame({"run": [run]}), "tbl-make", "The run.", profile=profile)
        (core.artifact_dir("01_make", profile) / "data.txt").write_text(f"run {run}\\n")
        core.save_results("01_make", {"done": True}, profile=profile)
        """,
    ),
]
USE_PARAMS = """
# needs: 01_make
profile = "smoke"
run = 0
"""
USE_CELLS = [
    (
        "code",
        """
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "fixed"
        import matplotlib.pyplot as plt
        import pandas as pd
        from xai_hsg import core
        assert core.load_results("01_make", profile=profile)["run"] == run  # the upstream's new outputs, in place
        core.save_results("02_use", {"run": run}, profile=profile)
        core.save_table(pd.DataFrame({"run": [run]}), "tbl-use", "The run, again.", profile=profile)
        """,
    ),
    (
        "code",
        """
        #| label: fig-use
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.set_title(f"used {run}")
        core.save_figure(fig)
        """,
    ),
]
REPRO_STAGES = {"01_make": "make", "02_use": "use"}  # stage -> the tag of its figure and table labels


def _repro_profile(root: Path, run: int) -> None:
    import yaml

    notebooks = {stage: {"run": run} for stage in REPRO_STAGES}
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "profiles" / "smoke.yml").write_text(yaml.safe_dump({"description": "fault test", "notebooks": notebooks}))


def _repro_project(root: Path) -> Path:
    "A two-notebook chain (02 needs 01) writing results, a figure, a table (and, 01, an artifact) with core's writers."
    from conftest import make_notebook

    make_notebook(root / "nbs" / "01_make.ipynb", MAKE_CELLS, MAKE_PARAMS)
    make_notebook(root / "nbs" / "02_use.ipynb", USE_CELLS, USE_PARAMS)
    _repro_profile(root, 1)
    return root


def _stage_outputs(root: Path, stage: str) -> dict:
    """What a user sees of `stage`'s outputs: sha256 of its results, figure, table and artifact files, and the `run`
    its executed notebook was given (its timings differ from run to run)."""
    tag, files = REPRO_STAGES[stage], [root / "results/smoke" / f"{stage}.json"]
    files += sorted((root / "figures/smoke").glob(f"fig-{tag}.*")) + sorted(
        (root / "tables/smoke").glob(f"tbl-{tag}.*")
    )
    files += sorted((root / "artifacts/smoke" / stage).rglob("*"))
    out = {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}
    nb = root / "runs/smoke" / f"{stage}.ipynb"
    out["notebook run"] = (
        json.loads(nb.read_text())["metadata"]["papermill"]["parameters"]["run"] if nb.exists() else None
    )
    return out


def _state_keys(root: Path) -> dict:
    path = root / "runs/smoke/_state.json"
    return {k: v["key"] for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def _kernels_of(pid: int) -> list[int]:
    "The kernels that the process `pid` started (their environment names it as `JPY_PARENT_PID`)."
    mark, found = f"JPY_PARENT_PID={pid}\0".encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _run_reproduce(root: Path, delay_s: float | None, sig: int) -> tuple[int, float, list[int]]:
    """`xai-hsg reproduce --no-render` of `root` in a forked child, killed with `sig` after `delay_s`; waits until the
    kernels it started have gone too (a SIGKILLed pipeline's kernel exits when it sees its parent gone). Returns
    (wait status, seconds, kernels that outlived the pipeline)."""

    def job():
        from xai_hsg.cli import main

        os.environ["XAI_HSG_ROOT"] = str(root)
        return main(["reproduce", "--no-render"])

    pids = []
    status, seconds = _fork_and_signal(job, delay_s, sig, pids)
    pid = pids[0]
    orphans, deadline = _kernels_of(pid), time.monotonic() + 30
    while _kernels_of(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _kernels_of(pid), f"kernels of {pid} still running"
    return status, seconds, orphans


def _drive_reproduce(work: Path, seed: int) -> dict:
    """An old complete run, the new one (the profile's `run` changes: both stages re-run), then trials: a copy of the
    old run, reproduce with the new profile interrupted, a snapshot of what it left, an uninterrupted reproduce."""
    import random

    import xai_hsg.cli  # noqa: F401  (imported once, before any fork)
    import xai_hsg.pipeline  # noqa: F401

    os.environ["XAI_HSG_TEST_LOG"] = str(work / "children.log")
    old, new = _repro_project(work / "old"), work / "new"
    status, old_s, _ = _run_reproduce(old, None, 0)
    assert status == 0, "the old run failed: see children.log"
    shutil.copytree(old, new)
    _repro_profile(new, 2)
    status, run_s, _ = _run_reproduce(new, None, 0)
    assert status == 0, "the new run failed: see children.log"
    rng = random.Random(seed)
    trials = []
    for i, delay in enumerate(_delays(rng, N_REPRO, run_s)):
        sig = (signal.SIGINT, signal.SIGKILL)[i % 2]
        trial = work / f"repro{i:02d}"
        shutil.copytree(old, trial)
        _repro_profile(trial, 2)
        status, seconds, orphans = _run_reproduce(trial, delay, sig)
        shutil.copytree(trial, work / f"repro{i:02d}_interrupted", symlinks=True)  # what the interruption left
        rerun, rerun_s, _ = _run_reproduce(trial, None, 0)
        trials.append(
            {
                "folder": trial.name,
                "signal": int(sig),
                "delay_s": delay,
                "status": status,
                "seconds": seconds,
                "orphan_kernels": len(orphans),
                "rerun_status": rerun,
                "rerun_s": rerun_s,
            }
        )
    return {"trials": trials, "old_s": old_s, "run_s": run_s}


@pytest.mark.slow
def test_interrupted_reproduce_leaves_each_stage_old_or_new(tmp_path):
    """SIGINT and SIGKILL at random points of `reproduce` over an earlier run: each stage's results, figure, table,
    artifact and executed notebook are all of the old run or all of the new one (a commit the interruption left
    pending is finished first, as the next `reproduce` does), its recorded key matches them, and the next uninterrupted
    `reproduce` leaves the new complete set."""
    from xai_hsg import pipeline

    started = time.perf_counter()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "SOURCE_DATE_EPOCH": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    seed = 7
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(seed), "reproduce"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        preexec_fn=sigint_default,
    )
    children = tmp_path / "children.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (children.read_text()[-3000:] if children.exists() else "")
    log = json.loads(proc.stdout.splitlines()[-1])
    ref = {name: {stage: _stage_outputs(tmp_path / name, stage) for stage in REPRO_STAGES} for name in ("old", "new")}
    keys = {name: _state_keys(tmp_path / name) for name in ("old", "new")}
    for stage in REPRO_STAGES:
        assert ref["old"][stage] != ref["new"][stage] and keys["old"][stage] != keys["new"][stage], stage
        files = 6 + (stage == "01_make")  # results, png, svg, md, csv, the notebook's run (and 01's artifact)
        assert ref["new"][stage]["notebook run"] == 2 and len(ref["new"][stage]) == files, ref["new"][stage]
    outcomes = {"old": 0, "01 new, 02 old": 0, "new": 0, "pending commit": 0}

    def which(root: Path, trial: dict, when: str) -> dict:
        "Per stage 'old' or 'new'; fails naming the trial and the mixed files otherwise."
        got = {}
        for stage in REPRO_STAGES:
            seen = _stage_outputs(root, stage)
            match = [name for name in ("old", "new") if seen == ref[name][stage]]
            mixed = {
                f: ("old" if h == ref["old"][stage].get(f) else "new" if h == ref["new"][stage].get(f) else h)
                for f, h in seen.items()
            }
            assert match, f"{when}: {stage} is a mix {mixed} ({_trial_text(seed, trial)})"
            key = _state_keys(root).get(stage)
            assert key == keys[match[0]][stage], (
                f"{when}: {stage} is {match[0]}, its key {key} ({_trial_text(seed, trial)})"
            )
            got[stage] = match[0]
        for kind in ("results", "figures", "tables", "artifacts"):  # no temporary where a user looks
            hidden = [p.name for p in (root / kind / "smoke").glob(".*")]
            assert not hidden, f"{when}: {hidden} in {kind}/ ({_trial_text(seed, trial)})"
        return got

    for trial in log["trials"]:
        snapshot = tmp_path / f"{trial['folder']}_interrupted"
        if any((snapshot / "runs/smoke").glob(".*.commit")):  # killed between the commit point and its end
            outcomes["pending commit"] += 1
            assert pipeline.finish_pending_commits("smoke", snapshot) != [], trial
        got = which(snapshot, trial, "after the interruption")
        assert got["02_use"] == "old" or got["01_make"] == "new", trial  # 02 commits only after 01
        outcomes[got["01_make"] if got["01_make"] == got["02_use"] else "01 new, 02 old"] += 1
        if trial["signal"] == signal.SIGINT:  # SIGINT_STATUSES
            assert os.WIFEXITED(trial["status"]) and os.WEXITSTATUS(trial["status"]) in SIGINT_STATUSES, trial
        assert trial["rerun_status"] == 0, trial
        rerun = tmp_path / trial["folder"]
        assert which(rerun, trial, "after the next reproduce") == dict.fromkeys(REPRO_STAGES, "new")
        assert sorted(p.name for p in (rerun / "runs/smoke").iterdir()) == [
            "01_make.ipynb",
            "02_use.ipynb",
            "_state.json",
        ]
    assert len(log["trials"]) >= 20 and outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
    orphans = sum(t["orphan_kernels"] for t in log["trials"])
    print(
        f"{outcomes}, {orphans} kernels outlived their pipeline, a run {log['run_s']:.1f} s, "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":  # the driver: python tests/test_interruption.py WORK SEED [store | reproduce]
    if sys.argv[3:] == ["store"]:
        print(json.dumps(_drive_store(Path(sys.argv[1]), int(sys.argv[2]))))
    elif sys.argv[3:] == ["reproduce"]:
        print(json.dumps(_drive_reproduce(Path(sys.argv[1]), int(sys.argv[2]))))
    else:
        print(json.dumps(_drive(Path(sys.argv[1]), int(sys.argv[2]))))
