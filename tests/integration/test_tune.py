"""The research loop on the tiny twin: real local Ray (2 CPUs), real MLflow (SQLite in tmp).

One search is run for the module, the way a user lives it: it is interrupted (SIGUSR1, what
Tune treats like Ctrl+C) as soon as its first trial is FINISHED in MLflow, then resumed
with `resume=True`. Trial 2 fails on purpose on every attempt (the documented
fault-injection drill `SearchSetup.fail_trials`), so the same search also shows retries
and a FAILED trial that does not stop the others. The tests then check the MLflow store,
the registry alias, the resume guarantees and the reproduction of the best trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from fixtures.searches import interrupt_after_first_finished_trial
from fixtures.searches import mlflow_client as _client
from fixtures.searches import mlflow_runs as _runs
from megdecode.predict import load_model
from megdecode.rundata import load_run_data
from megdecode.search.driver import run_search
from megdecode.search.setup import SearchSetup
from megdecode.search.shared import SharedEpochs
from megdecode.search.space import fit_config, logged_keys
from megdecode.search.summary import summary_table
from megdecode.search.trial import seed_stats, trial_name, trial_number
from megdecode.search.tuner import check_searcher, saved_trials
from megdecode.train_config import FitConfig, TrainConfig

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).resolve().parents[2]
SEEDS = 2
SPACE = """
name: tiny
seeds: 2
num_samples: 4
max_concurrent: 2
max_epochs: 2
grace_period: 1
fixed:
  model.hidden_channels: 16
  model.merger_channels: 16
  model.fourier_freqs: 3
  model.projection_hidden: 16
  train.batch_size: 32
  train.patience: 5
params:
  model.depth: {type: int, low: 1, high: 2}
  loss.lam: {type: float, low: 0.5, high: 1.0}
  train.tmin: {type: float, low: -0.5, high: 0.0, step: 0.025}
  train.tmax: {type: float, low: 0.5, high: 1.0, step: 0.025}
