"""Fault test of issue 12: SIGINT and SIGKILL at random points of `xai-hsg simulate --out D` over an existing run in D
and of `xai-hsg fit-radius --out fit.json` over an existing fit.json leave the old complete outputs or the new ones,
never a mix.

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

SIM_OLD = ["--n", "150", "--frames", "61", "--seed", "1"]
SIM_NEW = ["--n", "300", "--frames", "61", "--seed", "2", "--force"]
FIT_DATA = ["--n", "200", "--frames", "241", "--seed", "3"]
FIT_ARGS = ["--n-boot", "20", "--sigma-loc", "40"]  # the CLI takes 0 or >= 20
N_SIM, N_FIT = 12, 10  # trials per command, half SIGINT and half SIGKILL: 22 in all


def _digest(folder: Path) -> dict:
    "sha256 of each visible file of `folder` (the outputs a user sees; the hidden run marker is not one)."
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def _fork_and_signal(job, delay_s: float | None, sig: int) -> tuple[int, float]:
    """Fork, run `job()` in the child (its return value is the exit status; stdout discarded, stderr to
    `$XAI_HSG_TEST_LOG` when set); kill it with `sig` after `delay_s`. Returns (wait status, seconds)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: never return into the driver
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
    if delay_s is not None:
        deadline = start + delay_s
        while time.perf_counter() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, time.perf_counter() - start
            time.sleep(0.005)
        os.kill(pid, sig)
    _, status = os.waitpid(pid, 0)
    return status, time.perf_counter() - start


def _run_child(argv: list[str], delay_s: float | None, sig: int) -> tuple[int, float]:
    "`xai_hsg.cli.main(argv)` in a forked child, killed with `sig` after `delay_s` (see `_fork_and_signal`)."

    def job():
        from xai_hsg.cli import main

        return main(argv)

    return _fork_and_signal(job, delay_s, sig)


def _delays(rng, n: int, run_s: float) -> list[float]:
    "`n` delays spread evenly (one per stratum, random within it) over [0, 1.5 run_s]: early, mid-write, after the end."
    return [run_s * 1.5 * (i + rng.random()) / n for i in range(n)]


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
        status, _ = _run_child(["simulate", *SIM_NEW, "--out", str(target)], delay, sig)
        log["simulate"].append({"folder": target.name, "signal": int(sig), "delay_s": delay, "status": status})
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
        status, _ = _run_child(argv, delay, sig)
        log["fit"].append({"folder": folder.name, "signal": int(sig), "delay_s": delay, "status": status})
    log["sim_s"], log["fit_s"] = sim_s, fit_s
    return log


@pytest.mark.slow
def test_interrupted_simulate_and_fit_radius_leave_old_or_new_outputs(tmp_path):
    from xai_hsg import core
    from xai_hsg.simulate import load_simulation

    started = time.perf_counter()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), "12"], capture_output=True, text=True, timeout=600, env=env
    )
    children = tmp_path / "children.log"
    assert proc.returncode == 0, proc.stderr[-2000:] + (children.read_text()[-2000:] if children.exists() else "")
    log = json.loads(proc.stdout.splitlines()[-1])
    old, new = _digest(tmp_path / "old"), _digest(tmp_path / "ref")
    assert set(old) == set(new) == {"tracks.csv", "truth.json"} and old != new
    outcomes = {"old": 0, "new": 0}
    for trial in log["simulate"]:
        folder = tmp_path / trial["folder"]
        got = _digest(folder)
        assert got in (old, new), trial  # never a mix of runs, never a truncated file
        outcomes["old" if got == old else "new"] += 1
        sim = load_simulation(folder)  # tracks and truth from the same run
        assert sim.tracks.n_traces == sim.truth["n_traces"] == (150 if got == old else 300), trial
        if trial["signal"] == signal.SIGINT:  # interrupted cleanly: 130 (0 if it had finished, 98 very early)
            assert os.WIFEXITED(trial["status"]) and os.WEXITSTATUS(trial["status"]) in (0, 98, 130), trial
    fit_old, fit_new = (tmp_path / "fit_old.json").read_bytes(), (tmp_path / "fit_ref.json").read_bytes()
    assert fit_old != fit_new
    for trial in log["fit"]:
        got = (tmp_path / trial["folder"] / "fit.json").read_bytes()
        assert got in (fit_old, fit_new), trial
        outcomes["old" if got == fit_old else "new"] += 1
        assert json.loads(got)["r_c_nm"] is not None
        if trial["signal"] == signal.SIGINT:
            assert os.WIFEXITED(trial["status"]) and os.WEXITSTATUS(trial["status"]) in (0, 98, 130), trial
    # SIGINT leaves no temporary; SIGKILL may, and the next writer of that name removes it (its process is gone)
    sigint = {t["folder"] for t in log["simulate"] + log["fit"] if t["signal"] == signal.SIGINT}
    (tmp_path / "children.log").unlink()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    leftovers += [p for d in tmp_path.glob("fit*") if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]
    for p in leftovers:
        owner = p.parent.name if p.parent != tmp_path else p.name.split(".tmp-")[0].lstrip(".")
        assert owner not in sigint, p
    for name in {t["folder"] for t in log["simulate"]}:
        core.remove_stale_temporaries(tmp_path, name)
    for d in tmp_path.glob("fit[0-9]*"):
        core.check_output_path(d / "fit.json")  # removes what a killed writer of fit.json left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for d in tmp_path.glob("fit[0-9]*") for p in d.iterdir() if p.name != "fit.json"]
    assert len(log["simulate"]) + len(log["fit"]) >= 20
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes  # the delays spread over the run and past its end
    print(f"{outcomes}, simulate {log['sim_s']:.1f} s, fit {log['fit_s']:.1f} s, {time.perf_counter() - started:.0f} s")


N_STORE = 10  # store trials, half SIGINT and half SIGKILL


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

    torch.manual_seed(0)
    model_dir = work / "model"
    embed.save_genomic_lm(EsmForMaskedLM(embed.nt_config("tiny", max_tokens=256)), embed.NTTokenizer(), model_dir)
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
        [sys.executable, __file__, str(tmp_path), "3", "store"], capture_output=True, text=True, timeout=600, env=env
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


if __name__ == "__main__":  # the driver: python tests/test_interruption.py WORK SEED [store]
    if sys.argv[3:] == ["store"]:
        print(json.dumps(_drive_store(Path(sys.argv[1]), int(sys.argv[2]))))
    else:
        print(json.dumps(_drive(Path(sys.argv[1]), int(sys.argv[2]))))
