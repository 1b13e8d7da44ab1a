"""End to end: the fixture chain through papermill, the cache, failures, and the rendered manuscript."""

from __future__ import annotations

import json
import logging
import shutil

import nbformat
import pandas as pd
import pytest
import yaml
from conftest import ALPHA_CELLS, ALPHA_PARAMS, REPO, make_notebook, write_profile
from pypdf import PdfReader

from xai_hsg import cli, core, pipeline
from xai_hsg.pipeline import PipelineError, reproduce


def _pdf_text(path) -> str:
    "All text of a PDF with whitespace (Typst uses non-breaking spaces) collapsed to single spaces."
    return " ".join(" ".join(page.extract_text() for page in PdfReader(path).pages).split())


def _pdf_image_count(path) -> int:
    return sum(len(page.images) for page in PdfReader(path).pages)


@pytest.mark.slow
def test_chain_runs_caches_and_reruns_downstream_only(mini_repo):
    first = reproduce("smoke", root=mini_repo)
    assert [first[s] for s in ("01_alpha", "02_beta", "03_gamma")] == ["ran", "ran", "ran"]
    # artifacts of the run: executed notebooks, figure (png + svg), results
    assert (mini_repo / "runs/smoke/01_alpha.ipynb").exists()
    assert (mini_repo / "figures/smoke/fig-alpha.png").exists() and (mini_repo / "figures/smoke/fig-alpha.svg").exists()
    assert json.loads((mini_repo / "results/smoke/02_beta.json").read_text()) == {"total": 43.0}

    # the figure and the numbers reach both renderings, with Quarto-style numbering and cross-reference
    html = first["render"]["html"].read_text()
    assert "data:image/png;base64" in html and "Figure 1:" in html and 'href="#fig-alpha"' in html
    assert "The answer is 42 and the total is 43" in html
    pdf_text = _pdf_text(first["render"]["pdf"])
    assert "The answer is 42 and the total is 43, as Figure 1 shows" in pdf_text
    assert "Figure 1: The answer as a slope" in pdf_text and _pdf_image_count(first["render"]["pdf"]) == 1

    # second run: everything cached
    second = reproduce("smoke", root=mini_repo, render=False)
    assert second == {"01_alpha": "cached", "02_beta": "cached", "03_gamma": "cached"}

    # a parameter of 02 changes: only 02 re-runs
    write_profile(mini_repo, beta={"offset": 5})
    third = reproduce("smoke", root=mini_repo, render=False)
    assert third == {"01_alpha": "cached", "02_beta": "ran", "03_gamma": "cached"}
    assert json.loads((mini_repo / "results/smoke/02_beta.json").read_text())["total"] == 47.0

    # a parameter of 01 changes: 01 and its downstream 02 re-run, the independent 03 does not
    write_profile(mini_repo, alpha={"scale": 1.0}, beta={"offset": 5})
    fourth = reproduce("smoke", root=mini_repo, render=False)
    assert fourth == {"01_alpha": "ran", "02_beta": "ran", "03_gamma": "cached"}
    assert json.loads((mini_repo / "results/smoke/02_beta.json").read_text())["total"] == 26.0

    # --only re-runs nothing that is cached; --force does
    assert reproduce("smoke", root=mini_repo, only=["02"], render=False) == {"02_beta": "cached"}
    assert reproduce("smoke", root=mini_repo, only=["02"], force=True, render=False) == {"02_beta": "ran"}


@pytest.mark.slow
def test_failing_notebook_exits_nonzero_naming_notebook_cell_and_error(mini_repo, monkeypatch, capsys):
    make_notebook(
        mini_repo / "nbs" / "04_boom.ipynb",
        [("code", "x = 1"), ("code", "raise ValueError('boom 123')")],
        '# needs: none\nprofile = "smoke"',
    )
    monkeypatch.setenv("XAI_HSG_ROOT", str(mini_repo))
    code = cli.main(["reproduce", "--only", "04", "--no-render"])
    err = capsys.readouterr().err
    assert code == 1
    assert "04_boom.ipynb failed in cell 3 of 3" in err and "ValueError: boom 123" in err
    assert "raise ValueError" in err  # the failing line is quoted
    assert (
        not (mini_repo / "runs/smoke/_state.json").exists()
        or "04_boom" not in (mini_repo / "runs/smoke/_state.json").read_text()
    )


