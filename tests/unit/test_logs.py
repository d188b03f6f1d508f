"""Quiet console by default: our stage lines and everyone's warnings on the terminal, the
libraries' INFO in the log file; ``-v`` streams everything."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from megdecode import logs


@pytest.fixture()
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in (
        logs.VERBOSE_ENV,
        logs.LOG_FILE_ENV,
        logs.QUIET_SET_ENV,
        "RAY_DATA_LOGGING_CONFIG",
        "MLFLOW_LOGGING_LEVEL",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
        "MEGDECODE_PROGRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    yield
    logging.basicConfig(level=logging.WARNING, force=True)
    for name in ("optuna.unit", "megdecode.unit", "somelib.unit"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True


def _library_logger(name: str) -> logging.Logger:
    """A logger as Ray/MLflow/Optuna make theirs: its own console handler on the process's
    stderr (pytest's capture here: read it with capsys), no propagation."""
    lib = logging.getLogger(name)
    lib.handlers.clear()
    lib.addHandler(logging.StreamHandler(sys.stderr))
    lib.setLevel(logging.INFO)
    lib.propagate = False
    return lib


def test_quiet_mode_moves_library_info_to_the_file(
    clean_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = _library_logger("optuna.unit")
    path = logs.setup_logging("INFO", verbose_output=False, log_file=tmp_path / "run.log")
    assert path == tmp_path / "run.log" and logs.log_file() == path and not logs.verbose()
    lib.info("Total Progress: 15/32")
    lib.warning("Progress bars disabled. To enable, set ...")  # noise: the file only
    lib.warning("object store is full")
    lib.error("task failed: Traceback ...")
    shown = capsys.readouterr().err
    assert "Total Progress" not in shown and "Progress bars disabled" not in shown
    assert "object store is full" in shown and "task failed" in shown
    for handler in logging.getLogger().handlers:
        handler.flush()
    kept = path.read_text()
    assert (
        "Total Progress: 15/32" in kept
        and "Progress bars disabled" in kept
        and "task failed" in kept
    )


def test_root_console_shows_our_info_and_only_warnings_of_others(
    clean_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup_logging("INFO", verbose_output=False, log_file=tmp_path / "run.log")
    logging.getLogger("megdecode.unit").info("== preprocess: 30 s ==")
    logging.getLogger("somelib.unit").info("Context impl SQLiteImpl.")
    logging.getLogger("somelib.unit").warning("a migration is missing")
    err = capsys.readouterr().err
    assert "== preprocess: 30 s ==" in err and "a migration is missing" in err
    assert "SQLiteImpl" not in err
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "SQLiteImpl" in (tmp_path / "run.log").read_text()


def test_verbose_streams_everything(
    clean_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = _library_logger("optuna.unit")
    assert logs.setup_logging("DEBUG", verbose_output=True, log_file=tmp_path / "run.log") is None
    logs.quiet_console()  # a no-op when verbose
    lib.info("Total Progress: 15/32")
    assert "Total Progress" in capsys.readouterr().err
    assert logs.verbose() and logs.log_file() is None and not (tmp_path / "run.log").exists()


def test_repeated_setup_keeps_one_file_handler_per_library(
    clean_logging: None, tmp_path: Path
) -> None:
    lib = _library_logger("optuna.unit")
    for i in range(3):
        logs.setup_logging("INFO", verbose_output=False, log_file=tmp_path / f"run{i}.log")
    files = [h for h in lib.handlers if h.get_name() == "megdecode-file"]
    assert len(files) == 1 and Path(files[0].baseFilename) == tmp_path / "run2.log"


def test_ray_data_gets_a_warning_level_console(clean_logging: None, tmp_path: Path) -> None:
    logs.setup_logging("INFO", verbose_output=False, log_file=tmp_path / "run.log")
    config = json.loads(Path(os.environ["RAY_DATA_LOGGING_CONFIG"]).read_text())
    assert config["handlers"]["console"]["level"] == "WARNING"
    assert config["handlers"]["file"]["filename"] == "ray-data.log"  # Ray Data's session file stays
    assert config["filters"]["quiet"]["()"] == "megdecode.logs._Console"


def test_verbose_after_quiet_takes_back_our_settings_and_keeps_the_users(
    clean_logging: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A quiet process (a test run, `megdecode demo`) whose environment a `-v` child inherits:
    # Ray Data must stream its progress again there, and a level the user set stays.
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "ERROR")
    logs.setup_logging("INFO", verbose_output=False, log_file=tmp_path / "run.log")
    assert "RAY_DATA_LOGGING_CONFIG" in os.environ and os.environ["MLFLOW_LOGGING_LEVEL"] == "ERROR"
    logs.setup_logging(
        "INFO", verbose_output=False, log_file=tmp_path / "run.log"
    )  # twice: still ours
    assert "RAY_DATA_LOGGING_CONFIG" in os.environ["MEGDECODE_QUIET_SET"]
    logs.setup_logging("DEBUG", verbose_output=True)
    assert "RAY_DATA_LOGGING_CONFIG" not in os.environ
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "ERROR" and logs.QUIET_SET_ENV not in os.environ


def test_stage_progress_logs_one_line_per_step_off_a_terminal(
    clean_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEGDECODE_PROGRESS", "0")
    lib = _library_logger("megdecode.unit")
    bar = logs.StageProgress("trials", 3, lib)
    bar.step("trial_0001 finished")
    bar.step()
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["trials 1/3: trial_0001 finished", "trials 2/3"]
    throttled = logs.StageProgress("runs", 3, lib, every_s=3600.0)
    for _ in range(3):
        throttled.step()
    assert capsys.readouterr().err.splitlines() == [
        "runs 1/3",
        "runs 3/3",
    ]  # the first, then the last


def test_phase_clock_charges_each_lap_to_its_phase() -> None:
    clock = logs.PhaseClock()
    time.sleep(0.01)
    first = clock.lap("load")
    clock.lap("tune")
    clock.lap("load")  # a phase met twice adds up
    clock.add("mlflow", 5.0)  # measured elsewhere: not a lap, not in the total
    seconds = clock.as_dict()
    assert list(seconds) == ["load", "tune", "mlflow"] and first >= 0.01
    assert seconds["load"] >= first and seconds["mlflow"] == 5.0
    assert clock.total == pytest.approx(seconds["load"] + seconds["tune"])
    named = logs.PhaseClock("setup", "epochs", start=time.perf_counter() - 1.0)
    assert named.as_dict() == {"setup": 0.0, "epochs": 0.0}  # every named phase is reported
    assert named.lap("setup") >= 1.0
    with pytest.raises(KeyError, match="unknown phase"):
        named.lap("setpu")


def test_quiet_mode_filters_terminals_only(clean_logging: None, tmp_path: Path) -> None:
    # A capture handler (pytest's caplog, a StringIO) on a library's logger keeps every record:
    # quiet mode is about what reaches the terminal.
    lib = _library_logger("optuna.unit")
    captured = io.StringIO()
    lib.addHandler(logging.StreamHandler(captured))
    logs.setup_logging("INFO", verbose_output=False, log_file=tmp_path / "run.log")
    logs.quiet_console()
    lib.info("Total Progress: 15/32")
    assert "Total Progress" in captured.getvalue()
