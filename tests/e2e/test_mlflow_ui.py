"""MLflow's UI, in a real browser, opens our experiments on the runs table.

MLflow 3 opens an experiment on its GenAI overview (traces) by default. Our experiments are
tagged as model-training ones, and the link the search prints selects "Model training"; this
test follows that link in headless Chromium against `mlflow ui` on a SQLite store with a
trial run, and reads the page.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from megdecode.serve.app import free_port
from megdecode.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Tracker,
    browse_hint,
    default_tracking_uri,
)

pytestmark = [pytest.mark.slow, pytest.mark.mlflow]

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None
)
if CHROMIUM is None:
    pytest.skip("no chromium binary (Debian: apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    """(tracking URI, experiment id, port) of a running `mlflow ui` with one trial run."""
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = default_tracking_uri(root)
    tracker = Tracker(uri, "ui-check")
    run_id = tracker.trial_run("t_00001", {"model.depth": 2, "loss.lam": 0.5})
    tracker.finish(run_id, {"val/top5_mean": 0.5}, "FINISHED")
    port = free_port()
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        start_new_session=True,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mlflow ui did not start") from None
                time.sleep(0.5)
        yield uri, tracker.experiment_id, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `mlflow ui` runs its server in a process group
        proc.wait(timeout=30)


def test_the_printed_link_opens_the_runs_table(ui: tuple[str, str, int]) -> None:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    uri, experiment_id, port = ui
    assert (
        MlflowClient(uri).get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    )
    hint = browse_hint(uri, experiment_id, port)
    assert hint.startswith(f"mlflow ui --backend-store-uri {uri} --port {port}, then ")
    link = hint.rsplit(" ", 1)[-1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(link)
            page.wait_for_selector(
                "text=trial-t_00001", timeout=90_000
            )  # the runs table, our trial's run
            assert "/runs" in page.url and "overview" not in page.url
            assert "workflowType=machine_learning" in page.url
        finally:
            browser.close()