def test_missing_parameters_tag_is_a_clear_error(mini_repo):
    make_notebook(mini_repo / "nbs" / "04_untagged.ipynb", [("code", 'profile = "smoke"\nn = 3')], parameters=None)
    with pytest.raises(PipelineError, match="no cell is tagged 'parameters'"):
        reproduce("smoke", root=mini_repo, render=False)


def test_profile_parameter_the_notebook_does_not_declare_is_refused(mini_repo):
    write_profile(mini_repo, alpha={"scael": 3.0})
    with pytest.raises(ValueError, match="scael"):
        reproduce("smoke", root=mini_repo, render=False)


@pytest.mark.slow
def test_figure_cell_that_saves_nothing_is_an_error(mini_repo):
    make_notebook(
        mini_repo / "nbs" / "04_nofig.ipynb",
        [("code", "#| label: fig-lost\nx = 1")],
        '# needs: none\nprofile = "smoke"',
    )
    with pytest.raises(PipelineError, match="fig-lost"):
        reproduce("smoke", root=mini_repo, only=["04"], render=False)


@pytest.mark.slow
def test_outputs_saved_without_a_profile_go_to_the_running_profile(mini_repo):
    """A figure or result saved without naming the profile belongs to the profile being reproduced, not the default
    (a paper run's figures once went to figures/smoke and the stage failed after the whole run)."""
    import yaml

    (mini_repo / "profiles" / "paper.yml").write_text(
        yaml.safe_dump({"description": "fixture", "defaults": {"seed": 0}, "notebooks": {"04_fig": {}}})
    )
    cells = [
        ("code", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nfrom xai_hsg import core"),
        ("code", "#| label: fig-unnamed-profile\nfig, ax = plt.subplots()\ncore.save_figure(fig)"),
        ("code", "core.save_results('04_fig', {'done': True})"),
    ]
    make_notebook(mini_repo / "nbs" / "04_fig.ipynb", cells, '# needs: none\nprofile = "paper"')
    reproduce("paper", root=mini_repo, only=["04"], render=False)
    assert (mini_repo / "figures" / "paper" / "fig-unnamed-profile.png").exists()
    assert (mini_repo / "results" / "paper" / "04_fig.json").exists()
    assert not (mini_repo / "figures" / "smoke" / "fig-unnamed-profile.png").exists()


def test_stage_key_follows_code_not_prose(mini_repo):
    path = mini_repo / "nbs" / "01_alpha.ipynb"
    before = pipeline.parse_stage(path).source_hash
    make_notebook(path, [("md", "Different prose.")] + [c for c in ALPHA_CELLS if c[0] == "code"], ALPHA_PARAMS)
    assert pipeline.parse_stage(path).source_hash == before
    make_notebook(path, ALPHA_CELLS + [("code", "y = 2")], ALPHA_PARAMS)
    assert pipeline.parse_stage(path).source_hash != before


def test_needs_and_selection(mini_repo):
    stages = pipeline.discover_stages(mini_repo)
    assert [s.needs for s in stages] == [None, ("01_alpha",), ()]
    assert [s.name for s in pipeline.select_stages(stages, start="02")] == ["02_beta", "03_gamma"]
    with pytest.raises(PipelineError, match="matches 0 notebooks"):
        pipeline.select_stages(stages, only=["09"])
    make_notebook(mini_repo / "nbs" / "04_bad.ipynb", [], '# needs: 05_later\nprofile = "smoke"')
    with pytest.raises(PipelineError, match="not an earlier notebook"):
        pipeline.discover_stages(mini_repo)


def test_only_a_stage_whose_upstream_never_ran_says_what_to_run(mini_repo):
    with pytest.raises(PipelineError, match="01_alpha, which has not run"):
        reproduce("smoke", root=mini_repo, only=["02"], render=False)


def test_bad_parameter_of_a_later_stage_stops_the_chain_before_anything_runs(mini_repo):
    "Keys are planned for every selected stage first: a bad parameter of a late stage stops the chain before 01 runs."
    write_profile(mini_repo, beta={"ofset": 1})
    with pytest.raises(ValueError, match="ofset"):
        reproduce("smoke", root=mini_repo, render=False)
    assert not (mini_repo / "runs").exists()


TABLES_PARAMS = """
# needs: none
profile = "smoke"
write = True
"""

TABLES_CELLS = [
    (
        "code",
        """
    import pandas as pd
    from xai_hsg import core
    if write:
        core.save_table(pd.DataFrame({"x": [1]}), "tbl-named", "A named table.", profile=profile)
        core.save_table(pd.DataFrame({"y": [2]}), "tbl-" + "computed", "A computed label.", profile=profile)
    core.save_results("04_tables", {"wrote": write}, profile=profile)
""",
    )
]


@pytest.mark.slow
def test_rerun_clears_the_stage_tables_named_or_written(mini_repo):
    make_notebook(mini_repo / "nbs" / "04_tables.ipynb", TABLES_CELLS, TABLES_PARAMS)
    assert pipeline.parse_stage(mini_repo / "nbs" / "04_tables.ipynb").table_labels == ("tbl-named",)
    tables = mini_repo / "tables" / "smoke"
    assert reproduce("smoke", root=mini_repo, only=["04"], render=False) == {"04_tables": "ran"}
    assert sorted(p.name for p in tables.iterdir()) == [
        "tbl-computed.csv",
        "tbl-computed.md",
        "tbl-named.csv",
        "tbl-named.md",
    ]
    profile = yaml.safe_load((mini_repo / "profiles" / "smoke.yml").read_text())
    profile["notebooks"]["04_tables"] = {"write": False}
    (mini_repo / "profiles" / "smoke.yml").write_text(yaml.safe_dump(profile))
    assert reproduce("smoke", root=mini_repo, only=["04"], render=False) == {"04_tables": "ran"}
    assert list(tables.iterdir()) == []  # neither the literal label nor the computed one survives


def _repo_copy(tmp_path):
    "The stage notebooks, the library and the profiles of this repository, in a scratch folder."
    for name in ("nbs", "xai_hsg", "profiles"):
        shutil.copytree(
            REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
        )
    return tmp_path


def _with_downstream(stages, names):
    "`names` and every stage that needs one of them, directly or not (a stage without `# needs:` needs all earlier)."
    out = set(names)
    for i, stage in enumerate(stages):
        needs = [s.name for s in stages[:i]] if stage.needs is None else stage.needs
        if out & set(needs):
            out.add(stage.name)
    return out


def test_stage_keys_follow_the_library_code_each_stage_imports(tmp_path):
    root = _repo_copy(tmp_path)
    stages = pipeline.discover_stages(root)
    before = pipeline.stage_keys("smoke", root)
    assert list(before) == [s.name for s in stages] and before == pipeline.stage_keys("smoke", root)

    # a docstring edit in the renderer: no notebook imports it, no stage re-runs
    render_py = root / "xai_hsg" / "render.py"
    render_py.write_text(render_py.read_text().replace('"""', '"""Edited. ', 1))
    assert pipeline.stage_keys("smoke", root) == before

    # an edit of simulate.py re-runs exactly the stages whose notebooks reach it through imports, and their downstream
    simulate_py = root / "xai_hsg" / "simulate.py"
    simulate_py.write_text(simulate_py.read_text() + "\n# edited\n")
    after = pipeline.stage_keys("smoke", root)
    changed = {name for name in before if after[name] != before[name]}
    known = core.library_modules(root)
    users = {s.name for s in stages if "simulate" in core.module_closure([m for m in s.modules if m in known], root)}
    assert "01_simulation" in users and "00_core" not in users
    assert changed == _with_downstream(stages, users), (changed, users)
    assert "00_core" not in changed

    # every stage notebook saves its numbers with core: an edit of core re-keys them all
    core_py = root / "xai_hsg" / "core.py"
    core_py.write_text(core_py.read_text() + "\n# edited\n")
    assert all(key != after[name] for name, key in pipeline.stage_keys("smoke", root).items())


TRAP_PARAMS = """
# needs: none
profile = "smoke"
n_traces = 3  # traces (paper: >= 1000)
label = None  # None = the default label
"""

TRAP_CELLS = [
    (
        "code",
        """
    from xai_hsg import core
    core.save_results("04_trap", {"n_traces": n_traces, "label": label}, profile=profile)
""",
    )
]


@pytest.mark.slow  # one notebook through papermill
def test_injected_parameters_raise_no_papermill_parse_warnings(mini_repo, caplog):
    "Issue 12 row 12: comments with '=' made papermill warn 'Unable to parse line' and 'Passed unknown parameter'."
    from papermill.translators import PythonTranslator, papermill_translators

    path = make_notebook(mini_repo / "nbs" / "04_trap.ipynb", TRAP_CELLS, TRAP_PARAMS)
    with caplog.at_level(logging.WARNING, logger="papermill"):  # papermill's own parser trips on this cell
        names = {p.name for p in PythonTranslator.inspect(nbformat.read(path, as_version=4).cells[0])}
    assert "n_traces" not in names and "Unable to parse line" in caplog.text
    caplog.clear()
    profile = yaml.safe_load((mini_repo / "profiles" / "smoke.yml").read_text())
    profile["notebooks"]["04_trap"] = {"n_traces": 7, "label": "x"}
    (mini_repo / "profiles" / "smoke.yml").write_text(yaml.safe_dump(profile))
    with caplog.at_level(logging.INFO, logger="papermill"):
        assert reproduce("smoke", root=mini_repo, only=["04"], render=False) == {"04_trap": "ran"}
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise == []
    assert json.loads((mini_repo / "results/smoke/04_trap.json").read_text()) == {"n_traces": 7, "label": "x"}
    assert "python3" not in papermill_translators._translators  # papermill's registry is restored


def test_interrupted_or_failed_stage_leaves_its_previous_outputs(mini_repo, monkeypatch):
    "Ctrl-C (or a failure) inside a stage: what it staged is dropped; its previous outputs and key stand, complete."
    stage = pipeline.parse_stage(mini_repo / "nbs" / "03_gamma.ipynb")
    where = core.paths("smoke", mini_repo)
    prof = core.load_profile("smoke", root=mini_repo)
    plan = pipeline.plan_stages(prof, [stage], mini_repo)[0]
    state = pipeline._State(where.runs / "_state.json")
    pipeline._run_stage(plan, where, mini_repo, state)  # the previous, complete run
    before = {
        p.relative_to(mini_repo): p.read_bytes() for p in mini_repo.rglob("*") if p.is_file() and "runs" not in p.parts
    }
    assert (where.results / "03_gamma.json").exists() and state.keys() == {"03_gamma": plan.key}

    def interrupted(stage, params, out_nb, root, shown_nb=None):
        core.save_results(stage.name, {"half": 1}, profile="smoke", root=root)  # staged, as a notebook's would be
        core.save_table(pd.DataFrame({"x": [1]}), "tbl-half", "Half.", profile="smoke", root=root)
        out_nb.write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline._run_stage(plan, where, mini_repo, state)
    after = {
        p.relative_to(mini_repo): p.read_bytes() for p in mini_repo.rglob("*") if p.is_file() and "runs" not in p.parts
    }
    assert after == before and not (where.tables / "tbl-half.md").exists()
    assert pipeline._State(where.runs / "_state.json").keys() == {"03_gamma": plan.key}
    assert (where.runs / "03_gamma.failed.ipynb").exists()  # the executed notebook, kept to read
    assert sorted(p.name for p in where.runs.iterdir()) == ["03_gamma.failed.ipynb", "03_gamma.ipynb", "_state.json"]


def test_commit_interrupted_at_any_step_is_finished_by_the_next_run(mini_repo, monkeypatch):
    "Stopped after the commit point, between any two of its moves: the next run completes the new outputs and key."
    stage = pipeline.parse_stage(mini_repo / "nbs" / "01_alpha.ipynb")
    where = core.paths("smoke", mini_repo)
    real_move, moves = pipeline._move, []

    def execute(stage, params, out_nb, root, shown_nb=None):
        core.save_results(stage.name, {"answer": params["scale"]}, profile="smoke", root=root)
        (core.artifact_dir(stage.name, "smoke", root) / "a.txt").write_text(str(params["scale"]))
        core.save_table(pd.DataFrame({"x": [params["scale"]]}), "tbl-alpha", "A.", profile="smoke", root=root)
        figures = core.output_folder("figures", None, "smoke", root)
        figures.mkdir()
        (figures / "fig-alpha.png").write_text(str(params["scale"]))
        out_nb.write_text(str(params["scale"]))

    def run(scale, stop_after=None):
        "Run 01 with `scale`, stopping (as SIGKILL would, without cleanup) after `stop_after` moves; its key."
        write_profile(mini_repo, alpha={"scale": scale})
        plan = pipeline.plan_stages(core.load_profile("smoke", root=mini_repo), [stage], mini_repo)[0]

        def move(source, target):
            if stop_after is not None and len(moves) >= stop_after:
                raise SystemExit("killed")
            moves.append(target)
            real_move(source, target)

        moves.clear()
        monkeypatch.setattr(pipeline, "_move", move)
        monkeypatch.setattr(pipeline, "_execute", execute)
        try:
            pipeline._run_stage(plan, where, mini_repo, pipeline._State(where.runs / "_state.json"))
        except SystemExit:
            pass
        monkeypatch.setattr(pipeline, "_move", real_move)
        return plan.key

    def outputs():
        return {
            "results": json.loads((where.results / "01_alpha.json").read_text())["answer"],
            "artifact": float((where.artifacts / "01_alpha" / "a.txt").read_text()),
            "table": float((where.tables / "tbl-alpha.csv").read_text().split()[-1]),
            "figure": float((where.figures / "fig-alpha.png").read_text()),
            "notebook": float((where.runs / "01_alpha.ipynb").read_text()),
        }

    keys = [run(1.0)]
    assert outputs() == dict.fromkeys(["results", "artifact", "table", "figure", "notebook"], 1.0)
    assert len(moves) == 6 and not pipeline.finish_pending_commits("smoke", mini_repo)  # 5 files, the artifact folder
    for k in range(7):  # before move k of 7: 5 files, the old artifact folder aside, the new one in
        scale = 2.0 + k
        keys.append(run(scale, stop_after=k))
        assert (where.runs / ".01_alpha.commit").is_dir()  # past the commit point
        assert pipeline.finish_pending_commits("smoke", mini_repo) == ["01_alpha"]
        assert outputs() == dict.fromkeys(["results", "artifact", "table", "figure", "notebook"], scale), k
        assert pipeline._State(where.runs / "_state.json").keys() == {"01_alpha": keys[-1]} != {"01_alpha": keys[-2]}
        assert sorted(p.name for p in where.runs.iterdir()) == ["01_alpha.ipynb", "_state.json"]
    assert sorted(p.name for p in (where.artifacts / "01_alpha").iterdir()) == ["a.txt"]


def test_state_records_of_two_runs_at_once_both_survive(tmp_path):
    "Two `reproduce --only` runs of one profile hold the state file at once: each records its stage, neither erases the other's."
    path = tmp_path / "runs" / "paper" / "_state.json"
    first, second = pipeline._State(path), pipeline._State(path)  # both read the (absent) file before either writes
    first.record("03_radius", "k3", 1.0)
    second.record("05_embedding", "k5", 2.0)
    first.record("04_vae", "k4", 3.0)
    assert pipeline._State(path).keys() == {"03_radius": "k3", "05_embedding": "k5", "04_vae": "k4"}


def test_a_folder_in_results_is_published_replaced_and_removed_whole(mini_repo, monkeypatch):
    "A stage may publish a folder (a trained model) in results/: it moves in whole, a rerun replaces it, and a run that no longer writes it removes it."
    stage = pipeline.parse_stage(mini_repo / "nbs" / "01_alpha.ipynb")
    where = core.paths("smoke", mini_repo)

    def run(files: dict):
        def execute(stage, params, out_nb, root, shown_nb=None):
            core.save_results(stage.name, {"answer": 1.0}, profile="smoke", root=root)
            folder = core.output_folder("results", stage.name, "smoke", root) / "alpha_model"
            for name, text in files.items():
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(text)
            figures = core.output_folder("figures", None, "smoke", root)
            figures.mkdir()
            (figures / "fig-alpha.png").write_text("png")
            out_nb.write_text("{}")

        monkeypatch.setattr(pipeline, "_execute", execute)
        plan = pipeline.plan_stages(core.load_profile("smoke", root=mini_repo), [stage], mini_repo)[0]
        pipeline._run_stage(plan, where, mini_repo, pipeline._State(where.runs / "_state.json"))

    model = where.results / "alpha_model"
    run({"weights.bin": "old", "old_only.txt": "x"})
    assert sorted(p.name for p in model.iterdir()) == ["old_only.txt", "weights.bin"]
    run({"weights.bin": "new"})
    assert sorted(p.name for p in model.iterdir()) == ["weights.bin"] and (model / "weights.bin").read_text() == "new"
    run({})
    assert not model.exists() and (where.results / "01_alpha.json").exists()
    assert sorted(p.name for p in where.runs.iterdir()) == ["01_alpha.ipynb", "_state.json"]
    assert not [p for p in where.results.iterdir() if p.name.startswith(".")]
