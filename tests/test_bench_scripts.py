"""The benchmark and check scripts under bench/ parse their options, pick the cells they say and build their inputs (no fits)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marginal_grid_cells_filters_and_resumes(tmp_path, monkeypatch):
    "72 grid cells; --regimes / --seeds / --radii pick a subset; cells already in --jsonl are skipped; rows are appended."
    check = _load("check_marginal_radius")
    cells = check.grid_cells()
    assert len(cells) == 4 * 3 * 3 * 2 and len({(name, seed) for name, _, seed in cells}) == len(cells)
    ran, given, emissions, baselines, bleachings = [], [], [], [], []

    def fake_cell(
        name, changes, n, frames, seed, sigma_loc_given=False, emission="gaussian", ms2_baseline="fit", bleaching="auto"
    ):
        ran.append((name, seed))
        bleachings.append(bleaching)
        given.append(sigma_loc_given)
        emissions.append(emission)
        baselines.append(ms2_baseline)
        r_c, sigma = changes.get("r_c_nm", 150.0), changes.get("sigma_loc_nm", 20.0)
        return dict(
            cell=name, seed=seed, r_c_true=r_c, sigma_loc_true=sigma, truth_state_mle=r_c, r_c=r_c, covered=True
        )

    monkeypatch.setattr(check, "run_cell", fake_cell)
    jsonl = tmp_path / "grid.jsonl"
    done = dict(group="grid", cell="fast, r_c 60, sigma_loc 0", seed=102, r_c_true=60.0, sigma_loc_true=0.0)
    jsonl.write_text(json.dumps(done) + "\n")
    check.main(["--cells", "grid", "--regimes", "fast", "--seeds", "102", "--jsonl", str(jsonl), "--threads", "1"])
    assert len(ran) == 11 and all(name.startswith("fast") and seed == 102 for name, seed in ran)
    assert ("fast, r_c 60, sigma_loc 0", 102) not in ran
    assert len(jsonl.read_text().splitlines()) == 12
    summary = check.summarise([json.loads(line) for line in jsonl.read_text().splitlines()[1:]], "grid")
    assert summary["median_abs_rel_error"] == 0.0 and summary["coverage"] == 1.0
    ran.clear()
    check.main(["--cells", "grid", "--regimes", "default", "--seeds", "101", "--radii", "150", "250", "--threads", "1"])
    assert sorted({name.split(", ")[1] for name, _ in ran}) == ["r_c 150", "r_c 250"] and len(ran) == 6
    assert not any(given)  # σ_loc estimated unless --sigma-loc-given
    ran.clear()
    check.main(["--cells", "grid", "--regimes", "default", "--seeds", "101", "--radii", "250", "--sigma-loc-given"])
    assert len(ran) == 3 and given[-3:] == [True] * 3 and set(emissions) == {"gaussian"}
    ran.clear()
    check.main(["--cells", "grid", "--regimes", "fast", "--seeds", "103", "--radii", "60", "--emission", "counts"])
    assert len(ran) == 3 and emissions[-3:] == ["counts"] * 3 and set(baselines) == {"fit"}
    check.main(["--cells", "grid", "--regimes", "fast", "--seeds", "103", "--radii", "100", "--ms2-baseline", "0"])
    assert baselines[-3:] == [0.0] * 3 and set(bleachings) == {"auto"}
    check.main(["--cells", "grid", "--regimes", "fast", "--seeds", "103", "--radii", "150", "--bleaching", "fit"])
    assert bleachings[-3:] == ["fit"] * 3


def test_marginal_rows_are_read_once_per_cell(tmp_path):
    "Two processes sharing --jsonl can both write the cell they meet at: the reader keeps its first row only."
    check = _load("check_marginal_radius")
    rows = [dict(group="grid", cell="fast, r_c 60, sigma_loc 0", seed=101, r_c=58.0)]
    rows += [dict(group="grid", cell="fast, r_c 60, sigma_loc 0", seed=101, r_c=59.0)]
    rows += [dict(group="grid", cell="fast, r_c 60, sigma_loc 0", seed=102, r_c=61.0)]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert [r["r_c"] for r in check.read_rows(jsonl)] == [58.0, 61.0]
    assert check.read_rows(tmp_path / "absent.jsonl") == [] and check.read_rows(None) == []


def test_marginal_bias_diagnosis_model_consistent_ms2():
    "The regenerated MS2 is 0 while OFF and, while ON, averages loading rate x amplitude x the kernel's area."
    diag = _load("marginal_bias_diagnosis")
    p = dataclasses.replace(diag.cell_params("small-loadings", 150.0), sigma_ms2=0.0)
    assert p.nu_on_per_s * p.amplitude == diag.cell_params("simulator", 150.0).nu_on_per_s * 0.5  # same mean signal
    state = np.zeros((400, 60), dtype=float)
    state[200:, 1:] = 1.0
    y = diag.model_consistent_ms2(state, p, seed=0)
    assert np.all(y[:200] == 0.0)
    steady = p.nu_on_per_s * p.amplitude * (p.t_rise_s / 2 + p.t_plateau_s)  # every interval ON for a kernel's span
    assert abs(y[200:, 20:].mean() / steady - 1) < 0.02
    assert np.all(y[200:, 0] == 0.0)  # frame 0's interval lies before the trace


def test_bench_sae_runs_both_sides_on_a_tiny_shape():
    bench_sae = _load("bench_sae")
    out = bench_sae.main(
        ["--d-in", "16", "--latents", "64", "--k", "4", "--batch", "256", "--steps", "3", "--repeats", "1"]
    )
    assert out["ours_tokens_per_s"] > 0 and out["baseline_l1_tokens_per_s"] > 0
    assert out["ratio_ours_over_baseline"] == out["ours_tokens_per_s"] / out["baseline_l1_tokens_per_s"]
    assert "vs_sae_lens" not in out  # only with --saelens


def test_marginal_score_test_runs_on_a_tiny_cell(tmp_path, monkeypatch):
    """The score test's rows: the frame-level truth it scores at, a finite z per parameter, the truncation and the
    conditioning it was asked for, appended to --jsonl (20 traces × 41 one-minute frames)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    score = _load("marginal_score_test")
    jsonl = tmp_path / "score.jsonl"
    argv = ["--n", "20", "--dt", "60", "--frames", "41", "--max-switches", "2", "-1", "--condition-frames", "10"]
    rows = score.main([*argv, "--jsonl", str(jsonl)])
    assert [r["max_switches"] for r in rows] == [2, None] and [r["n_states"] for r in rows] == [44, 128]
    assert all(
        np.isfinite(list(r["z"].values())).all() and set(r["z"]) == {*score.NAMES, "r_c_nm_efficient"} for r in rows
    )
    assert rows[0]["truth"]["k_off_per_s"] > 0 and rows[0]["condition_frames"] == 10
    assert len(jsonl.read_text().splitlines()) == 2
    again = score.main([*argv[:8], *argv[9:], "--seed", "1", "--jsonl", str(jsonl)])[0]
    combined = score.main(["--combine", "--jsonl", str(jsonl)])  # Stouffer over the seeds of each truncation
    by_m = {c["max_switches"]: c for c in combined}
    assert by_m[2]["seeds"] == [0, 1] and by_m[None]["seeds"] == [0]
    want = (rows[0]["z"]["r_c_nm"] + again["z"]["r_c_nm"]) / np.sqrt(2)
    assert np.isclose(by_m[2]["z"]["r_c_nm"], want) and by_m[None]["z"] == rows[1]["z"]


