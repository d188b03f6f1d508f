"""An interrupted search whose Tune state lives on object storage is resumed from there.

`megdecode tune --storage s3://...` (Tune's experiment state, trial results and checkpoints
on a real S3 server, moto's on 127.0.0.1; MLflow artifacts there too, the SQLite db local)
is driven with argv lists, interrupted (SIGUSR1, as Ctrl+C) once its first trial is
FINISHED in MLflow, then resumed with ``--resume`` from the same storage. The resume keeps
what the local one keeps (tests/integration/test_tune.py): finished trials are not rerun,
no MLflow run is duplicated, the Optuna study goes on, and the completed search registers
a champion whose bundle loads. A resume where the storage holds no such search says so,
naming the URI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from fixtures.s3 import S3Server
from fixtures.searches import interrupt_after_first_finished_trial, mlflow_runs
from megdecode import files
from megdecode.cli import app
from megdecode.search.tuner import saved_trials

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]

EXPERIMENT = "s3-resume"
TRIALS = 3
# test_tune.py's tiny models, one seed, one trial at a time: the interrupt after the first
# finished trial leaves one running and one never started.
SPACE = f"""
name: tiny-s3
seeds: 1
num_samples: {TRIALS}
max_concurrent: 1
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
  model.depth: {{type: int, low: 1, high: 2}}
  loss.lam: {{type: float, low: 0.5, high: 1.0}}
"""


def _tune(argv: list[str]) -> Result:
    return CliRunner().invoke(app, ["tune", *argv])


def _results_on_storage(tune_path: str) -> dict[str, str]:
    """trial folder name -> its result.json, read from the object store."""
    fs = files.fsspec_fs(tune_path)
    found = [k for k in fs.find(tune_path.removeprefix("s3://")) if k.endswith("/result.json")]
    return {k.split("/")[-2]: fs.cat(k).decode() for k in found}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for both runs (the CLI leaves a Ray it did not start running); the
    artifact root `megdecode tune --artifact-root` put in os.environ is removed at the end."""
    import os

    import ray

    from megdecode.raycluster import init_ray
    from megdecode.tracking import ARTIFACT_ENV

    init_ray(num_cpus=2)
    yield
    ray.shutdown()
    os.environ.pop(ARTIFACT_ENV, None)


@pytest.fixture(scope="module")
def s3_search(
    s3_server: S3Server,
    tiny_run: Path,
    local_ray: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> SimpleNamespace:
    """The search, interrupted, then resumed by a driver whose --out is a new, empty folder
    (as a new `ray job submit`, unpacked into a new working dir, would be)."""
    root = tmp_path_factory.mktemp("tune-s3")
    (root / "space.yaml").write_text(SPACE)
    storage, uri = s3_server.uri("resume/tune"), f"sqlite:///{root / 'mlflow.db'}"
    argv = [
        "--data", str(tiny_run), "--storage", storage, "--tracking-uri", uri,
        "--artifact-root", s3_server.uri("resume/mlartifacts"), "--experiment", EXPERIMENT,
    ]  # fmt: skip
    tune_path = files.join(storage, EXPERIMENT)
    started = time.perf_counter()
    stop = threading.Event()
    watcher = interrupt_after_first_finished_trial(uri, EXPERIMENT, stop)
    first = _tune(
        [*argv, "--out", str(root / "first"), "--space", str(root / "space.yaml"),
         "--scheduler", "fifo"]
    )  # fmt: skip
    stop.set()
    watcher.join()
    assert first.exit_code == 130, first.output + repr(first.exception)  # interrupted
    after_interrupt = {t.trial_id: str(t.status) for t in saved_trials(tune_path)}
    results_before = _results_on_storage(tune_path)
    second = _tune([*argv, "--out", str(root / "second"), "--resume"])
    assert second.exit_code == 0, second.output + repr(second.exception)
    print(f"\nS3 search interrupted and resumed in {time.perf_counter() - started:.1f} s")
    return SimpleNamespace(
        first=first,
        second=second,
        trials=pd.read_csv(root / "second" / EXPERIMENT / "trials.csv"),
        after_interrupt=after_interrupt,
        results_before=results_before,
        results_after=_results_on_storage(tune_path),
        tune_path=tune_path,
        uri=uri,
        argv=argv,
        root=root,
    )


def test_resume_from_s3_reruns_nothing_finished_and_duplicates_no_run(
    s3_search: SimpleNamespace,
) -> None:
    assert "INTERRUPTED" in s3_search.first.output and "registered:" not in s3_search.first.output
    done = {tid for tid, status in s3_search.after_interrupt.items() if status == "TERMINATED"}
    assert done, "the interrupt came before any trial was recorded as finished"
    assert len(done) < TRIALS, "the interrupt came after the search had finished"
    trials = s3_search.trials
    assert len(trials) == TRIALS and trials["trial_id"].is_unique
    assert (trials["status"] == "FINISHED").all()
    for row in trials.itertuples():
        if row.trial_id in done:  # finished before the interrupt: not one more result line
            assert s3_search.results_after[row.trial] == s3_search.results_before[row.trial]
    parents = mlflow_runs(s3_search.uri, EXPERIMENT, "trial")
    assert sorted(r.data.tags["megdecode.trial_id"] for r in parents) == sorted(trials["trial_id"])
    assert all(r.info.status == "FINISHED" for r in parents)  # no orphan left RUNNING/KILLED
    assert len(mlflow_runs(s3_search.uri, EXPERIMENT, "seed")) == TRIALS  # one seed a trial


def test_resume_from_s3_keeps_the_optuna_study(s3_search: SimpleNamespace) -> None:
    from megdecode.search.tuner import check_searcher

    assert f"searcher: OptunaSearch/TPESampler ({TRIALS} trials in its study)" in (
        s3_search.second.output
    )
    tune_path = s3_search.tune_path
    assert check_searcher(tune_path, saved_trials(tune_path)) == (
        "OptunaSearch/TPESampler",
        TRIALS,
    )


def test_resumed_s3_search_registers_a_champion_that_loads(
    s3_search: SimpleNamespace, s3_server: S3Server
) -> None:
    from megdecode.model_registry import resolve_bundle
    from megdecode.predict import load_model

    assert "registered: models:/megdecode-brain@champion" in s3_search.second.output
    folder, _ = resolve_bundle("models:/megdecode-brain@champion", s3_search.uri)
    model, bundle = load_model(folder)
    assert bundle.metrics and sum(p.numel() for p in model.parameters()) > 0
    artifacts = files.fsspec_fs(s3_search.tune_path).find(f"{s3_server.bucket}/resume/mlartifacts")
    assert any(k.endswith("bundle.json") for k in artifacts)  # the bundle is on S3


@pytest.mark.parametrize("out", ["first", "new"])
def test_resume_where_the_storage_holds_no_search_names_the_uri(
    s3_search: SimpleNamespace, s3_server: S3Server, out: str
) -> None:
    """With the interrupted search's --out (its search.json names another storage) or a new one."""
    empty = s3_server.uri("resume/nothing-here")
    argv = [
        "--data", s3_search.argv[1], "--storage", empty, "--tracking-uri", s3_search.uri,
        "--experiment", EXPERIMENT, "--out", str(s3_search.root / out), "--resume",
    ]  # fmt: skip
    result = _tune(argv)
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "nothing to resume" in result.output, result.output
    assert files.join(empty, EXPERIMENT) in result.output, result.output
