"""MLflow tracking for searches: experiments, runs, child runs, params, curves (DESIGN §6).

One experiment per search, one parent run per Tune trial and one child run per seed
(tag ``mlflow.parentRunId``), per-epoch curves as step metrics, tables and figures as
artifacts. The model registry (`register_bundle`, and `resolve_bundle`, the one way back
from a reference to a bundle) lives in `megdecode.model_registry`.

Why `MlflowClient` with explicit run ids: the Tune driver logs for many trials at once,
and MLflow's fluent API keeps one global active run per process. Why only the driver
logs: the default store is a SQLite file (MLflow 3 deprecates the ``file:`` store), and
SQLite takes one writing process; trials report to Tune, the driver writes MLflow. On
several nodes, point ``--tracking-uri`` at an MLflow server instead.

Artifacts (bundles, figures, tables) go next to the SQLite file by default, or under an
object-store root (``--artifact-root s3://...`` or ``MEGDECODE_ARTIFACT_ROOT``): MLflow
writes and reads them with boto3 on the endpoint of ``MLFLOW_S3_ENDPOINT_URL`` (filled in
from ``AWS_ENDPOINT_URL`` when unset). The SQLite file itself stays on the driver's disk.

Idempotence: a trial run is found again by its ``megdecode.trial_id`` tag and a seed
run by (parent, ``megdecode.seed``), so a resumed search does not duplicate runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from megdecode import files
from megdecode.bundle import git_commit

# Models registered before `megdecode.pyfunc` existed load `megdecode.tracking.BundleModel`
# (the code file the registry keeps names it), so the name stays importable from here.
from megdecode.pyfunc import BundleModel as BundleModel

logger = logging.getLogger(__name__)

TRACKING_ENV = "MEGDECODE_TRACKING_URI"
ARTIFACT_ENV = "MEGDECODE_ARTIFACT_ROOT"  # where new experiments keep artifacts (path or URI)
TAG_KIND, TAG_TRIAL, TAG_SEED = "megdecode.kind", "megdecode.trial_id", "megdecode.seed"
TAG_COMMIT, TAG_DATA, TAG_PARENT = (
    "megdecode.git_commit",
    "megdecode.dataset_sha256",
    "mlflow.parentRunId",
)
# MLflow 3's UI opens an experiment on its GenAI traces overview unless the experiment says
# it is a model-training one; with this tag it opens on the runs table (params, metrics).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI ignores that tag while its GenAI / Model training switch is on (the default):
# the switch follows the URL's workflowType (then the browser's last choice), so the link we
# print selects "Model training" and the runs table.
UI_RUNS_QUERY = "runs?workflowType=machine_learning"
_BATCH = 100  # MLflow's limit of params per log_batch call


def default_tracking_uri(run_dir: str | Path) -> str:
    """``sqlite:///<run_dir>/mlflow.db``, unless MEGDECODE_TRACKING_URI says otherwise."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def store_checksum(store: str | Path) -> str:
    """sha256 of the store's manifest.json, which itself holds the sha256 of every shard."""
    manifest = files.join(store, "manifest.json")
    if not files.exists(manifest):
        raise FileNotFoundError(f"no manifest.json in {store}; is it an epochs store?")
    with files.open_input(manifest) as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def object_store_env() -> None:
    """Point MLflow's S3 client at the endpoint the rest of megdecode uses (`megdecode.files`),
    unless MLFLOW_S3_ENDPOINT_URL is set already."""
    endpoint = files.endpoint_url()
    if endpoint and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint


