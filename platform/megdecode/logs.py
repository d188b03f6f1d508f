"""Logging and progress set once at the entry point (CLI, job, serve app).

Quiet by default: the console shows our stage lines (INFO of ``megdecode.*``), warnings and
errors, and one progress bar per long stage on an interactive terminal. What Ray, Ray Data,
Ray Tune, Serve, MLflow and Optuna say at INFO goes to a log file whose path is printed
once (next to Ray's own session logs, where the workers' output stays). ``-v`` (or
``MEGDECODE_VERBOSE=1``) restores the full stream. Errors are never filtered: exceptions
raised in Ray tasks and actors reach the driver with their tracebacks either way.

The choice travels in the environment (``MEGDECODE_VERBOSE``) because the code that starts
Ray, Tune or Serve runs far from the entry point that parsed ``-v``, and Ray's workers and
our subprocesses inherit it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

VERBOSE_ENV = "MEGDECODE_VERBOSE"
LOG_FILE_ENV = "MEGDECODE_LOG_FILE"
# The library settings a quiet setup_logging put in os.environ (so -v can take them back).
QUIET_SET_ENV = "MEGDECODE_QUIET_SET"
# Loggers of libraries that install their own console handlers (propagate=False) at import.
LIBRARIES = ("ray", "mlflow", "optuna", "alembic", "filelock", "urllib3", "fsspec")
# Library warnings that say nothing the user can act on (the console drops them; the file keeps them).
NOISE = (
    "Progress bars disabled",  # Ray Data, when we turn its bars off in Tune trials
    "Token authentication is enabled",  # Ray, once per cluster: printed in the log file
    "Connecting to existing Serve app",  # Serve, when an app is redeployed in one session
)


def verbose() -> bool:
    """Whether the entry point asked for the full stream (``-v``)."""
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def setup_logging(
    level: str | int = "INFO",
    verbose_output: bool | None = None,
    log_file: str | Path | None = None,
) -> Path | None:
    """Configure the root logger; called by entry points only, never at import.

    ``verbose_output`` None keeps what the environment says. In quiet mode the libraries'
    INFO goes to ``log_file`` (default: ``$MEGDECODE_LOG_FILE`` or a file in the temp
    folder), returned so the caller can print its path once.
    """
    if verbose_output is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_output else "0"
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("mne", "mne_bids", "matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if verbose():
        _undo_quiet_environment()
        return None
    path = Path(log_file or os.environ.get(LOG_FILE_ENV) or _default_log_file())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ[LOG_FILE_ENV] = str(path)
    # Read by the libraries themselves, here and in every process they start.
    _set_quiet(
        MLFLOW_LOGGING_LEVEL="WARNING",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        RAY_DATA_LOGGING_CONFIG=str(_ray_data_config(path.parent)),
    )
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("megdecode-file")
    root = logging.getLogger()
    # basicConfig's console handler: our INFO, everyone's warnings
    for console in filter(_is_console, root.handlers):
        console.addFilter(_OURS)
    root.addHandler(handler)
    quiet_console()
    return path


def _set_quiet(**values: str) -> None:
    """Set the libraries' quiet settings where the user has not, and remember which we set
    (in `QUIET_SET_ENV`), so that a verbose entry point started from a quiet process (a
    subprocess, a test run) can take back ours and keep the user's."""
    ours = set(filter(None, os.environ.get(QUIET_SET_ENV, "").split(",")))
    for name, value in values.items():
        if name in ours or name not in os.environ:
            os.environ[name] = value
            ours.add(name)
    os.environ[QUIET_SET_ENV] = ",".join(sorted(ours))


def _undo_quiet_environment() -> None:
    """Remove the quiet settings an earlier quiet `setup_logging` put in this environment."""
    for name in filter(None, os.environ.pop(QUIET_SET_ENV, "").split(",")):
        os.environ.pop(name, None)


def _default_log_file() -> Path:
    import tempfile
    import time

    return (
        Path(tempfile.gettempdir())
        / "megdecode"
        / f"megdecode-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    )


def _ray_data_config(folder: Path) -> Path:
    """Ray Data's own logging config (read at ``import ray.data``, in every process): its
    session file as by default, its console handler at warnings minus `NOISE`. Without it,
    Ray Data logs every operator's progress to the terminal every few seconds."""
    import json

    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
        },
        "filters": {
            "console_filter": {"()": "ray.data._internal.logging.HiddenRecordFilter"},
            "quiet": {"()": "megdecode.logs._Console"},
        },
        "handlers": {
            "file": {
                "class": "ray.data._internal.logging.SessionFileHandler",
                "formatter": "ray",
                "filename": "ray-data.log",
            },
            "console": {
                "class": "ray._private.log.PlainRayHandler",
                "formatter": "ray",
                "level": "WARNING",
                "filters": ["console_filter", "quiet"],
            },
        },
        "loggers": {
            "ray.data": {"level": "DEBUG", "handlers": ["file", "console"], "propagate": False}
        },
    }
    path = folder / "ray-data-logging.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def log_file() -> Path | None:
    """The file the libraries' output goes to in quiet mode (None when verbose or unset)."""
    path = os.environ.get(LOG_FILE_ENV)
    return Path(path) if path and not verbose() else None


