"""The repository itself: library in sync with the notebooks, notebooks clean, profiles match notebooks."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from xai_hsg import core, pipeline

BIN = Path(sys.executable).parent


def _copy_project(dst: Path) -> Path:
    for name in ("nbs", "xai_hsg"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy2(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_library_is_in_sync_with_notebooks(tmp_path):
    work = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev-export")], cwd=work, check=True, capture_output=True)
    cmp = filecmp.dircmp(REPO / "xai_hsg", work / "xai_hsg", ignore=["__pycache__"])
    changed = cmp.diff_files + cmp.left_only + cmp.right_only
    assert not changed, f"nbdev-export changes {changed}: run `make export` and commit"


def test_notebooks_are_clean(tmp_path):
    work = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev-clean")], cwd=work, check=True, capture_output=True)
    dirty = [
        p.name for p in sorted((REPO / "nbs").glob("*.ipynb")) if p.read_bytes() != (work / "nbs" / p.name).read_bytes()
    ]
    assert not dirty, f"nbdev-clean changes {dirty}: run nbdev-clean and commit"


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_profiles_match_the_notebooks(profile):
    prof = core.load_profile(profile, root=REPO)
    stages = {s.name: s for s in pipeline.discover_stages(REPO)}
    assert set(prof.notebooks) <= set(stages), f"{profile}.yml names notebooks that do not exist"
    for name, stage in stages.items():
        params = prof.params_for(name, stage.declared)  # raises on a parameter the notebook does not declare
        assert params["profile"] == profile


def test_readme_gives_exactly_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_ci_workflow_mirrors_the_ci_script():
    "Every command of .ci/run is a step of the GitHub workflow, in the same order."
    import yaml

    script = [
        ln.strip()
        for ln in (REPO / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#") and not ln.startswith(("set ", "cd ", "echo "))
    ]
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = [step["run"].strip() for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert [cmd for cmd in steps if cmd in script] == script, (script, steps)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "nbs").glob("*.ipynb") if not p.name[:2].isdigit() or p.name[2] != "_")
)
def test_companion_notebooks_execute(name, tmp_path):
    "Notebooks outside the chain (index, library companions such as 01a_tracks) run too: their cells are checks."
    import papermill as pm

    pm.execute_notebook(
        str(REPO / "nbs" / name), str(tmp_path / name), kernel_name="python3", cwd=str(REPO / "nbs"), progress_bar=False
    )
