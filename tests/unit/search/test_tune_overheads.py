"""The pieces that keep Tune's per-trial overhead small, without a Ray cluster.

- the trial's timing keys (`search.trial.timing_metrics`): phases and instants of its final report;
- the MLflow callback's writer thread: writes in event order, a failed write raised at
  the next event or flush, nothing pending once pickled (Tune saves the callback);
- the Ray Data settings of the one whole-store read, restored afterwards.
"""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import pytest

from megdecode.logs import PhaseClock
from megdecode.search.mlflow import MlflowSearchCallback, final_metrics
from megdecode.search.shared import _whole_file_reads
from megdecode.search.trial import (
    TIMING,
    TRIAL_PHASES,
    TrialPlan,
    process_start_time,
    timing_metrics,
)
from megdecode.train_config import FitConfig


def test_process_start_time_is_this_process_birth() -> None:
    started = process_start_time()
    assert started is not None  # the tests run on Linux
    assert 0.0 < time.time() - started < 24 * 3600


def test_trial_timing_splits_the_trial_and_stamps_its_start() -> None:
    start_at, clock = time.time(), PhaseClock(*TRIAL_PHASES)
    time.sleep(0.02)
    clock.lap("setup")
    clock.lap("epochs")
    metrics = timing_metrics(clock, start_at)
    assert metrics[f"{TIMING}setup_s"] >= 0.02 > metrics[f"{TIMING}epochs_s"]
    assert (
        metrics[f"{TIMING}report_s"] == metrics[f"{TIMING}finish_s"] == 0.0
    )  # every phase is reported
    assert metrics[f"{TIMING}process_start_at"] <= metrics[f"{TIMING}start_at"] <= time.time()
    with pytest.raises(KeyError):
        clock.lap("unknown phase")


def test_final_metrics_keep_timing_durations_not_instants() -> None:
    result = {
        "val/top5_mean": 0.5,
        f"{TIMING}epochs_s": 12.0,
        f"{TIMING}start_at": 1.7e9,
        "time_total_s": 3.0,
    }
    assert final_metrics(result) == {"val/top5_mean": 0.5, f"{TIMING}epochs_s": 12.0}


def _callback() -> MlflowSearchCallback:
    return MlflowSearchCallback("sqlite:///unused.db", "exp", TrialPlan(FitConfig(), {}, (0,)), {})


def test_writer_thread_keeps_event_order_and_counts_its_time() -> None:
    callback, seen, gate = _callback(), [], threading.Event()
    callback._submit(gate.wait, 10)  # the driver does not wait for a slow write
    for i in range(5):
        callback._submit(seen.append, i)
    assert seen == []
    gate.set()
    callback.flush()
    assert seen == [0, 1, 2, 3, 4] and callback.seconds > 0


def test_a_failed_write_is_raised_at_flush_and_at_the_next_event() -> None:
    def fail() -> None:
        raise RuntimeError("database is locked")

    callback = _callback()
    callback._submit(fail)
    with pytest.raises(RuntimeError, match="locked"):
        callback.flush()
    callback._submit(fail)
    while not callback._pending[-1].done():
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="locked"):
        callback._submit(print)


def test_pickling_flushes_and_drops_the_thread() -> None:
    callback, seen = _callback(), []
    callback._submit(time.sleep, 0.05)
    callback._submit(seen.append, 1)
    state = pickle.loads(pickle.dumps(callback))
    assert seen == [1]  # flushed before pickling
    assert (
        state._writer is None
        and state._pending == []
        and state.tracking_uri == callback.tracking_uri
    )
    assert callback.get_state() == {"runs": {}, "logged": {}}


def test_whole_file_reads_sets_then_restores_the_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.read_op_min_num_blocks, ctx.enable_progress_bars)
    with _whole_file_reads(3):
        assert ctx.read_op_min_num_blocks == 3 and not ctx.enable_progress_bars
    assert (ctx.read_op_min_num_blocks, ctx.enable_progress_bars) == before


def test_data_paths_are_absolute_so_trials_in_their_own_folders_find_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megdecode.search.driver import data_paths

    (tmp_path / "run" / "store").mkdir(parents=True)
    (tmp_path / "run" / "store" / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    store, latents = data_paths(Path("run"))
    assert store == tmp_path / "run" / "store" and latents == tmp_path / "run" / "latents"
    with pytest.raises(FileNotFoundError, match="no epoch store"):
        data_paths(Path("elsewhere"))
