"""Local paths and object-store URIs (``s3://``, ``gs://``) behind one small API.

Cloud Ray clusters (KubeRay, EC2) share no disk, only object storage, so every stage
(BIDS root, epoch store, latents, Tune storage, MLflow artifacts) takes either a local
path or a URI. Stages call these functions instead of `pathlib`:

- `resolve` gives a `pyarrow.fs.FileSystem` and the path inside it (what Parquet, Ray
  Data and Ray Tune take), `fsspec_fs` the fsspec one (bulk copies, listings);
- `join`, `exists`, `open_input`, `open_output`, `put_dir`, `local_copy` work on both.

The S3 endpoint comes from the standard environment (``AWS_ENDPOINT_URL_S3``, then
``AWS_ENDPOINT_URL``, then MLflow's ``MLFLOW_S3_ENDPOINT_URL``), so the same code talks to
AWS and to a test server (moto, MinIO). Why short connect timeouts and few retries: the
AWS SDK's defaults retry for ~45 s before saying that credentials are missing or a host is
unreachable; here such a failure is a `StorageError` in a few seconds, naming the URI and
the variables to set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

SCHEMES = ("s3", "gs", "gcs")
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
CONNECT_TIMEOUT_S = 3.0  # a reachable endpoint answers in milliseconds
REQUEST_TIMEOUT_S = 30.0  # one request: large shards are read in ranges well under this
MAX_ATTEMPTS = 2  # one retry for a transient error, not the SDK's ~45 s of backoff

PathLike = str | Path


class StorageError(OSError):
    """An object store cannot be used: the message names the URI and what to set."""


def is_uri(path: PathLike) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``), False for a local path."""
    return isinstance(path, str) and urlparse(path).scheme in SCHEMES


def as_str(path: PathLike) -> str:
    """A URI unchanged, a local path made absolute (Ray workers run in other folders)."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def join(base: PathLike, *parts: str) -> str:
    """`base`/`parts` with POSIX separators for a URI (where `Path` would drop a slash)."""
    if not is_uri(base):
        return str(Path(base).joinpath(*parts))
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def endpoint_url() -> str | None:
    """The S3 endpoint the environment names (None: AWS's own)."""
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SHIP_SECRETS_ENV = "MEGDECODE_SHIP_CREDENTIALS"  # "1": storage_env() includes the AWS keys


def storage_env(include_secrets: bool | None = None) -> dict[str, str]:
    """The variables a Ray worker needs to reach the same object store as this process
    (for ``runtime_env={"env_vars": ...}`` where workers do not inherit the driver's).

    The endpoint, region and the *path* of a GCS key file always; the AWS keys only when
    `include_secrets` (default: ``MEGDECODE_SHIP_CREDENTIALS=1``): a runtime_env is stored
    in the GCS and shown by Ray's dashboard and job API, so secrets stay out of it unless
    asked for. Cloud nodes normally get credentials from an instance role instead.
    """
    if include_secrets is None:
        include_secrets = os.environ.get(SHIP_SECRETS_ENV) == "1"
    keys = (*ENDPOINT_VARS, "AWS_DEFAULT_REGION", "AWS_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
            *(SECRET_VARS if include_secrets else ()))  # fmt: skip
    return {k: os.environ[k] for k in keys if os.environ.get(k)}


def _hint(uri: str) -> str:
    if urlparse(uri).scheme == "s3":
        return (
            "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION (and "
            "AWS_ENDPOINT_URL for a non-AWS server such as MinIO or moto); "
            f"endpoint now: {endpoint_url() or 'AWS default'}"
        )
    return "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"


def s3_filesystem() -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem on the environment's endpoint, credentials and region, with
    short timeouts and one retry (see the module docstring)."""
    kwargs: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    }
    endpoint = endpoint_url()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs |= {"endpoint_override": parsed.netloc, "scheme": parsed.scheme}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs |= {"access_key": key, "secret_key": secret,
                   "session_token": os.environ.get("AWS_SESSION_TOKEN")}  # fmt: skip
    return pafs.S3FileSystem(**kwargs)


def resolve(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it): ``bucket/key`` for a URI, an absolute path otherwise."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    parsed = urlparse(str(path))
    inner = f"{parsed.netloc}{parsed.path}".rstrip("/")
    if not parsed.netloc:
        raise StorageError(f"{path}: no bucket in the URI (expected {parsed.scheme}://BUCKET/KEY)")
    if parsed.scheme == "s3":
        return s3_filesystem(), inner
    try:
        return pafs.GcsFileSystem(retry_time_limit=dt_seconds(REQUEST_TIMEOUT_S)), inner
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on bad credentials
        raise StorageError(f"cannot open {path}: {exc}; {_hint(str(path))}") from exc


def dt_seconds(seconds: float) -> Any:
    """A `datetime.timedelta` (what `GcsFileSystem` takes for its retry limit)."""
    import datetime as dt

    return dt.timedelta(seconds=seconds)


@contextlib.contextmanager
def named_errors(uri: PathLike) -> Iterator[None]:
    """Object-store failures (no credentials, no bucket, no endpoint) as a `StorageError`
    naming `uri` and the variables to set. A local path's errors pass unchanged."""
    try:
        yield
    except (StorageError, FileNotFoundError):
        raise
    except OSError as exc:
        if not is_uri(uri):
            raise
        raise StorageError(f"cannot use {uri}: {exc}; {_hint(str(uri))}") from exc


def check_access(uri: PathLike) -> None:
    """Fail fast (seconds) if `uri`'s bucket cannot be reached with the current settings."""
    if not is_uri(uri):
        return
    fs, inner = resolve(uri)
    bucket = inner.split("/", 1)[0]
    with named_errors(uri):
        info = fs.get_file_info(bucket)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(
            f"cannot use {uri}: bucket {bucket!r} does not exist at "
            f"{endpoint_url() or 'the default endpoint'}; create it, or {_hint(str(uri))}"
        )


def exists(path: PathLike) -> bool:
    """Whether a file or folder is at `path` (a URI prefix counts as a folder)."""
    if not is_uri(path):
        return Path(path).exists()
    fs, inner = resolve(path)
    with named_errors(path):
        return bool(fs.get_file_info(inner).type != pafs.FileType.NotFound)


def open_input(path: PathLike) -> Any:
    """A seekable binary reader (`pyarrow.NativeFile`: ``.read``, ``.seek``, ``.size()``)."""
    fs, inner = resolve(path)
    with named_errors(path):
        try:
            return fs.open_input_file(inner)
        except FileNotFoundError:
            raise FileNotFoundError(f"no file at {path}") from None


def open_output(path: PathLike) -> Any:
    """A binary writer; on an object store the object appears whole when it is closed."""
    fs, inner = resolve(path)
    with named_errors(path):
        if not is_uri(path):
            Path(inner).parent.mkdir(parents=True, exist_ok=True)
        return fs.open_output_stream(inner)


def listdir(path: PathLike) -> list[str]:
    """Names of the files directly under the folder `path` (none when it does not exist)."""
    fs, inner = resolve(path)
    with named_errors(path):
        found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.base_name for i in found if i.type == pafs.FileType.File)


