"""Test-wide settings: offline hubs, no Ray usage stats, quiet progress bars; the session
ends without interpreter teardown (`pytest_sessionstart`)."""

from __future__ import annotations

import atexit
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MEGDECODE_PROGRESS", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    """Once pytest has reported and every atexit handler has run, leave with the session's
    exit status and skip the interpreter's teardown.

    Why: the suite starts and stops Ray drivers, Serve, Tune and torch in this process,
    and their native threads outlive `ray.shutdown()` (gRPC's event engine, timers and
    resolver, the GCS client's io thread: ~10 threads after one init/shutdown, 28 at the
    end of the slow suite, measured from /proc). Tearing the interpreter down (module
    cleanup, C++ static destructors) while they run is racy: a CI run of the slow suite
    ended in a segmentation fault after printing "9 passed". Ray exits its own worker
    processes this way for the same reason. Registered here, after the plugins and before
    any test imports Ray or torch, so it runs after their atexit handlers (Ray's own
    shutdown, MLflow's flush), which atexit runs last-registered first.
    """

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(session.exitstatus))

    atexit.register(leave)


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
