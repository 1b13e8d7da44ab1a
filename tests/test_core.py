"""xai_hsg.core: profiles, cache keys, the artifact cache, results and devices."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO

from xai_hsg import core


def test_cache_key_changes_with_params_upstream_and_version(monkeypatch):
    base = core.cache_key({"n": 10, "rc_nm": 100.0}, ["aaa"])
    assert base == core.cache_key({"rc_nm": 100.0, "n": 10}, ["aaa"])  # order of parameters is irrelevant
    assert base != core.cache_key({"n": 10, "rc_nm": 100.5}, ["aaa"])
    assert base != core.cache_key({"n": 10, "rc_nm": 100.0}, ["aab"])
    assert base != core.cache_key({"n": 10, "rc_nm": 100.0}, ["aaa"], version="0.0.0+other")
    assert core.stable_hash(np.arange(3)) != core.stable_hash(np.arange(4))
    with pytest.raises(TypeError, match="cannot hash"):
        core.stable_hash({"f": object()})


def _library_copy(tmp_path):
    "A scratch copy of xai_hsg/ (as `<tmp>/xai_hsg`) whose files a test may edit."
    shutil.copytree(REPO / "xai_hsg", tmp_path / "xai_hsg", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(root, module, text="\n# edited\n"):
    f = root / "xai_hsg" / f"{module}.py"
    f.write_text(f.read_text() + text)


def test_code_version_tracks_library_source(tmp_path):
    version = core.code_version()
    assert version.startswith(core.xai_hsg.__version__ + "+") and len(version.split("+")[1]) == 12
    root = _library_copy(tmp_path)
    # a probe module importing in every supported form, at module level and inside a function
    (root / "xai_hsg" / "probe.py").write_text(
        "from . import tracks\n"
        "def later():\n"
        "    from .simulate import SimParams\n"
        "    import xai_hsg.genome\n"
        "    from xai_hsg import embed\n"
        "    from xai_hsg.radius import fit_radius\n"
    )
    closure = core.module_closure(["xai_hsg.probe"], root=root)
    assert {"probe", "tracks", "simulate", "genome", "embed", "radius", "__init__"} <= set(closure)
    assert not {"render", "pipeline", "cli"} & set(closure)  # nothing in the library imports these
    whole, probe, embed = (
        core.code_version(root=root),
        core.code_version(["probe"], root),
        core.code_version(["embed"], root),
    )
    assert "genome" in core.module_closure(["embed"], root) and "simulate" not in core.module_closure(["embed"], root)
    for module in ("genome", "simulate", "render"):  # imported by embed / imported by probe only / by neither
        _edit(root, module)
        changed = {
            "whole": core.code_version(root=root) != whole,
            "probe": core.code_version(["probe"], root) != probe,
            "embed": core.code_version(["embed"], root) != embed,
        }
        assert changed == {"whole": True, "probe": module != "render", "embed": module == "genome"}, module
        whole, probe, embed = (
            core.code_version(root=root),
            core.code_version(["probe"], root),
            core.code_version(["embed"], root),
        )
    _edit(root, "embed")  # the module itself
    assert core.code_version(["embed"], root) != embed
    assert (
        core.code_version(["embed"], root)
        == core.code_version(["xai_hsg.embed"], root)
        == core.code_version("embed", root)
    )
    assert "render" not in core.module_closure(["core"])  # core never imports the renderer
    with pytest.raises(ValueError, match="not modules"):
        core.code_version(["no_such_module"], root)
    assert core.imported_modules("from xai_hsg import __version__, core", known={"core"}) == {"__init__", "core"}


def test_artifact_cache_computes_once_and_never_leaves_half_written(tmp_path):
    cache, calls = core.ArtifactCache(tmp_path), []

    def compute():
        calls.append(1)
        return {"x": np.ones(3)}

    a = cache.get_or_compute("thing", {"k": 1}, compute, verbose=False)
    b = cache.get_or_compute("thing", {"k": 1}, compute, verbose=False)
    assert len(calls) == 1 and b.cached and np.array_equal(b.value["x"], np.ones(3))
    record = json.loads((a.path / "_key.json").read_text())
    assert record["params"] == {"k": 1} and record["code"] is None and record["version"] == core.code_version()
    # scoped to a module's import closure: another key, recorded in _key.json
    c = cache.get_or_compute("thing", {"k": 1}, compute, code=("xai_hsg.tracks",), verbose=False)
    assert not c.cached and c.key != a.key and len(calls) == 2
    assert json.loads((c.path / "_key.json").read_text())["code"] == ["xai_hsg.tracks"]
    assert cache.get_or_compute("thing", {"k": 1}, compute, code=("xai_hsg.tracks",), verbose=False).cached
    shutil.rmtree(c.path)  # the check below expects the unscoped entry alone

    def broken_save(value, folder):
        (folder / "partial.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.get_or_compute("thing", {"k": 2}, compute, save=broken_save, verbose=False)
    assert sorted(p.name for p in (tmp_path / "thing").iterdir()) == [a.key]  # nothing partial left behind
    with pytest.raises(ValueError, match="artifact name"):
        cache.get_or_compute("bad/name", {}, compute)


def test_profiles_fail_loudly(tmp_path):
    (tmp_path / "nbs").mkdir()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ok.yml").write_text("defaults: {seed: 3}\nnotebooks:\n  01_a: {n: 2}\n")
    prof = core.load_profile("ok", root=tmp_path)
    assert prof.params_for("01_a", ["profile", "seed", "n"]) == {"seed": 3, "n": 2, "profile": "ok"}
    assert prof.params_for("01_a", ["profile", "n"]) == {"n": 2, "profile": "ok"}  # defaults only where declared
    with pytest.raises(FileNotFoundError, match=r"known profiles: \['ok'\]"):
        core.load_profile("nope", root=tmp_path)
    (tmp_path / "profiles" / "bad.yml").write_text("notebook: {}\n")
    with pytest.raises(ValueError, match="unknown top-level keys"):
        core.load_profile("bad", root=tmp_path)


def test_results_round_trip_and_key_validation(tmp_path):
    core.save_results(
        "01_x",
        {"a": np.float64(1.5), "t": torch.tensor(2.0), "v": np.arange(2), "nan": float("nan")},
        profile="p",
        root=tmp_path,
    )
    core.save_results("01_x", {"b": 3}, profile="p", root=tmp_path)  # merges
    assert core.load_results("01_x", profile="p", root=tmp_path) == {
        "a": 1.5,
        "t": 2.0,
        "v": [0, 1],
        "nan": None,
        "b": 3,
    }
    with pytest.raises(ValueError, match="identifiers"):
        core.save_results("01_x", {"bad-key": 1}, profile="p", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="run it first"):
        core.load_results("02_y", profile="p", root=tmp_path)


def test_stage_file_resolves_an_upstream_artifact_or_says_what_to_run(tmp_path):
    (core.artifact_dir("01_simulation", profile="p", root=tmp_path) / "truth.json").write_text("{}")
    assert core.stage_file("01_simulation", "truth.json", profile="p", root=tmp_path).read_text() == "{}"
    with pytest.raises(FileNotFoundError) as err:
        core.stage_file("01_simulation", "tracks.parquet", profile="p", root=tmp_path)
    message = str(err.value)
    assert "tracks.parquet not found; run `xai-hsg reproduce --profile p --only 01` first" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="notebook name"):
        core.stage_file("simulation", "truth.json", profile="p", root=tmp_path)


def test_save_default_round_trips_and_writes_json_atomically(tmp_path):
    value = {"b": 2, "a": [1, None]}
    core.save_default(value, tmp_path)
    assert list(core.load_default(tmp_path)) == ["b", "a"] and core.load_default(tmp_path) == value  # order kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value.json"]  # no temporary file left
    with pytest.raises(TypeError, match="no default way"):
        core.save_default({"f": object()}, tmp_path / "sub")


def test_save_figure_needs_a_label(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    with pytest.raises(ValueError, match="needs a label"):
        core.save_figure(fig, profile="p", root=tmp_path)
    with pytest.raises(ValueError, match="must look like"):
        core.save_figure(fig, "msd plot", profile="p", root=tmp_path)
    plt.close(fig)


def test_find_root_and_device(tmp_path, monkeypatch):
    monkeypatch.setenv(core.ROOT_ENV, str(tmp_path))
    assert core.find_root() == tmp_path.resolve()
    monkeypatch.delenv(core.ROOT_ENV)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="No xai_hsg repository"):
        core.find_root()
    assert core.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert core.get_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            core.get_device("cuda")
    with pytest.raises(ValueError):
        core.seed_everything(-1)


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_atomic_folder_replaces_a_run_as_a_whole(tmp_path, monkeypatch, atomic_swap):
    if not atomic_swap:  # a system without renameat2: two renames, the old folder aside until the new one is in
        monkeypatch.setattr(core, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError("no swap")))
    run = tmp_path / "run"
    for text in ("first", "second"):
        with core.atomic_folder(run, marker="demo") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".run.tmp-")
            (tmp / "a.txt").write_text(text)
        assert (run / "a.txt").read_text() == text and os.listdir(tmp_path) == ["run"]
    with pytest.raises(RuntimeError, match="boom"), core.atomic_folder(run, marker="demo") as tmp:
        (tmp / "a.txt").write_text("third")
        raise RuntimeError("boom")
    assert (run / "a.txt").read_text() == "second" and os.listdir(tmp_path) == ["run"]
    assert json.loads((run / core.OUTPUT_MARKER).read_text())["kind"] == "demo"
    with pytest.raises(core.OutputError, match="holds a demo run, not a previous other run"):
        with core.atomic_folder(run, marker="other"):
            pass
    link = tmp_path / "link"
    link.symlink_to(run)
    with core.atomic_folder(link, marker="demo") as tmp:  # a link: its target is replaced, the link kept
        (tmp / "a.txt").write_text("via link")
    assert link.is_symlink() and (run / "a.txt").read_text() == "via link"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "fit.json").write_text("{}")
    ours = core._temp_sibling(tmp_path / "fit.json")
    killed = ours.with_name(ours.name.replace(f".{os.getpid()}.", f".{pid}."))
    other = tmp_path / ".other.json.tmp-host.1.ab"
    for p in (ours, killed, other):
        p.write_text("partial")
    core.check_output_path(tmp_path / "fit.json")  # the next writer of fit.json
    assert sorted(os.listdir(tmp_path)) == sorted([ours.name, other.name, "fit.json"])  # a live writer's is kept
