"""Test-wide settings: offline hubs, no Ray usage stats, quiet progress bars; the process
ends without interpreter teardown, keeping pytest's exit status (`fixtures.hard_exit`)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MEGDECODE_PROGRESS", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

pytest_plugins = ("fixtures.hard_exit", "fixtures.s3")


# What `megdecode.logs.setup_logging` sets in os.environ (the CLI's callback runs it).
LOGGING_ENV = (
    "MEGDECODE_",
    "RAY_DATA_LOGGING_CONFIG",
    "MLFLOW_LOGGING_LEVEL",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Every test starts with the logging this one started with.

    Why: a test that drives the CLI in-process (typer's CliRunner, the way open_clip's tests
    call their `main`) runs `setup_logging`, which puts a console handler on the runner's
    stderr (closed once the command returns), a log-file handler and quiet-mode variables in
    os.environ; left in place, a later test's INFO records go to a closed stream and its
    subprocesses inherit the quiet settings. pytest's own capture handlers are its business."""
    import logging

    def ours(handler: logging.Handler) -> bool:
        return not type(handler).__module__.startswith("_pytest")

    root = logging.getLogger()
    handlers, level = [h for h in root.handlers if ours(h)], root.level
    env = {k: v for k, v in os.environ.items() if k.startswith(LOGGING_ENV)}
    yield
    for handler in [h for h in root.handlers if ours(h) and h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for key in [k for k in os.environ if k.startswith(LOGGING_ENV)]:
        del os.environ[key]
    os.environ.update(env)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread: test tensors are tiny, OpenMP hand-offs cost
    more than the work (several times more on a busy 2-core machine). Ray workers (Tune
    trials, Serve replicas) are other processes and set their own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """The tiny twin simulated, preprocessed to a store, with handcrafted latents.

    Built once per test session (about 15 s); tests must not modify it.
    """
    from megdecode.demo import TwinRun, build_twin_run

    return build_twin_run(TwinRun(size="tiny", seed=0), tmp_path_factory.mktemp("tiny_run"))
