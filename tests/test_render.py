"""The Quarto-free renderer: variable substitution, figure numbering, cross-references, clear errors."""

from __future__ import annotations

import re

import matplotlib
import pytest
from pypdf import PdfReader

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from xai_hsg import core, render
from xai_hsg.render import RenderError

TWO_FIGURES = """
---
title: "Two figures"
---

First see @fig-second, then @fig-first; the value is {{< var demo.value >}} of {{< var demo.count >}}.

![The first one.](figures/fig-first.png){#fig-first}

![The second one.](figures/fig-second.png){#fig-second}
"""


@pytest.fixture
def paper_repo(tmp_path):
    root = tmp_path / "repo"
    for d in ("nbs", "profiles", "paper"):
        (root / d).mkdir(parents=True)
    for label in ("fig-first", "fig-second"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1])
        core.save_figure(fig, label, profile="smoke", root=root)
        plt.close(fig)
    core.save_results("09_demo", {"value": 0.123456, "count": 12000}, profile="smoke", root=root)
    (root / "paper" / "index.qmd").write_text(TWO_FIGURES.lstrip())
    return root


@pytest.mark.slow  # renders HTML and PDF (pandoc + typst)
def test_numbering_follows_document_order_and_references_resolve(paper_repo):
    out = render.render_paper("smoke", root=paper_repo, engine="pandoc")
    html = out["html"].read_text()
    # figures numbered in order of appearance, references carry the number and link to the figure
    assert re.search(r"Figure\s+1:</strong>\s*The first one", html) and re.search(
        r"Figure\s+2:</strong>\s*The second one", html
    )
    assert re.search(r'<a href="#fig-second">Figure\s+2</a>, then <a href="#fig-first">Figure\s+1</a>', html)
    assert "the value is 0.123 of 12,000" in html  # formatted variables
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(out["pdf"]).pages).split())
    assert "First see Figure 2, then Figure 1" in text and "Figure 1: The first one" in text
    assert "the value is 0.123 of 12,000" in text
    assert (paper_repo / "paper/_variables.yml").read_text().count("value: '0.123'") == 1