def read_text(path: PathLike) -> str:
    with open_input(path) as fh:
        return bytes(fh.read()).decode()


def write_text(path: PathLike, text: str) -> None:
    with open_output(path) as fh:
        fh.write(text.encode())


def fsspec_fs(path: PathLike) -> Any:
    """The fsspec filesystem of `path` (s3fs/gcsfs for URIs), on the same endpoint."""
    import fsspec

    if not is_uri(path):
        return fsspec.filesystem("file")
    scheme = urlparse(str(path)).scheme
    if scheme == "s3":
        endpoint = endpoint_url()
        return fsspec.filesystem(
            "s3",
            endpoint_url=endpoint,
            config_kwargs={"connect_timeout": CONNECT_TIMEOUT_S,
                           "retries": {"max_attempts": MAX_ATTEMPTS}},
            skip_instance_cache=True,
        )  # fmt: skip
    return fsspec.filesystem("gcs")


def put_dir(local: PathLike, uri: PathLike, last: str | None = None) -> None:
    """Upload the tree at `local` under `uri`; `last` (a relative path) is uploaded last,
    so a reader that waits for it (a store's manifest) never sees a partial upload."""
    fs, inner = resolve(uri)
    root = Path(local)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    if last is not None:
        paths = [p for p in paths if p != root / last] + [root / last]
    with named_errors(uri):
        for p in paths:
            key = f"{inner}/{p.relative_to(root).as_posix()}"
            with open(p, "rb") as src, fs.open_output_stream(key) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)


def copy_dir(src: PathLike, dst: PathLike, last: str | None = None) -> None:
    """Copy the tree at `src` to `dst` on the same filesystem (server-side on an object
    store); `last`, a relative path, is copied last (see `put_dir`)."""
    fs, inner = resolve(src)
    _, target = resolve(dst)
    with named_errors(src):
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        rels = sorted(i.path[len(inner) + 1 :] for i in found if i.type == pafs.FileType.File)
        if last is not None and last in rels:
            rels = [r for r in rels if r != last] + [last]
        for rel in rels:
            if not is_uri(dst):
                Path(f"{target}/{rel}").parent.mkdir(parents=True, exist_ok=True)
            fs.copy_file(f"{inner}/{rel}", f"{target}/{rel}")


def delete_dir(path: PathLike) -> None:
    """Remove the tree at `path` (nothing happens when there is none)."""
    fs, inner = resolve(path)
    with named_errors(path):
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            fs.delete_dir(inner)


@contextlib.contextmanager
def local_copy(path: PathLike, *, include: list[str] | None = None) -> Iterator[Path]:
    """A local path holding `path`'s content, for readers that take local files only (MNE).

    A local `path` is yielded as is; a URI (file or folder) is downloaded to a temporary
    folder removed on exit. `include`: relative paths under a folder URI to fetch (the runs a
    task needs, with their sidecars), instead of the whole tree.
    """
    if not is_uri(path):
        yield Path(path)
        return
    fs, inner = resolve(path)
    with tempfile.TemporaryDirectory(prefix="megdecode-") as tmp:
        with named_errors(path):
            info = fs.get_file_info(inner)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"nothing at {path}")
            if info.type == pafs.FileType.File:
                rels, base = [Path(inner).name], str(Path(inner).parent)
            elif include is None:
                found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
                rels = [i.path[len(inner) + 1 :] for i in found if i.type == pafs.FileType.File]
                base = inner
            else:
                rels, base = list(include), inner
            for rel in rels:
                _get(fs, f"{base}/{rel}", Path(tmp) / rel)
        logger.debug("fetched %d file(s) of %s to %s", len(rels), path, tmp)
        yield Path(tmp) / rels[0] if info.type == pafs.FileType.File else Path(tmp)


def copy_to_local(fs: pafs.FileSystem, inner: str, target: Path) -> None:
    """Download one object (`inner` on `fs`) to the local file `target`."""
    _get(fs, inner, target)


def _get(fs: pafs.FileSystem, inner: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(inner) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
