"""Issue 12, the outputs side: one test per row fixed in `core` and `simulate`'s writers. Each asserts the one-line
message, the exit status where the CLI is involved, and that no user file changed (hashes before and after)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xai_hsg import core
from xai_hsg.simulate import SimParams, load_simulation, write_simulation

SMALL = SimParams(n_frames=20)


def _hashes(folder: Path) -> dict:
    "sha256 of every file under `folder`, hidden ones included."
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def user_files(tmp_path):
    "A user's folder: a tracks file and notes that nothing may overwrite."
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "tracks.csv").write_text("trace_id,t_s,distance_nm\n0,0,100\n0,30,120\n")
    (folder / "notes.md").write_text("my notes\n")
    return folder


# ---- row 1: an output path equal to an input


def test_row1_output_equal_to_input_is_refused(user_files, capsys):
    from xai_hsg.cli import main

    tracks, before = user_files / "tracks.csv", _hashes(user_files)
    (user_files / "link.csv").symlink_to(tracks)
    for out in (tracks, user_files / "link.csv", user_files / ".." / user_files.name / "tracks.csv"):
        with pytest.raises(core.OutputError, match="the output is the input") as err:
            core.check_output_path(out, inputs=[tracks])
        assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert main(["fit-radius", str(tracks), "--out", str(tracks)]) == 1
    assert "is the input" in _one_line_error(capsys)
    assert _hashes(user_files) == {**before, "link.csv": before["tracks.csv"]}


# ---- row 2: simulate into an existing folder; Ctrl-C while writing; parquet into a CSV folder


def test_row2_simulate_refuses_a_folder_holding_other_files(user_files, capsys):
    from xai_hsg.cli import main

    before = _hashes(user_files)
    with pytest.raises(core.OutputError, match="not a previous simulation run") as err:
        write_simulation(user_files, 3, SMALL, seed=1)
    assert str(user_files) in str(err.value) and "force" in str(err.value)
    assert main(["simulate", "--n", "3", "--frames", "20", "--out", str(user_files)]) == 1
    message = _one_line_error(capsys)
    assert str(user_files) in message and "--force" in message
    assert _hashes(user_files) == before
    # a previous simulation holding a file the user added (a fit) is refused too: replacing would delete it
    sim = user_files.parent / "sim"
    write_simulation(sim, 3, SMALL, seed=1)
    (sim / "fit.json").write_text("{}")
    before = _hashes(sim)
    with pytest.raises(core.OutputError, match="holds fit.json besides a previous simulation run"):
        write_simulation(sim, 4, SMALL, seed=2)
    assert _hashes(sim) == before
    # forced: the folder is replaced as a whole
    write_simulation(user_files, 3, SMALL, seed=1, force=True)
    assert sorted(os.listdir(user_files)) == [core.OUTPUT_MARKER, "tracks.csv", "truth.json"]


def test_row2_interrupted_simulate_leaves_the_old_run_complete(tmp_path, monkeypatch):
    import xai_hsg.simulate as simulate_module

    folder = tmp_path / "D"
    write_simulation(folder, 3, SMALL, seed=1)
    before = _hashes(folder)

    def write_half_then_ctrl_c(frame, path):
        Path(path).write_text(frame.to_csv(index=False)[:200])  # a truncated tracks file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_module, "write_tracks", write_half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_simulation(folder, 5, SMALL, seed=2)
    assert _hashes(folder) == before and os.listdir(tmp_path) == ["D"]  # the old run, nothing partial beside it
    sim = load_simulation(folder)
    assert sim.tracks.n_traces == sim.truth["n_traces"] == 3 and sim.truth["seed"] == 1


def test_row2_parquet_into_a_csv_folder_leaves_no_csv_behind(tmp_path):
    folder = tmp_path / "D"
    write_simulation(folder, 3, SMALL, seed=1)
    write_simulation(folder, 4, SMALL, seed=2, fmt="parquet")
    assert sorted(os.listdir(folder)) == [core.OUTPUT_MARKER, "tracks.parquet", "truth.json"]
    sim = load_simulation(folder)
    assert sim.tracks.n_traces == sim.truth["n_traces"] == 4 and sim.truth["seed"] == 2
    # a folder that save_simulation wrote before folders were marked is recognised as a previous simulation
    (folder / core.OUTPUT_MARKER).unlink()
    write_simulation(folder, 3, SMALL, seed=3)
    assert load_simulation(folder).truth["seed"] == 3


# ---- row 6: outputs that cannot be written, and a profile with a YAML syntax error


def test_row6_outputs_that_cannot_be_written_are_one_line(user_files, capsys):
    from xai_hsg.cli import main

    tracks, before = user_files / "tracks.csv", _hashes(user_files)
    with pytest.raises(core.OutputError, match="is a file; the output is a folder"):
        write_simulation(tracks, 3, SMALL)
    assert main(["simulate", "--n", "3", "--frames", "20", "--out", str(tracks)]) == 1
    assert str(tracks) in _one_line_error(capsys)
    with pytest.raises(core.OutputError, match="is a folder; the output is a file"):
        core.check_output_path(user_files, inputs=[tracks])
    with pytest.raises(core.OutputError, match="notes.md is a file, not a folder"):
        core.check_output_path(user_files / "notes.md" / "fit.json")
    unwritable = Path("/sys") if os.geteuid() == 0 else user_files.parent / "locked"
    if unwritable != Path("/sys"):
        unwritable.mkdir()
        unwritable.chmod(0o500)
    with pytest.raises(core.OutputError, match="is not writable") as err:
        core.check_output_path(unwritable / "new" / "x.json")
    assert str(unwritable / "new" / "x.json") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(core.OutputError, match="is not writable"):
        write_simulation(unwritable / "sim", 3, SMALL)
    assert _hashes(user_files) == before


def test_row6_profile_yaml_syntax_error_names_file_and_line(tmp_path):
    profile = tmp_path / "broken.yml"
    profile.write_text("description: x\ndefaults:\n  seed: 1\n  device: [cpu\nnotebooks: {}\n")
    before = _hashes(tmp_path)
    with pytest.raises(ValueError) as err:
        core.load_profile(profile)
    message = str(err.value)
    assert message.startswith(f"{profile}: YAML syntax error at line 5, column ") and "\n" not in message
    assert _hashes(tmp_path) == before


# ---- row 9: JSON outputs are strict


def test_row9_json_outputs_hold_null_never_nan(tmp_path):
    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))

    data = {
        "r_c_interval_nm": [float("nan"), np.float64("nan")],
        "k": np.float32("inf"),
        "boot": np.array([1.0, np.nan, -np.inf]),
        "nested": [{"x": (math.nan, 1)}],
        "ok": np.int64(3),
    }
    path = core.write_json_atomic(tmp_path / "fit.json", data)
    assert strict(path.read_text()) == {
        "r_c_interval_nm": [None, None],
        "k": None,
        "boot": [1.0, None, None],
        "nested": [{"x": [None, 1]}],
        "ok": 3,
    }
    compact = core.write_json_atomic(tmp_path / "c.json", {"v": float("nan")}, indent=None, default=str)
    assert strict(compact.read_text()) == {"v": None}
    assert sorted(os.listdir(tmp_path)) == ["c.json", "fit.json"]  # no temporary left


# ---- row 11: profile keys that no notebook reads


def test_row11_unknown_profile_defaults_are_errors(tmp_path):
    from xai_hsg.pipeline import discover_stages

    root = core.find_root()
    declared = {stage.name: stage.declared for stage in discover_stages(root)}
    for name in ("smoke", "paper"):  # the shipped profiles pass
        core.load_profile(name, root=root).check(declared)
    profile = tmp_path / "typo.yml"
    profile.write_text("defaults: {sede: 5}\n")
    before = _hashes(tmp_path)
    with pytest.raises(ValueError) as err:
        core.load_profile(profile).check(declared)
    assert str(err.value) == f"{profile}: defaults.sede is not a parameter of any notebook (did you mean 'seed'?)"
    profile.write_text("notebooks:\n  01_simulaton: {n_traces: 3}\n  03_radius: {n_boots: 2}\n")
    with pytest.raises(ValueError) as err:
        core.load_profile(profile).check(declared)
    message = str(err.value)
    assert "notebooks.01_simulaton is not a notebook of the chain (did you mean '01_simulation'?)" in message
    assert "notebooks.03_radius.n_boots is not a parameter of 03_radius (did you mean 'n_boot'?)" in message
    assert "\n" not in message
    profile.write_text("defaults: {sede: 5}\n")
    assert _hashes(tmp_path) == before


# ---- row 18: a save killed with SIGKILL leaves a temporary folder; the next call of that name removes it


def test_row18_killed_cache_save_is_cleaned_on_the_next_call(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        from xai_hsg import core

        def save(value, folder):
            (folder / "part.bin").write_bytes(b"half")
            print("saving", flush=True)
            time.sleep(120)

        core.ArtifactCache(sys.argv[1]).get_or_compute("thing", {"k": 1}, lambda: 1, save=save, verbose=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    left = [p for p in (tmp_path / "thing").iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".") and (left[0] / "part.bin").exists()  # the leftover
    cache = core.ArtifactCache(tmp_path)
    art = cache.get_or_compute("thing", {"k": 2}, lambda: [2], verbose=False)
    assert sorted(p.name for p in (tmp_path / "thing").iterdir()) == [art.key]  # the killed save's folder is gone
    assert cache.get_or_compute("thing", {"k": 2}, lambda: [3], verbose=False).value == [2]