"""


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(
    tiny_run: Path, local_ray: None, tmp_path_factory: pytest.TempPathFactory
) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("tune")
    (root / "space.yaml").write_text(SPACE)
    setup = SearchSetup(
        space=str(root / "space.yaml"),
        data=str(tiny_run),
        out=str(root / "out"),
        experiment="tiny-search",
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        max_failures=1,
        fail_trials=(2,),
    )
    stop = threading.Event()
    watcher = interrupt_after_first_finished_trial(setup.tracking_uri, setup.experiment, stop)
    first = run_search(setup, verbose=0)
    stop.set()
    watcher.join()
    after_interrupt = {t.trial_id: str(t.status) for t in saved_trials(setup.path)}
    results_before = {p.parent.name: p.read_text() for p in setup.path.glob("trial_*/result.json")}
    second = run_search(setup, resume=True, verbose=0)
    return SimpleNamespace(
        setup=setup,
        first=first,
        second=second,
        after_interrupt=after_interrupt,
        results_before=results_before,
        uri=setup.tracking_uri,
    )


def test_parent_runs_child_runs_and_metrics(search: SimpleNamespace) -> None:
    report, uri = search.second, search.uri
    parents = _runs(uri, report.experiment, "trial")
    finished = report.trials[report.trials["status"] == "FINISHED"]
    assert len(finished) >= 1
    by_trial = {r.data.tags["megdecode.trial_id"]: r for r in parents}
    client = _client(uri)
    for row in finished.to_dict("records"):
        run = by_trial[row["trial_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.params["model.depth"] == str(row["model.depth"])
        assert run.data.params["train.tmin"] == str(row["train.tmin"])
        assert json.loads(run.data.params["seeds"]) == list(range(SEEDS))
        assert {"megdecode.git_commit", "megdecode.dataset_sha256"} <= set(run.data.tags)
        for key in (
            "val/top5_mean",
            "val/top5_std",
            "test/top5_mean",
            "test/top5_std",
            "test/top5_avg_mean",
            "test/median_rank_mean",
            "test_large/top5_mean",
            "timing/epochs_s",
            "timing/report_s",
        ):
            assert key in run.data.metrics, key
        assert "timing/start_at" not in run.data.metrics  # an instant, not a metric
        curve = client.get_metric_history(run.info.run_id, "val/top5_mean")
        epochs = [m.step for m in curve][: int(row["epochs"])]
        assert epochs == list(range(1, int(row["epochs"]) + 1))  # one point per epoch, none twice
        children = client.search_runs(
            [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        )
        assert sorted(int(c.data.tags["megdecode.seed"]) for c in children) == list(range(SEEDS))
        for child in children:
            assert {"val/top5", "test/top5", "test/top5_avg", "test/median_rank"} <= set(
                child.data.metrics
            )
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "bundle")]
        assert "bundle/bundle.json" in artifacts
    assert {"start", "load", "tune", "check", "report"} <= set(report.timings)
    assert (
        "mlflow" in search.first.timings and "mlflow" not in report.timings
    )  # a resume reuses the saved callback
    summary = _runs(uri, report.experiment, "summary")
    assert len(summary) == 1
    assert "tables/summary.csv" in [
        a.path for a in client.list_artifacts(summary[0].info.run_id, "tables")
    ]
    figures = [a.path for a in client.list_artifacts(summary[0].info.run_id, "figures")]
    assert figures == ["figures/window_curve.png"]  # the space searches the window


def test_summary_table_ranks_configs_against_ridge_and_chance(search: SimpleNamespace) -> None:
    report = search.second
    configs = report.summary["config"].tolist()
    assert configs[0] == report.best["trial"]
    assert configs[-2:] == ["ridge (base window)", "chance"]
    assert all("±" in v for v in report.summary["val/top5"].iloc[:-2])
    text = report.summary_path.read_text()
    assert report.best["trial"] in text and report.tracking_uri in text and "champion" in text


def test_champion_alias_resolves_to_a_loadable_bundle(search: SimpleNamespace) -> None:
    from megdecode.model_registry import resolve_bundle

    report = search.second
    assert report.champion == "models:/megdecode-brain@champion"
    folder, _ = resolve_bundle(report.champion, report.tracking_uri)
    model, bundle = load_model(folder)
    best_model, best_bundle = load_model(report.best["bundle"])
    assert bundle.metrics == best_bundle.metrics
    for key, value in best_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_failing_trial_is_retried_then_failed_and_the_search_goes_on(
    search: SimpleNamespace,
) -> None:
    trials = search.second.trials.set_index("trial")
    failed = [t for t in trials.index if trial_number(t) == 2]
    assert len(failed) == 1 and trials.loc[failed[0], "status"] == "FAILED"
    assert (trials["status"] != "FAILED").sum() == 3  # the other trials ran to their end
    run = next(
        r
        for r in _runs(search.uri, search.second.experiment, "trial")
        if r.data.tags["megdecode.trial_id"] == trials.loc[failed[0], "trial_id"]
    )
    assert run.info.status == "FAILED"
    assert (
        run.data.metrics["num_failures"] == search.setup.max_failures + 1
    )  # first attempt + retries
    error = Path(_client(search.uri).download_artifacts(run.info.run_id, "error"))
    assert "InjectedFault" in next(error.rglob("*.txt")).read_text()


def test_resume_reruns_nothing_finished_duplicates_no_run_and_stays_optuna(
    search: SimpleNamespace,
) -> None:
    first, second, setup = search.first, search.second, search.setup
    assert first.interrupted and not second.interrupted
    assert first.champion is None  # an interrupted search registers nothing
    done = {tid for tid, status in search.after_interrupt.items() if status == "TERMINATED"}
    assert done, "the interrupt came before any trial was recorded as finished"
    for row in second.trials.itertuples():
        if row.trial_id in done:  # finished before the interrupt: not one more result line
            assert (setup.path / row.trial / "result.json").read_text() == search.results_before[
                row.trial
            ]
    assert len(second.trials) == 4 and second.trials["trial_id"].is_unique
    parents = _runs(search.uri, second.experiment, "trial")
    assert sorted(r.data.tags["megdecode.trial_id"] for r in parents) == sorted(
        second.trials["trial_id"]
    )
    assert all(
        r.info.status in ("FINISHED", "FAILED") for r in parents
    )  # no orphan left RUNNING/KILLED
    seeds = _runs(search.uri, second.experiment, "seed")
    assert len(seeds) == SEEDS * int((second.trials["status"] == "FINISHED").sum())
    assert (
        second.searcher == "OptunaSearch/TPESampler" and second.searcher_trials == 4
    )  # history kept, nothing random


def test_check_searcher_refuses_a_trial_the_study_did_not_suggest(search: SimpleNamespace) -> None:
    setup = search.setup
    stray = SimpleNamespace(config={"model.depth": 7, "loss.lam": 0.123}, trial_id="stray")
    name, n = check_searcher(setup.path, saved_trials(setup.path))
    assert (name, n) == ("OptunaSearch/TPESampler", 4)
    with pytest.raises(RuntimeError, match="random search"):
        check_searcher(setup.path, [stray])


def test_best_trial_is_reproduced_by_megdecode_train_outside_tune(
    search: SimpleNamespace, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from megdecode.bundle_io import load_bundle
    from megdecode.cli import app

    best = search.second.best
    client = _client(search.uri)
    child = client.search_runs(
        [client.get_run(best["run_id"]).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{best['run_id']}' AND tags.`megdecode.seed` = '{best['seed']}'",
    )[0]
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--from-run",
            best["run_id"],
            "--tracking-uri",
            search.uri,
            "--seed",
            str(best["seed"]),
            "--no-ridge",
            "--out",
            str(tmp_path / "bundle"),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = load_bundle(tmp_path / "bundle").metrics
    for key in ("val/top5", "val/clip_loss", "val/loss", "best_epoch", "test/top5"):
        assert metrics[key] == pytest.approx(child.data.metrics[key], rel=1e-4, abs=1e-6), key
    params = client.get_run(best["run_id"]).data.params
    assert (
        fit_config(FitConfig(), logged_keys(params), seed=best["seed"]).train.seed == best["seed"]
    )


@pytest.mark.parametrize("reader", ["ray", "arrow"])
def test_shared_epochs_give_exactly_the_run_data_read_from_disk(
    tiny_run: Path, local_ray: None, reader: str
) -> None:
    cfg = FitConfig(
        store=str(tiny_run / "store"),
        latents_dir=str(tiny_run / "latents"),
        train=TrainConfig(tmin=-0.1, tmax=0.475),
    )
    shared = SharedEpochs.load(cfg.store, cfg.latents_dir, ["handcrafted"], reader=reader)
    ours, disk = shared.run_data(cfg), load_run_data(cfg)
    for split in ("train", "val", "test"):
        a, b = getattr(ours, split), getattr(disk, split)
        for name in ("meg", "subject", "target"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
        pd.testing.assert_frame_equal(a.meta, b.meta)
        assert np.shares_memory(a.meg.numpy(), shared.meg[split])  # a view, not a copy
    assert (ours.tmin, ours.tmax, ours.subjects) == (disk.tmin, disk.tmax, disk.subjects)
    with pytest.raises(KeyError, match="clip-vision"):
        shared.run_data(cfg.replace(train=cfg.train.replace(latent="clip-vision")))


def test_seed_stats_trial_names_and_summary_table() -> None:
    stats = seed_stats([{"val/top5": 0.5}, {"val/top5": 0.7}, {"val/top5": 0.9}])
    assert stats["val/top5_mean"] == pytest.approx(0.7) and stats["val/top5_std"] == pytest.approx(
        0.2
    )
    assert seed_stats([{"a": 1.0}])["a_std"] == 0.0
    trial = SimpleNamespace(experiment_tag="12_model.depth=2", trial_id="ab12cd34")
    assert trial_name(trial) == "trial_0012_ab12cd34" and trial_number(trial_name(trial)) == 12
    trials = pd.DataFrame(
        {
            "trial": ["a", "b"],
            "model.depth": [1, 2],
            "val/top5_mean": [0.2, 0.6],
            "val/top5_std": [0.01, 0.02],
            "test/chance_top5_mean": [0.1, 0.1],
            "test_large/chance_top5_mean": [0.01, 0.01],
        }
    )
    table = summary_table(trials, None, top_k=1)
    assert (
        table["config"].tolist() == ["b", "chance"] and table["val/top5"].iloc[0] == "0.600±0.020"
    )
    assert table["test/top5"].iloc[1] == "0.100"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ray_job_submit_runs_jobs_tune_on_a_head_the_test_starts(
    tiny_run: Path, tmp_path: Path
) -> None:
    """`ray start --head` (loopback, free ports) -> `ray job submit ... jobs/tune.py` -> head stopped.

    The head runs with --block in its own process group, and is stopped by signalling that
    group (what `ray stop` would do, but only to the processes this test started).
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    ports = {
        k: _free_port()
        for k in (
            "port",
            "dashboard-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
        )
    }
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live there
    env = os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }  # a one-machine head on loopback only
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={temp}",
            *(f"--{k}={v}" for k, v in ports.items()),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    (tmp_path / "space.yaml").write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        _wait_for_dashboard(url, head)
        job = subprocess.run(
            [
                ray_bin,
                "job",
                "submit",
                "--address",
                url,
                "--working-dir",
                str(REPO),
                "--",
                sys.executable,
                "jobs/tune.py",
                "--space",
                str(tmp_path / "space.yaml"),
                "--data",
                str(tiny_run),
                "--out",
                str(tmp_path / "out"),
                "--experiment",
                "job",
                "--tracking-uri",
                uri,
                "--num-samples",
                "2",
                "--seeds",
                "1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "registered: models:/megdecode-brain@champion" in job.stdout
        assert f"mlflow ui --backend-store-uri {uri}" in job.stdout
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            shutil.rmtree(temp, ignore_errors=True)
    from megdecode.model_registry import resolve_bundle

    assert len(_runs(uri, "job", "trial")) == 2
    load_model(resolve_bundle("models:/megdecode-brain@champion", uri)[0])


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 180.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # up, but wants the auth token
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no Ray dashboard at {url} after {timeout} s")