def test_unknown_variable_names_the_line(paper_repo):
    (paper_repo / "paper/index.qmd").write_text("---\ntitle: x\n---\n\nok\n\n{{< var demo.missing >}}\n")
    with pytest.raises(RenderError, match=r"index.qmd:7: unknown variable 'demo.missing'"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")


def test_unknown_figure_reference_is_an_error(paper_repo):
    (paper_repo / "paper/index.qmd").write_text("See @fig-nowhere.\n")
    with pytest.raises(RenderError, match="unknown figure reference @fig-nowhere"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")


def test_missing_figure_file_is_an_error(paper_repo):
    (paper_repo / "paper/index.qmd").write_text("![Lost.](figures/fig-lost.png){#fig-lost}\n")
    with pytest.raises(RenderError, match="fig-lost.png"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")


@pytest.mark.slow  # renders HTML and PDF (pandoc + typst)
def test_bibliography_from_project_config_and_unknown_citations(paper_repo):
    (paper_repo / "paper/_quarto.yml").write_text("project:\n  type: manuscript\nbibliography: refs.bib\n")
    (paper_repo / "paper/refs.bib").write_text(
        "@article{known2020, title={A title}, author={Doe, Jane}, journal={J}, year={2020}}\n"
    )
    (paper_repo / "paper/index.qmd").write_text("As shown [@known2020].\n")
    html = render.render_paper("smoke", root=paper_repo, engine="pandoc")["html"].read_text()
    assert "Doe" in html and "2020" in html and "known2020?" not in html
    (paper_repo / "paper/index.qmd").write_text("As shown [@unknown1999].\n")
    with pytest.raises(RenderError, match="unknown1999"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")


def test_other_shortcodes_are_refused_not_dropped():
    with pytest.raises(RenderError, match="only"):
        render.substitute_variables("{{< meta title >}}", {})


def test_quarto_engine_requested_without_quarto(paper_repo, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(RenderError, match="quarto is not on PATH"):
        render.render_paper("smoke", root=paper_repo, engine="quarto")


@pytest.mark.parametrize(
    "value,text",
    [
        (3, "3"),
        (12000, "12,000"),
        (0.5, "0.5"),
        (0.000123, "1.23e-04"),
        (1234.6, "1,235"),
        (None, "n/a"),
        (True, "yes"),
        ("cpu", "cpu"),
        (0.0, "0"),
    ],
)
def test_format_value(value, text):
    assert render.format_value(value) == text


@pytest.mark.slow  # renders HTML and PDF (pandoc + typst)
def test_tables_are_included_numbered_and_referenced(paper_repo):
    import pandas as pd

    core.save_table(
        pd.DataFrame({"model": ["gated", "control"], "R2": [0.27812, 0.2761]}),
        "tbl-models",
        "Held-out R² per model.",
        profile="smoke",
        root=paper_repo,
    )
    (paper_repo / "paper/index.qmd").write_text(
        "See @tbl-models and @fig-first.\n\n{{< include tables/tbl-models.md >}}\n\n"
        "![The first one.](figures/fig-first.png){#fig-first}\n"
    )
    out = render.render_paper("smoke", root=paper_repo, engine="pandoc")
    html = out["html"].read_text()
    assert re.search(r'<a href="#tbl-models">Table\s+1</a> and <a href="#fig-first">Figure\s+1</a>', html)
    assert re.search(r"Table\s+1:</strong>\s*Held-out R² per model", html) and "<td" in html and "0.278" in html
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(out["pdf"]).pages).split())
    assert "See Table 1 and Figure 1" in text and "0.278" in text and "control" in text


def test_missing_included_table_is_an_error(paper_repo):
    (paper_repo / "paper/index.qmd").write_text("ok\n\n{{< include tables/tbl-absent.md >}}\n")
    with pytest.raises(RenderError, match=r"index.qmd:3: included file 'tables/tbl-absent.md' not found"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")
    (paper_repo / "paper/index.qmd").write_text("See @tbl-absent.\n")
    with pytest.raises(RenderError, match="unknown table reference @tbl-absent"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_refusals_come_before_paper_changes_and_outputs_replace_as_a_whole(paper_repo):
    "An unknown profile, a profile without results, or a check that fails leaves paper/ as it was (issue 12 row 7)."
    paper = paper_repo / "paper"
    (paper / "figures").mkdir()
    (paper / "figures" / "fig-stale.png").write_bytes(b"old")
    (paper / "_variables.yml").write_text("old: 1\n")
    before = _tree(paper)
    with pytest.raises(RenderError, match=r"no profile 'nope' \(known: smoke\)"):
        render.render_paper("nope", root=paper_repo, engine="pandoc")
    (paper_repo / "profiles" / "paper.yml").write_text("defaults: {}\n")
    with pytest.raises(RenderError, match="no results for profile 'paper'"):
        render.render_paper("paper", root=paper_repo, engine="pandoc")
    (paper / "index.qmd").write_text("{{< var demo.value >}}\n\n{{< var demo.missing >}}\n")
    with pytest.raises(RenderError, match="index.qmd:3: unknown variable"):
        render.render_paper("smoke", root=paper_repo, engine="pandoc")
    assert _tree(paper) == {**before, "index.qmd": (paper / "index.qmd").read_bytes()}
    # the checks pass: figures and tables are replaced as a whole (the stale figure goes), variables rewritten
    (paper / "index.qmd").write_text("{{< var demo.value >}}\n")
    render._update_paper("smoke", paper_repo, render.collect_variables("smoke", paper_repo), check_text=True)
    assert sorted(p.name for p in (paper / "figures").iterdir()) == [
        "fig-first.png",
        "fig-first.svg",
        "fig-second.png",
        "fig-second.svg",
    ]
    assert "value: '0.123'" in (paper / "_variables.yml").read_text()
    assert not [p for p in paper.iterdir() if p.name.startswith(".")]  # no staging folder left