def test_marginal_contact_chain_runs_on_a_tiny_cell(monkeypatch):
    """The persistent-contact prototype: a row with both fits' radii and a finite log-likelihood, ρ held where asked
    (60 traces × 41 one-minute frames)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    chain = _load("marginal_contact_chain")
    row = chain.main(["--n", "60", "--frames", "41", "--rho", "0.9"])
    assert row["rho_fitted"] is False and np.isclose(row["rho"], 0.9)
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("marginal", "contact_r_c", "contact_k_on"))
    assert np.isfinite(row["contact_loglik"]) and row["contact_loglik"] < 0


def test_marginal_smoothed_ends_runs_on_a_tiny_cell(monkeypatch):
    """Both anchors' efficient z on the same traces, the anchor each actually used (smoothed with noise, observed
    without), and both fits where asked (30 traces × 31 one-minute frames)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    smooth = _load("marginal_smoothed_ends")
    row = smooth.main(["--n", "30", "--frames", "31", "--seed", "3", "--fit"])
    assert (row["observed_anchor_used"], row["smoothed_anchor_used"]) == ("observed", "smoothed")
    assert all(np.isfinite(row[f"{a}_z_efficient"]) and row[f"{a}_r_c_nm"] > 0 for a in smooth.ANCHORS)
    exact = smooth.main(["--n", "30", "--frames", "31", "--seed", "3", "--sigma-loc", "0"])
    assert (
        exact["smoothed_anchor_used"] == "observed" and exact["smoothed_z_efficient"] == exact["observed_z_efficient"]
    )