class _Console(logging.Filter):
    """On a library's console handler: WARNING and above, minus `NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(message.startswith(n) or n in message[:120] for n in NOISE)


_CONSOLE = _Console()


class _Ours(_Console):
    """On the root console handler: our own INFO (stage lines), everyone's warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in ("megdecode", "__main__") or super().filter(record)


_OURS = _Ours()


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (stderr or stdout). Others are not ours to
    filter: files, and capture handlers such as pytest's, which some libraries' loggers hold."""
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return isinstance(handler, logging.StreamHandler) and any(handler.stream is s for s in streams)


def quiet_console() -> None:
    """Turn the libraries' own console handlers down to warnings; send their INFO to the file.

    Idempotent, and cheap: call it again after importing a library that configures its
    loggers at import (``ray.serve``, ``ray.data``, ``optuna``). No-op when verbose.
    """
    if verbose():
        return
    root = logging.getLogger()
    file_handler = next((h for h in root.handlers if h.get_name() == "megdecode-file"), None)
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in LIBRARIES]
    for name in sorted(set(names) | set(LIBRARIES)):
        lib = logging.getLogger(name)
        for handler in lib.handlers:
            if _is_console(handler) and _CONSOLE not in handler.filters:
                handler.addFilter(_CONSOLE)
        for stale in [
            h for h in lib.handlers if h.get_name() == "megdecode-file" and h is not file_handler
        ]:
            lib.removeHandler(stale)  # from an earlier setup_logging in this process
        if (
            lib.handlers
            and not lib.propagate
            and file_handler is not None
            and file_handler not in lib.handlers
        ):
            lib.addHandler(file_handler)
    for name in ("optuna",):
        logging.getLogger(name).setLevel(logging.WARNING)
        if "optuna" in sys.modules:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)


def show_progress() -> bool:
    """Progress bars on an interactive stderr (or when MEGDECODE_PROGRESS=1)."""
    force = os.environ.get("MEGDECODE_PROGRESS")
    return force == "1" or (force is None and sys.stderr.isatty())


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on an interactive stderr (or when MEGDECODE_PROGRESS=1), else plain.

    Bars are off in CI logs by default because they turn into thousands of lines.
    """
    if not show_progress():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


class StageProgress:
    """One progress display for a long stage: a tqdm bar on an interactive terminal, else
    one log line per step (a finished trial, a preprocessed run), so CI logs stay short
    and still show that the stage moves."""

    def __init__(
        self, desc: str, total: int | None, log: logging.Logger, every_s: float = 0.0
    ) -> None:
        """every_s: off a terminal, at most one line per that many seconds (and the last step)."""
        self.desc, self.total, self.log, self.done, self.every_s = desc, total, log, 0, every_s
        self._last = -float("inf")
        self._bar = None
        if show_progress():
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, total=total, leave=False, dynamic_ncols=True)

    def step(self, note: str = "", n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=True)
        elif self.done == self.total or time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            self.log.info("%s %d%s%s", self.desc, self.done, of, f": {note}" if note else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class PhaseClock:
    """Wall seconds per named phase of a stage, for its report and the benchmarks.

    Each `lap` charges the time since the previous lap (or the start) to a phase, so the
    phases of a stage add up to its wall time with one `perf_counter` call per boundary.
    A clock made with phase names reports each of them (0.0 until lapped) and refuses
    any other, so a misspelt phase fails instead of hiding its seconds under a new key.
    """

    def __init__(self, *phases: str, start: float | None = None) -> None:
        """start: a `time.perf_counter()` value taken earlier (default: now)."""
        self._start = self._last = time.perf_counter() if start is None else start
        self._closed = bool(phases)
        self.seconds: dict[str, float] = dict.fromkeys(phases, 0.0)

    def _check(self, phase: str) -> None:
        if self._closed and phase not in self.seconds:
            raise KeyError(f"unknown phase {phase!r}; this clock times {list(self.seconds)}")

    def lap(self, phase: str) -> float:
        """Charge the seconds since the last lap to `phase`; return them."""
        self._check(phase)
        now = time.perf_counter()
        seconds = now - self._last
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self._last = now
        return seconds

    def add(self, phase: str, seconds: float) -> None:
        """Charge seconds measured elsewhere (a writer thread's share of a phase) to `phase`,
        leaving the laps alone: such a phase overlaps the others and is not in `total`."""
        self._check(phase)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @property
    def total(self) -> float:
        """Seconds from the start to the last lap: the sum of the lapped phases."""
        return self._last - self._start

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)
