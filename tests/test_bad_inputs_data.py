"""Issue 12, the data rows: bad tracks files and degenerate fits give one clear message naming the file, never a number,
and leave the user's files as they were (rows 3, 4, 5, 8, 9, 10 of the issue's table)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from xai_hsg.radius import MIN_BOOT, DegenerateFitError, RadiusMLE, fit_radius
from xai_hsg.simulate import SimParams, write_simulation
from xai_hsg.tracks import (
    PlausibilityError,
    TraceArrays,
    TracksError,
    check_plausible,
    read_tracks,
    validate_tracks,
    write_tracks,
)

# 60 traces × 121 frames of 30 s, r_c = 150 nm, σ_loc = 40 nm: 30 activations, an identifiable fit in ≈ 1 s
PARAMS = SimParams(r_c_nm=150.0, n_frames=121, k_off_per_s=1 / 300)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tracks, _ = write_simulation(tmp_path_factory.mktemp("sim") / "sim", 60, PARAMS, seed=1)
    return tracks, pd.read_csv(tracks)


@pytest.fixture(scope="module")
def good_fit(sim):
    return fit_radius(sim[0], n_boot=0)


def hashes(folder):
    "File name → sha256 of every file under `folder`."
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def variant(tmp_path, df, name="tracks.csv", **csv_kw):
    "A user's file in its own folder (hashed before and after)."
    folder = tmp_path / "user"
    folder.mkdir(exist_ok=True)
    df.to_csv(folder / name, index=False, **csv_kw)
    return folder / name


def fails(tmp_path, path, error, words, **kw):
    "`fit_radius(path)` raises `error` with `words` and the file's name; the user's folder is unchanged, no output."
    before = hashes(path.parent)
    out = tmp_path / "fit.json"
    with pytest.raises(error) as err:
        fit_radius(path, out, **kw)
    msg = str(err.value)
    for w in [words] if isinstance(words, str) else words:
        assert w in msg, msg
    assert str(path) in msg and "lag_frames must" not in msg, msg
    assert hashes(path.parent) == before and not out.exists()
    return msg


def strict_load(text):
    "json.loads that refuses NaN / Infinity, as strict parsers do."
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"bare {c}")))


# ------------------------------------------------------------------- row 3: degenerate fits are not numbers


def test_simulated_file_fits_and_is_plausible(sim, good_fit):
    assert good_fit["identifiable"] and good_fit["reasons"] == [] and good_fit["warnings"] == []
    assert good_fit["n_events"] >= 10 and 50 < good_fit["r_c_nm"] < 400
    assert check_plausible(read_tracks(sim[0])) == []


def test_single_trace_file_is_not_a_result(tmp_path, sim):
    df = sim[1]
    switches = df.groupby("trace_id").state.apply(lambda s: int(((s.shift() == 0) & (s == 1)).sum()))
    one = variant(tmp_path, df[df.trace_id == switches.idxmax()])  # the trace with the most activations
    msg = fails(tmp_path, one, DegenerateFitError, ["not identifiable", "only 1 trace(s)"], n_boot=MIN_BOOT)
    assert "5.0 nm [5.0, 5.0]" not in msg


def test_sigma_loc_too_large_is_reported_as_degenerate(tmp_path, sim):
    path = variant(tmp_path, sim[1])
    fails(tmp_path, path, DegenerateFitError, "lower end of the search range (5 nm)", sigma_loc_nm=120.0, n_boot=0)


def test_degenerate_summary_has_no_numbers(sim):
    a = read_tracks(sim[0]).to_arrays()
    m = RadiusMLE(n_boot=12, seed=0).fit(a.subset(np.arange(3)))
    d = m.summary().to_dict()
    assert not m.identifiable_ and d["identifiable"] is False and d["reasons"]
    assert d["r_c_nm"] is None and d["r_c_interval_nm"] is None and d["k_on_per_s"] is None
    strict_load(json.dumps(d))


def test_distances_in_um(tmp_path, sim):
    um = sim[1].assign(**{c: sim[1][c] / 1000 for c in ("dx_nm", "dy_nm", "dz_nm")})
    path = variant(tmp_path, um)
    assert read_tracks(path).n_traces == 60  # the reader does not judge units
    fails(tmp_path, path, PlausibilityError, ["distances look like µm", "distance_nm must be nm", "--no-sanity"])
    # accepted without the sanity check, the fit is still not a number: the estimate sits at the 5-nm bound
    fails(tmp_path, path, DegenerateFitError, "lower end of the search range", sanity=False, n_boot=0)


# ------------------------------------------------------------------- row 4: plausibility of units and signals


@pytest.mark.parametrize(
    "scale,words",
    [(1 / 60, "times look like minutes or frame numbers"), (1 / 30, "frame numbers"), (1000, "milliseconds")],
)
def test_times_not_in_seconds(tmp_path, sim, scale, words):
    path = variant(tmp_path, sim[1].assign(t_s=sim[1].t_s * scale))
    fails(tmp_path, path, PlausibilityError, [words, "t_s must be seconds"])


def test_no_sanity_accepts_and_lists_the_problem(tmp_path, sim, good_fit):
    path = variant(tmp_path, sim[1].assign(t_s=sim[1].t_s / 60))  # minutes
    before = hashes(path.parent)
    res = fit_radius(path, tmp_path / "fit.json", n_boot=0, sanity=False)
    assert len(res["warnings"]) == 1 and "minutes" in res["warnings"][0] and str(path) in res["warnings"][0]
    assert res["r_c_nm"] == pytest.approx(good_fit["r_c_nm"], rel=1e-9)  # same radius, rates in 1/min
    assert res["k_on_per_s"] == pytest.approx(60 * good_fit["k_on_per_s"], rel=1e-6)
    assert strict_load((tmp_path / "fit.json").read_text())["warnings"] == res["warnings"]
    assert hashes(path.parent) == before


def test_all_zero_ms2(tmp_path, sim):
    path = variant(tmp_path, sim[1].assign(ms2=0.0))
    fails(tmp_path, path, PlausibilityError, "ms2 is 0 in every frame")


def test_check_plausible_on_arrays():
    ok = TraceArrays(distance_nm=np.full((2, 5), 300.0), dt_s=30.0, ms2=np.ones((2, 5)))
    assert check_plausible(ok) == []
    assert "over 50 µm" in check_plausible(ok.replace(distance_nm=np.full((2, 5), 1e6)), sanity=False)[0]
    gaps = ok.replace(distance_nm=np.where(np.arange(5) % 2, np.nan, 300.0) * np.ones((2, 1)))
    gaps = gaps.replace(present=np.isfinite(gaps.distance_nm))
    assert "two consecutive frames" in check_plausible(gaps, sanity=False)[0]
    with pytest.raises(PlausibilityError, match=r"^x\.csv: frame step 0\.5 s"):
        check_plausible(ok.replace(dt_s=0.5), source="x.csv")


# ------------------------------------------------------------------- row 5: the Brückner frame interval


def test_brueckner_layout_with_30s_frames_and_state(tmp_path, sim, good_fit):
    df = sim[1]
    loci = pd.DataFrame(
        {"trace_id": df.trace_id, "t_s": df.t_s, "x_e": df.dx_nm, "y_e": df.dy_nm, "z_e": df.dz_nm}
    ).assign(x_p=0.0, y_p=0.0, z_p=0.0, ms2=df.ms2)
    path = write_tracks(loci, tmp_path / "user" / "b.csv", layout="brueckner", dt_s=30.0)
    raw = pd.read_csv(path).assign(state=df.state.to_numpy())  # a called promoter state beside the Brückner columns
    raw.to_csv(path, index=False)
    tr = read_tracks(path, dt_s=30.0)
    assert tr.dt_s == 30.0 and tr.data.t_s.max() == df.t_s.max() and "state" in tr.data
    assert tr.to_arrays().dt_s == 30.0 and read_tracks(path).to_arrays().dt_s == 28.0  # default: 28 s
    before = hashes(path.parent)
    res = fit_radius(path, dt_s=30.0, n_boot=0)
    assert res["dt_s"] == 30.0 and res["n_events"] == good_fit["n_events"]
    assert res["r_c_nm"] == pytest.approx(good_fit["r_c_nm"], rel=1e-6)
    assert hashes(path.parent) == before


def test_grid_error_speaks_seconds(tmp_path, sim):
    path = variant(tmp_path, sim[1].assign(t_s=sim[1].t_s + np.where(sim[1].index == 5, 7.0, 0.0)))
    msg = fails(tmp_path, path, ValueError, ["not on a regular grid of 30 s", "t_s = 157 s", "--dt"], dt_s=30.0)
    assert "trace '0'" in msg


# ------------------------------------------------------------------- row 8: tiny files, in the user's terms


def test_header_only_file(tmp_path, sim):
    path = variant(tmp_path, sim[1].iloc[:0])
    with pytest.raises(TracksError, match="only a header") as err:
        read_tracks(path)
    assert str(path) in str(err.value)
    fails(tmp_path, path, TracksError, "no data rows")


def test_single_frame_traces(tmp_path, sim):
    path = variant(tmp_path, sim[1][sim[1].t_s == 0])
    fails(tmp_path, path, ValueError, "every trace has a single frame")


def test_three_frame_traces_with_dt_15(tmp_path, sim):
    path = variant(tmp_path, sim[1][sim[1].t_s <= 60])
    fails(tmp_path, path, PlausibilityError, "no trace has two consecutive frames on the 15-s grid", dt_s=15.0)
    fails(tmp_path, path, DegenerateFitError, "OFF→ON", dt_s=15.0, sanity=False)
    fails(tmp_path, path, ValueError, ["MS2 traces of 3 frame(s) are too short", "at least 6 frames"], state_from="ms2")


# ------------------------------------------------------------------- row 9: bootstrap size, strict JSON


def test_too_few_bootstraps_refused(tmp_path, sim):
    with pytest.raises(ValueError, match=f"n_boot = 5: a bootstrap interval needs at least {MIN_BOOT} resamples"):
        fit_radius(sim[0], tmp_path / "fit.json", n_boot=5)
    assert not (tmp_path / "fit.json").exists()


def test_fit_json_is_strict(tmp_path, sim):
    out = tmp_path / "fit.json"
    res = fit_radius(sim[0], out, n_boot=0)
    j = strict_load(out.read_text())
    assert j["r_c_interval_nm"] is None and res["r_c_interval_nm"] is None and j["n_boot"] == 0
    res = fit_radius(sim[0], out, n_boot=MIN_BOOT)
    lo, hi = strict_load(out.read_text())["r_c_interval_nm"]
    assert lo < res["r_c_nm"] < hi or res["notes"]
    # a fit without ON→OFF switches has k_off NaN in memory, null on disk
    m = RadiusMLE(n_boot=0).fit(read_tracks(sim[0]).to_arrays())
    d = dataclasses.replace(m.summary(), k_off_per_s=math.nan).to_dict()
    assert d["k_off_per_s"] is None


# ------------------------------------------------------------------- row 10: the CSV delimiter


@pytest.mark.parametrize("sep,decimal", [(";", ","), (";", "."), ("\t", ".")])
def test_semicolon_and_tab_separated(tmp_path, sim, sep, decimal):
    df = sim[1].iloc[:500]
    path = variant(tmp_path, df, sep=sep, decimal=decimal)
    before = hashes(path.parent)
    pd.testing.assert_frame_equal(read_tracks(path).data, validate_tracks(df))
    assert hashes(path.parent) == before


def test_glued_header_hints_at_the_delimiter():
    glued = pd.DataFrame({"trace_id;t_s;distance_nm": ["1;0;100"]})
    with pytest.raises(TracksError, match="looks semicolon-separated"):
        validate_tracks(glued, "x.csv")