def test_frame_interval_cells_are_picked_and_fast_switching(tmp_path, monkeypatch):
    "--cells frames runs the four frame intervals (10, 15, 20, 45 s) with ON periods of 5 min, seed 61 by default."
    check = _load("check_marginal_radius")
    ran = []

    def fake_cell(name, changes, n, frames, seed, **options):
        ran.append((name, changes, seed))
        return dict(
            cell=name, seed=seed, r_c_true=150.0, sigma_loc_true=20.0, truth_state_mle=150.0, r_c=150.0, covered=True
        )

    monkeypatch.setattr(check, "run_cell", fake_cell)
    check.main(["--cells", "frames", "--threads", "1", "--jsonl", str(tmp_path / "frames.jsonl")])
    assert [changes["dt_s"] for _, changes, _ in ran] == [10.0, 15.0, 20.0, 45.0]
    assert all(changes["k_off_per_s"] == 1 / 300 and seed == 61 for _, changes, seed in ran)


def test_probe_design_windows_stay_within_their_sequence():
    "Row i of the windowed features = rows i-1, i, i+1 concatenated, zeros across a sequence boundary."
    design = _load("probe_design")
    features = np.arange(10, dtype=np.float32).reshape(5, 2)
    groups = np.array(["a", "a", "a", "b", "b"])
    out = design.windowed(features, groups, window=1)
    assert out.shape == (5, 6)
    np.testing.assert_array_equal(out[1], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(out[2], [2, 3, 4, 5, 0, 0])  # row 3 is in sequence b
    np.testing.assert_array_equal(out[3], [0, 0, 6, 7, 8, 9])
    np.testing.assert_array_equal(out[0], [0, 0, 0, 1, 2, 3])


def test_fit_radius_input_variants_read_back_to_the_same_traces(tmp_path):
    """Each file variant of `check_fit_radius_inputs` reads back (as `fit-radius` reads it) to the simulation's traces,
    less what the variant removes; times in minutes are refused before any fit."""
    from xai_hsg.simulate import SimParams, simulate
    from xai_hsg.tracks import read_tracks

    check = _load("check_fit_radius_inputs")
    sim = simulate(6, SimParams(**{**check.PARAMS, "n_frames": 40}), seed=1)
    tables = check.variants(sim.to_frame(truth=False), seed=1)
    ref = sim.to_arrays()
    for name, (table, extra, layout) in tables.items():
        if name == "times in minutes":
            continue
        path = check.write_variant(table, tmp_path / "t.csv", layout)
        arr = read_tracks(path, dt_s=float(extra[1]) if extra else None).to_arrays()
        assert arr.n_traces == 6 and arr.n_frames == 40 and abs(arr.dt_s - 30.0) < 0.01, name
        seen = arr.mask
        assert 0.6 < seen.mean() <= 1.0, name
        np.testing.assert_allclose(arr.distance_nm[seen], ref.distance_nm[seen], rtol=1e-5, err_msg=name)
        np.testing.assert_array_equal(np.isfinite(arr.ms2) & arr.present, np.isfinite(arr.ms2), err_msg=name)
    row = check.run_variant("times in minutes", *tables["times in minutes"])
    assert row["exit_status"] == 1 and "minutes" in row["error"] and row["seconds"] < 30


def test_marginal_emission_frames_names_its_cells(monkeypatch):
    "The script fits a cell of the acceptance grid by name and seed, and refuses one that is not there."
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # it imports its sibling check_marginal_radius
    frames = _load("marginal_emission_frames")
    with np.testing.assert_raises_regex(SystemExit, "no grid cell"):
        frames.run("default, r_c 999, sigma_loc 0", 101)


def test_lm_recipe_passes_its_mask_rate(monkeypatch):
    "--mask-prob reaches pretrain_mlm (NT's 0.15 unless given)."
    recipe = _load("lm_recipe")
    seen = []

    class Stop(Exception):
        pass

    def fake_pretrain(*args, **kwargs):
        seen.append(kwargs["mask_prob"])
        raise Stop

    monkeypatch.setattr(recipe.embed, "pretrain_mlm", fake_pretrain)
    for argv in [], ["--mask-prob", "0.3"]:
        try:
            recipe.main(["--name", "t", "--n-sequences", "20", "--n-heldout", "4", *argv], extra={"k": 1})
        except Stop:
            pass
    assert seen == [0.15, 0.3]


def test_base_loss_adds_the_cross_entropy_of_each_masked_tokens_bases():
    "The per-base head's loss is the mean CE over the six bases of each masked 6-mer; its gradient reaches the head."
    import torch
    from transformers import EsmForMaskedLM

    from xai_hsg import embed

    base_loss = _load("lm_recipe_base_loss")
    tok = embed.NTTokenizer()
    bases = base_loss.token_bases(tok)
    k = tok.vocab.index("ATCGGA")
    assert bases[k].tolist() == [0, 1, 2, 3, 3, 0] and (bases[tok.pad_id] == -100).all()
    torch.manual_seed(0)
    model = base_loss.start_with_base_head(EsmForMaskedLM(embed.nt_config("tiny", max_tokens=16)), tok)
    ids = torch.as_tensor([[tok.cls_id, k, k + 1, k + 2, k + 3]])
    labels = torch.full_like(ids, -100)
    labels[0, 2] = k + 1
    inputs = ids.clone()
    inputs[0, 2] = tok.mask_id
    batch = (inputs, torch.ones_like(ids), labels)
    weight = base_loss.BASE_LOSS_WEIGHT
    total, _ = base_loss.mlm_and_base_loss(model, batch, "cpu")
    mlm, _ = embed._mlm_loss(model, batch, "cpu")
    h = model.esm(input_ids=inputs, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 2]
    want = torch.nn.functional.cross_entropy(model.base_head(h).view(6, 4), bases[k + 1])
    assert torch.allclose(total, mlm + weight * want, atol=1e-5)
    total.backward()
    assert model.base_head.weight.grad.abs().sum() > 0


def test_probe_label_overlap_runs_on_a_tiny_model(tmp_path, monkeypatch):
    "The script probes a saved model at each threshold and writes one verdict per threshold."
    from transformers import EsmForMaskedLM

    from xai_hsg import embed

    overlap = _load("probe_label_overlap")
    folder = tmp_path / "lm"
    embed.save_genomic_lm(EsmForMaskedLM(embed.nt_config("tiny", max_tokens=128)), embed.NTTokenizer(), folder)
    out = overlap.main(
        ["--model", str(folder), "--n-sequences", "60", "--n-heldout", "12", "--min-bases", "1", "6", "--threads", "1"]
    )
    assert set(out["thresholds"]) == {"1", "6"} and out["n_heldout"] == 12
    assert all(v["n_learned"] <= v["n_concepts"] for v in out["thresholds"].values())
