"""The twin's memory: one run in memory at a time, and a refusal naming the estimate."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from megdecode.twin.budget import TwinMemoryError, check_run_memory, estimate_run
from megdecode.twin.config import TwinConfig
from megdecode.twin.simulate import read_ground_truth, simulate

# one subject, one session, few images: each run ~14 trials, ~25 s at 600 Hz
SMALL = TwinConfig(
    n_subjects=1,
    n_sessions=1,
    n_runs=1,
    n_categories=4,
    n_test_categories=1,
    n_distractors=0,
    image_size=16,
    n_exp_per_category=3,
    sfreq=600.0,
)


def _traced_peak(cfg: TwinConfig, out: Path) -> int:
    tracemalloc.start()
    try:
        simulate(cfg, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_full_preset_cut_to_one_session_is_refused_before_writing(tmp_path: Path) -> None:
    # the known defect: 1,854 categories over one session's 10 runs make 61-min runs
    cfg = TwinConfig.preset("full").replace(n_sessions=1)
    est = estimate_run(cfg)
    assert 2400 < est.n_trials < 2500  # 2,225 exp + 20 test + 8% catch
    assert est.minutes > 60
    assert est.peak_bytes > 20e9
    out = tmp_path / "bids"
    with pytest.raises(TwinMemoryError, match=r"needs ~\d\d\.\d GB .* over the 8\.0 GB budget"):
        simulate(cfg, out, max_memory_bytes=8e9)
    assert not out.exists()


def test_things_sized_runs_fit_a_few_gb() -> None:
    # the full preset itself: ~205 trials per run, ~6 min at 1200 Hz
    est = check_run_memory(TwinConfig.preset("full"), budget_bytes=4e9)
    assert 190 < est.n_trials < 230
    assert 4 < est.minutes < 7
    assert est.peak_bytes < 4e9


def test_estimate_bounds_the_runs_written(tmp_path: Path) -> None:
    cfg = SMALL.replace(n_runs=2, n_exp_per_category=6)
    simulate(cfg, tmp_path)
    longest = max(r["n_samples"] for r in read_ground_truth(tmp_path)["runs"].values())
    est = estimate_run(cfg)
    assert longest <= est.n_samples < 1.3 * longest


def test_peak_memory_does_not_grow_with_the_number_of_runs(tmp_path: Path) -> None:
    # same trials per run, 1 vs 3 runs: one run in memory at a time
    one = _traced_peak(SMALL, tmp_path / "one")
    three = _traced_peak(SMALL.replace(n_runs=3, n_exp_per_category=9), tmp_path / "three")
    assert three < 1.2 * one
    assert one < estimate_run(SMALL).peak_bytes
