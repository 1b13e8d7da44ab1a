"""Shared fixtures: a miniature repository (profiles, notebooks, manuscript) for pipeline and renderer tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


def make_notebook(path: Path, cells: list[tuple[str, str]], parameters: str | None = None) -> Path:
    "Write a notebook: `parameters` becomes the tagged cell (if given), `cells` are ('code'|'md', source)."
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(textwrap.dedent(parameters).strip())
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for kind, source in cells:
        source = textwrap.dedent(source).strip()
        nb.cells.append(nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


ALPHA_PARAMS = """
profile = "smoke"
scale = 2.0
"""

ALPHA_CELLS = [
    ("md", "# Alpha\nComputes the answer and draws it."),
    (
        "code",
        """
        import matplotlib; matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from xai_hsg import core
        answer = scale * 21
        core.save_results("01_alpha", {"answer": answer}, profile=profile)
    """,
    ),
    (
        "code",
        """
        #| label: fig-alpha
        #| fig-cap: A line whose slope is the answer.
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, answer])
        core.save_figure(fig)
    """,
    ),
]

BETA_PARAMS = """
# needs: 01_alpha
profile = "smoke"
offset = 1
"""

BETA_CELLS = [
    (
        "code",
        """
        from xai_hsg import core
        total = core.load_results("01_alpha", profile=profile)["answer"] + offset
        core.save_results("02_beta", {"total": total}, profile=profile)
    """,
    ),
]

GAMMA_PARAMS = """
# needs: none
profile = "smoke"
seed = 0
"""

GAMMA_CELLS = [
    (
        "code",
        """
    from xai_hsg import core
    core.save_results("03_gamma", {"independent": 7}, profile=profile)
""",
    )
]

PAPER = """
---
title: "Fixture manuscript"
author: "Test"
---

## Results

The answer is {{< var alpha.answer >}} and the total is {{< var beta.total >}}, as @fig-alpha shows.

![The answer as a slope.](figures/fig-alpha.png){#fig-alpha width=50%}
"""


def write_profile(root: Path, alpha: dict | None = None, beta: dict | None = None) -> None:
    import yaml

    notebooks = {"01_alpha": alpha or {}, "02_beta": beta or {}, "03_gamma": {}}
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "profiles" / "smoke.yml").write_text(
        yaml.safe_dump({"description": "fixture", "defaults": {"seed": 0}, "notebooks": notebooks})
    )


@pytest.fixture
def mini_repo(tmp_path: Path) -> Path:
    "A repository with a three-notebook chain (01 → 02; 03 independent) and a manuscript."
    root = tmp_path / "repo"
    make_notebook(root / "nbs" / "01_alpha.ipynb", ALPHA_CELLS, ALPHA_PARAMS)
    make_notebook(root / "nbs" / "02_beta.ipynb", BETA_CELLS, BETA_PARAMS)
    make_notebook(root / "nbs" / "03_gamma.ipynb", GAMMA_CELLS, GAMMA_PARAMS)
    write_profile(root)
    (root / "paper").mkdir()
    (root / "paper" / "index.qmd").write_text(PAPER.lstrip())
    (root / "paper" / "refs.bib").write_text("")
    return root


def sigint_default() -> None:
    """`preexec_fn` of a child that a test interrupts with SIGINT: restore the default disposition, which a test run
    started as a background job of a non-interactive shell inherits as *ignored* (the child would not see Ctrl-C)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