class Tracker:
    """Runs of one experiment (created on first use) and the model registry of one store.

    artifact_root: where a new experiment keeps its artifacts, a folder or an object-store
    URI (default: ``MEGDECODE_ARTIFACT_ROOT``, else ``mlartifacts/`` next to a SQLite file,
    else the tracking server's default). An existing experiment keeps its own.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str | None = None,
        artifact_root: str | None = None,
    ) -> None:
        if tracking_uri.startswith("file:") or "://" not in tracking_uri:
            raise ValueError(
                f"tracking URI {tracking_uri!r}: MLflow 3 deprecates the file store; "
                "use sqlite:///PATH/mlflow.db or an http(s):// MLflow server"
            )
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.artifact_root: str | Path | None = artifact_root or os.environ.get(ARTIFACT_ENV)
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            if self.artifact_root is None:
                self.artifact_root = db.parent.resolve() / "mlartifacts"  # not in the cwd
        object_store_env()  # artifacts on an object store, written here or by another driver
        if self.artifact_root is not None and files.is_uri(self.artifact_root):
            files.check_access(self.artifact_root)  # in seconds, not boto3's retries
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment_id: str | None = None
        self._commit: str | None = None
        self._checksums: dict[str, str] = {}

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            if not self.experiment_name:
                raise ValueError("this Tracker has no experiment_name; pass one to log runs")
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
                if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older version, or by hand
                    self.client.set_experiment_tag(
                        self._experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                    )
            else:
                folder = self.experiment_name.replace("/", "_")
                location = files.join(self.artifact_root, folder) if self.artifact_root else None
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
        return self._experiment_id

    # --- runs -----------------------------------------------------------------------------
    def trial_run(
        self, trial_id: str, params: dict[str, Any], tags: dict[str, str] | None = None
    ) -> str:
        """The parent run of a Tune trial, reused (and set RUNNING) if it exists already."""
        existing = self._find(
            f"tags.`{TAG_TRIAL}` = '{_quote(trial_id)}' AND tags.`{TAG_KIND}` = 'trial'"
        )
        all_tags = (
            self._base_tags(params) | {TAG_KIND: "trial", TAG_TRIAL: trial_id} | dict(tags or {})
        )
        if existing is not None:
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            logger.info("trial %s: reusing run %s", trial_id, run_id)
        else:
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"trial-{trial_id}"
            ).info.run_id
        self.log_params(run_id, params)
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        return run_id

    def log_epoch(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """One point of every per-epoch curve."""
        now = int(time.time() * 1000)
        self._log_metrics(run_id, [Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def seed_run(
        self,
        parent_run_id: str,
        seed: int,
        params: dict[str, Any],
        metrics: dict[str, float],
        history: list[dict[str, float]],
    ) -> str:
        """A finished child run of one seed: params, history as steps 0..E-1, then `metrics`.

        A finished child for (parent, seed) is returned as it is; an unfinished one (a crash
        while logging) is deleted and logged again, so no curve holds duplicate steps.
        """
        query = (
            f"tags.`{TAG_PARENT}` = '{_quote(parent_run_id)}' AND tags.`{TAG_SEED}` = '{int(seed)}'"
        )
        existing = self._find(query)
        if existing is not None and existing.info.status == "FINISHED":
            return existing.info.run_id
        if existing is not None:
            self.client.delete_run(existing.info.run_id)
        parent = self.client.get_run(parent_run_id)
        inherited = {
            k: v for k, v in parent.data.tags.items() if k in (TAG_COMMIT, TAG_DATA, TAG_TRIAL)
        }
        trial = parent.data.tags.get(TAG_TRIAL, parent_run_id)
        tags = (
            self._base_tags(params)
            | inherited
            | {TAG_PARENT: parent_run_id, TAG_KIND: "seed", TAG_SEED: str(int(seed))}
        )
        run_id = self.client.create_run(
            parent.info.experiment_id, run_name=f"{trial}-seed{seed}", tags=tags
        ).info.run_id
        self.log_params(run_id, params)
        for step, row in enumerate(history):
            self.log_epoch(run_id, step, row)
        self.finish(run_id, metrics)
        return run_id

    def finish(
        self, run_id: str, metrics: dict[str, float] | None = None, status: str = "FINISHED"
    ) -> None:
        """Log the summary `metrics` one step after the last curve point, then end the run.

        The summary (e.g. val/top5 of the best epoch) is thus each metric's latest value,
        which is what MLflow's run table shows.
        """
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        if metrics:
            step = self._next_step(run_id, metrics)
            self.log_epoch(run_id, step, metrics)
        self.client.set_terminated(run_id, status=status)

    def log_artifacts(
        self, run_id: str, path: str | Path, artifact_path: str | None = None
    ) -> None:
        """A file or a folder (e.g. a bundle, a window-curve figure) into the run's artifacts."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no artifact at {path}")
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_table(self, run_id: str, df: pd.DataFrame, name: str) -> str:
        """`df` as tables/<name> (CSV, or JSON records when name ends in .json); returns the path."""
        name = name if name.endswith((".csv", ".json")) else f"{name}.csv"
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / name
            if name.endswith(".json"):
                df.to_json(file, orient="records", indent=1)
            else:
                df.to_csv(file, index=False)
            self.client.log_artifact(run_id, str(file), "tables")
        return f"tables/{name}"

    # --- helpers --------------------------------------------------------------------------
    def _find(self, filter_string: str) -> Any:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=2
        )
        if len(runs) > 1:
            logger.warning("%d runs match %s; using the first", len(runs), filter_string)
        return runs[0] if runs else None

    def _base_tags(self, params: dict[str, Any]) -> dict[str, str]:
        """Git commit always; the dataset checksum when the params name a store that exists."""
        if self._commit is None:
            self._commit = git_commit(Path(__file__).resolve().parent)
        tags = {TAG_COMMIT: self._commit}
        store = str(params.get("store") or "")
        if store and (Path(store) / "manifest.json").exists():
            if store not in self._checksums:
                self._checksums[store] = store_checksum(store)
            tags[TAG_DATA] = self._checksums[store]
        return tags

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Every param of `params` on the run, in batches of MLflow's limit (`_BATCH`), none dropped.

        Params are immutable in MLflow: log the missing ones only (a resumed run, or a
        caller's run logged into again, has the rest) and warn about those whose value differs.
        """
        have = self.client.get_run(run_id).data.params
        values = {k: "None" if v is None else str(v) for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if k in have and have[k] != v)
        if changed:
            logger.warning(
                "run %s keeps its logged values of %s (MLflow params are immutable)",
                run_id,
                changed,
            )
        todo = [Param(k, v) for k, v in values.items() if k not in have]
        for start in range(0, len(todo), _BATCH):
            self.client.log_batch(run_id, params=todo[start : start + _BATCH])

    def _log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def _next_step(self, run_id: str, metrics: dict[str, float]) -> int:
        logged = set(self.client.get_run(run_id).data.metrics) & set(metrics)
        steps = [m.step for key in logged for m in self.client.get_metric_history(run_id, key)]
        return max(steps) + 1 if steps else 0


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"ids may not contain quotes: {value!r}")
    return value


def browse_hint(tracking_uri: str, experiment_id: str, port: int = 5000) -> str:
    """How to look at an experiment's runs table: the UI command (for a SQLite store) and the
    link that opens MLflow's UI on "Model training" rather than its GenAI overview."""
    page = f"#/experiments/{experiment_id}/{UI_RUNS_QUERY}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --port {port}, then http://127.0.0.1:{port}/{page}"
