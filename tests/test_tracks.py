"""Tracks I/O: exact round trips (CSV, Parquet, both layouts), gaps kept as masks, row order irrelevant, and bad
files rejected with the file, row and column named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xai_hsg.tracks import LAYOUT_COLUMNS, TraceArrays, Tracks, TracksError, read_tracks, validate_tracks, write_tracks

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
maybe = st.one_of(finite, st.just(np.nan))


@st.composite
def long_tables(draw, layout=None):
    "A random valid long tracks table: 1-4 traces, 1-12 frames each, NaN gaps, optional ms2 and truth."
    layout = layout or draw(st.sampled_from(["vector", "loci", "distance"]))
    n_traces = draw(st.integers(1, 4))
    ids = draw(
        st.lists(
            st.one_of(st.integers(0, 999).map(str), st.text("abcxyz_", min_size=1, max_size=5)),
            min_size=n_traces,
            max_size=n_traces,
            unique=True,
        )
    )
    dt = draw(st.sampled_from([0.5, 1.0, 20.0, 28.0, 30.0]))
    with_ms2, with_truth = draw(st.booleans()), draw(st.booleans())
    rows = []
    for tid in ids:
        n = draw(st.integers(1, 12))
        frames = sorted(draw(st.sets(st.integers(0, 20), min_size=n, max_size=n)))  # missing rows allowed too
        for f in frames:
            row = {"trace_id": tid, "t_s": f * dt}
            for c in LAYOUT_COLUMNS[layout]:
                row[c] = abs(draw(maybe)) if layout == "distance" else draw(maybe)
            if with_ms2:
                row["ms2"] = draw(maybe)
            if with_truth:
                row["state"] = draw(st.sampled_from([0, 1]))
                row["loadings"] = draw(st.integers(0, 5))
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["dt_s"] = dt
    return df


@SETTINGS
@given(df=long_tables(), suffix=st.sampled_from(["csv", "parquet"]))
def test_round_trip_is_exact(tmp_path, df, suffix):
    path = write_tracks(df, tmp_path / f"t.{suffix}")
    back = read_tracks(path)
    pd.testing.assert_frame_equal(back.data, validate_tracks(df))
    again = read_tracks(write_tracks(back, tmp_path / f"u.{suffix}"))
    pd.testing.assert_frame_equal(again.data, back.data)
    assert path.read_bytes() == (tmp_path / f"u.{suffix}").read_bytes() or suffix == "parquet"


@SETTINGS
@given(df=long_tables(), seed=st.integers(0, 2**31 - 1))
def test_row_order_does_not_matter(df, seed):
    shuffled = df.sample(frac=1.0, random_state=seed)
    pd.testing.assert_frame_equal(validate_tracks(shuffled), validate_tracks(df))


@SETTINGS
@given(df=long_tables())
def test_gaps_are_masked_not_dropped(df):
    tr = Tracks(validate_tracks(df), layout=[k for k, v in LAYOUT_COLUMNS.items() if v[0] in df][0])
    assert len(tr.data) == len(df)  # no row dropped
    arr = tr.to_arrays(dt_s=df.attrs["dt_s"])
    d = tr.distance_nm()
    assert arr.mask.sum() == np.isfinite(d).sum()  # every observed value lands on the grid
    assert arr.present.sum() == len(df)
    assert not np.any(arr.mask & ~arr.present)  # missing rows are masked too
    np.testing.assert_array_equal(np.sort(arr.distance_nm[arr.mask]), np.sort(d[np.isfinite(d)]))


@SETTINGS
@given(df=long_tables(), seed=st.integers(0, 2**31 - 1))
def test_jittered_timestamps_land_on_the_frames_of_the_exact_ones(df, seed):
    """Microscope timestamps jitter: times up to 5% of the interval off the grid give the arrays of the exact times
    (with the interval given; `GRID_TOLERANCE` is 10%, half of it for each of a frame and its trace's first frame)."""
    layout = [k for k, v in LAYOUT_COLUMNS.items() if v[0] in df][0]
    dt = df.attrs["dt_s"]
    jittered = df.assign(t_s=df["t_s"] + np.random.default_rng(seed).uniform(-0.05, 0.05, len(df)) * dt)
    exact = Tracks(validate_tracks(df), layout).to_arrays(dt_s=dt)
    got = Tracks(validate_tracks(jittered), layout).to_arrays(dt_s=dt)
    np.testing.assert_array_equal(got.present, exact.present)
    np.testing.assert_array_equal(got.distance_nm, exact.distance_nm)


def test_frame_interval_of_jittered_long_traces():
    """With no interval given, the one read from jittered times does not drift along long traces (the smallest step
    would: 2% short, frame 100 lands two frames early) and gaps do not move it."""
    from xai_hsg.tracks import frame_interval

    rng = np.random.default_rng(0)
    frames = np.tile(np.arange(200), 30)
    df = pd.DataFrame({"trace_id": np.repeat(np.arange(30), 200), "t_s": frames * 20.0, "distance_nm": 100.0})
    df = df.assign(distance_nm=frames.astype(float), t_s=df["t_s"] + rng.normal(0, 0.2, len(df)))
    df = df[(rng.random(len(df)) > 0.2) | (frames == 0)]  # a fifth of the frames missing (each trace starts at 0)
    tracks = Tracks(validate_tracks(df), "distance")
    assert abs(frame_interval(tracks) - 20.0) < 0.002
    arr = tracks.to_arrays()
    assert arr.n_frames == 200 and arr.present.sum() == len(df)
    assert np.array_equal(arr.distance_nm[arr.present], np.broadcast_to(np.arange(200.0), (30, 200))[arr.present])


@SETTINGS
@given(df=long_tables(layout="loci"), suffix=st.sampled_from(["csv", "parquet"]))
def test_brueckner_layout_round_trip(tmp_path, df, suffix):
    df = df.assign(t_s=np.round(df["t_s"] / 30.0) * 28.0)  # Brückner frames are 28 s apart
    df = df.drop_duplicates(["trace_id", "t_s"])
    path = write_tracks(df, tmp_path / f"b.{suffix}", layout="brueckner")
    raw = pd.read_csv(path) if suffix == "csv" else pd.read_parquet(path)
    assert list(raw.columns[:8]) == [
        "cell_id",
        "time_point",
        "x_blue",
        "y_blue",
        "z_blue",
        "x_green",
        "y_green",
        "z_green",
    ]
    back = read_tracks(path)
    expected = validate_tracks(df).drop(columns=[c for c in ("state", "loadings") if c in df])
    pd.testing.assert_frame_equal(back.data, expected)
    assert back.layout == "loci"


def test_brueckner_file_as_published(tmp_path):
    f = tmp_path / "b.csv"
    f.write_text(
        "cell_id,time_point,x_blue,y_blue,z_blue,x_green,y_green,z_green,x_Rij,y_Rij,z_Rij,red\n"
        "3,0,0.1,0.2,0.3,0.4,0.6,0.3,0.3,0.4,0.0,10\n3,2,0,0,0,,,,,,,\n"
    )
    tr = read_tracks(f, dt_s=28.0)
    assert tr.data["t_s"].tolist() == [0.0, 56.0] and tr.data["trace_id"].tolist() == ["3", "3"]
    assert tr.distance_nm()[0] == pytest.approx(0.5) and np.isnan(tr.distance_nm()[1])
    arr = tr.to_arrays(dt_s=28.0)
    assert arr.mask.tolist() == [[True, False, False]]


# ---------------------------------------------------------------- bad input


def _write(tmp_path, text, name="bad.csv"):
    f = tmp_path / name
    f.write_text(text)
    return f


GOOD = "trace_id,t_s,distance_nm,ms2\n1,0,100,0.5\n1,30,110,0.6\n1,60,120,0.7\n2,0,90,0.1\n"


@pytest.mark.parametrize(
    "text,row,column,words",
    [
        (GOOD.replace("ms2", "ms3"), 0, "ms3", "unknown column"),
        (GOOD.replace("1,30,110", "1,30,abc"), 2, "distance_nm", "non-numeric"),
        (GOOD.replace("1,60,120", "1,60,-4"), 3, "distance_nm", "negative"),
        (GOOD.replace("1,60,", "1,30,"), 3, "t_s", "duplicated frame"),
        (GOOD.replace("2,0,90", "2,,90"), 4, "t_s", "finite"),
        ("trace_id,t_s,dx_nm,dy_nm,dz_nm,distance_nm\n1,0,1,2,3,4\n", 0, None, "exactly one coordinate group"),
        ("trace_id,t_s,dx_nm,dy_nm\n1,0,1,2\n", 0, "dz_nm", "missing"),
        ("trace_id,distance_nm\n1,4\n", 0, "t_s", "missing"),
        ("trace_id,t_s,distance_nm,state\n1,0,4,2\n", 1, "state", "0 or 1"),
        (
            "cell_id,time_point,x_blue,y_blue,z_blue,x_green,y_green,z_green,extra\n1,0,0,0,0,1,1,1,5\n",
            0,
            "extra",
            "unknown column",
        ),
    ],
)
def test_bad_files_name_file_row_and_column(tmp_path, text, row, column, words):
    f = _write(tmp_path, text)
    with pytest.raises(TracksError, match=words) as err:
        read_tracks(f)
    e = err.value
    assert e.file == str(f) and str(f) in str(e)
    assert e.row == row and f"row {row}" in str(e)
    assert e.column == column and (column is None or repr(column) in str(e))


def test_too_short_traces(tmp_path):
    f = _write(tmp_path, GOOD)
    assert read_tracks(f, min_length=1).n_traces == 2
    with pytest.raises(
        TracksError, match=r"row 4, column 'trace_id': trace '2' has 1 frames, fewer than the minimum 3"
    ):
        read_tracks(f, min_length=3)


def test_bad_parquet_names_row(tmp_path):
    df = pd.DataFrame({"trace_id": ["a", "a"], "t_s": [0.0, 30.0], "distance_nm": [5.0, -1.0]})
    f = tmp_path / "bad.parquet"
    df.to_parquet(f)
    with pytest.raises(TracksError, match=r"bad\.parquet: row 2, column 'distance_nm': negative"):
        read_tracks(f)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_tracks(tmp_path / "nope.csv")
    with pytest.raises(TracksError, match="unsupported"):
        read_tracks(_write(tmp_path, "x", "t.xlsx"))
    with pytest.raises(TracksError, match="empty file"):
        read_tracks(_write(tmp_path, ""))


def test_trace_arrays_validate_once_and_subset_alike():
    d = np.array([[100.0, np.nan, 80.0], [10.0, 20.0, 30.0]])
    arr = TraceArrays(distance_nm=d, dt_s=30.0, ms2=np.ones((2, 3)), trace_id=np.array(["a", "b"], dtype=object))
    assert arr.mask.tolist() == [[True, False, True], [True, True, True]]  # a NaN distance is never observed
    assert arr.t_s[1].tolist() == [0.0, 30.0, 60.0] and not arr.has_vectors
    sub = arr.subset([1])
    assert sub.trace_id.tolist() == ["b"] and sub.ms2.shape == (1, 3) and sub.dt_s == 30.0
    assert arr.subset(np.array([False, True])).distance_nm.tolist() == [[10.0, 20.0, 30.0]]
    with pytest.raises(ValueError, match="state"):
        arr.require("state", hint="simulations only")
    with pytest.raises(ValueError, match="state .* must be"):
        arr.replace(state=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dt_s"):
        TraceArrays(distance_nm=d, dt_s=0.0)
    with pytest.raises(ValueError, match="vector_nm"):
        TraceArrays(distance_nm=d, dt_s=30.0, vector_nm=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        TraceArrays(distance_nm=np.zeros(3), dt_s=30.0)
