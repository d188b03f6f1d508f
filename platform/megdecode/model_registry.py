"""The model registry: register a bundle as a pyfunc model, and resolve a reference to a bundle.

`register_bundle` logs a bundle as an MLflow pyfunc model in a run, registers it and sets
an alias (``megdecode-brain@champion``). `resolve_bundle` is the one way back from a
reference (``models:/…``, ``runs:/…`` or a folder) to a bundle folder: serving,
`megdecode evaluate`, `reconstruct` and `register` all go through it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from megdecode.predict import load_model
from megdecode.pyfunc import save_pyfunc
from megdecode.tracking import TRACKING_ENV, Tracker

logger = logging.getLogger(__name__)

MODEL_PATH = "model"  # artifact folder of the registered pyfunc model inside its run


def register_bundle(
    tracker: Tracker,
    run_id: str,
    bundle_dir: str | Path,
    name: str = "megdecode-brain",
    alias: str = "champion",
) -> int:
    """Log the bundle as a pyfunc model (with its signature) in `run_id`, register it, alias it."""
    client = tracker.client
    _, bundle = load_model(Path(bundle_dir))  # a broken bundle never enters the registry
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_pyfunc(bundle_dir, bundle, Path(tmp) / MODEL_PATH)
        client.log_artifacts(run_id, str(model_dir), MODEL_PATH)
    try:
        client.create_registered_model(name, description="MEG window -> image latent (megdecode)")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {
        "latent_name": bundle.latent_name,
        "tmin": bundle.tmin,
        "tmax": bundle.tmax,
        "sfreq": bundle.sfreq,
        "n_channels": len(bundle.ch_names),
        "git_commit": bundle.git_commit,
    }
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"
    version = client.create_model_version(
        name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
    )
    client.set_registered_model_alias(name, alias, version.version)
    logger.info("registered %s version %s as @%s (run %s)", name, version.version, alias, run_id)
    return int(version.version)


@dataclass(frozen=True)
class RegistryInfo:
    """Where a resolved bundle came from (version, run and alias None for a bundle folder)."""

    name: str
    version: int | None = None
    run_id: str | None = None
    alias: str | None = None


def parse_model_uri(source: str) -> tuple[str, str | None, int | None]:
    """models:/name@alias -> (name, alias, None); models:/name/3 -> (name, None, 3)."""
    rest = source.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, int(version)
    raise ValueError(
        f"model URI {source!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
    )


def resolve_bundle(
    source: str, tracking_uri: str = "", dst: str | Path | None = None
) -> tuple[Path, RegistryInfo]:
    """The local bundle folder of `source` and where it came from: the one way serving,
    `megdecode evaluate`, `reconstruct` and `register` turn a model reference into files.

    `source` is a bundle folder, ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or
    ``runs:/<run_id>`` (the shallowest folder of the run's artifacts with a bundle.json). A
    tracked source is downloaded into `dst` (a new temporary folder when None); an unknown
    model, alias or version raises FileNotFoundError listing what the registry holds.
    """
    if not source:
        raise ValueError(
            "no model given (serving: decoder.model): a bundle folder, models:/<name>@<alias>, "
            "models:/<name>/<version> or runs:/<run_id>"
        )
    if not source.startswith(("models:/", "runs:/")):
        path = Path(source)
        if not (path / "bundle.json").is_file():
            raise FileNotFoundError(
                f"no model bundle at {source!r} (no bundle.json); give a bundle folder, "
                "models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>"
            )
        return path, RegistryInfo(path.name)
    if not tracking_uri:
        raise ValueError(
            f"{source} needs a tracking URI (--tracking-uri, decoder.tracking_uri or {TRACKING_ENV})"
        )
    client = Tracker(tracking_uri).client  # refuses a file: store as every tracked stage does
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").strip("/")
        return _run_bundle(client, run_id, _folder(dst)), RegistryInfo(run_id, run_id=run_id)
    name, alias, number = parse_model_uri(source)
    try:
        version = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, str(number))
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        held = {
            m.name: {a: int(v) for a, v in m.aliases.items()}
            for m in client.search_registered_models()
        }
        raise FileNotFoundError(
            f"{source}: {exc.message} (the registry at {tracking_uri} holds "
            f"{held or 'no model'}: name -> {{alias: version}})"
        ) from None
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version.source, dst_path=str(_folder(dst)), tracking_uri=tracking_uri
    )
    found = sorted(Path(local).rglob("bundle.json"), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"{source} (version {version.version}) holds no bundle.json")
    return found[0].parent, RegistryInfo(name, int(version.version), version.run_id, alias)


def _folder(dst: str | Path | None) -> Path:
    return Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="megdecode-model-"))


def _run_bundle(client: MlflowClient, run_id: str, dst: Path) -> Path:
    """The shallowest folder of the run's artifacts that holds a bundle.json, downloaded into `dst`."""
    folders, queue = [], [""]
    while queue:
        for info in client.list_artifacts(run_id, queue.pop(0) or None):
            if info.is_dir:
                queue.append(info.path)
            elif Path(info.path).name == "bundle.json":
                folders.append(str(Path(info.path).parent))
    if not folders:
        raise FileNotFoundError(f"run {run_id} has no bundle.json in its artifacts")
    folder = min(folders, key=lambda p: (p.count("/"), p))
    return Path(client.download_artifacts(run_id, "" if folder == "." else folder, str(dst)))
