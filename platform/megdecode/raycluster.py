"""Start or attach to Ray the same way from every entry point.

A laptop run starts a private local cluster bound to loopback (the GCS otherwise listens
on every interface); a cluster run passes ``--address auto`` or ``ray://host:10001``.
``RAY_ADDRESS=http://host:8265`` is the job-submission address for the CLI only: Ray's
``init`` rejects it, so it is ignored here with a warning instead of a crash.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def package_dir() -> str:
    """The folder of the installed or checked-out `megdecode` package."""
    import megdecode

    return str(Path(megdecode.__file__).resolve().parent)


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """`ray.init` for our jobs: local and loopback-only unless an address is given."""
    import ray

    if ray.is_initialized():
        return
    env_address = os.environ.get("RAY_ADDRESS", "")
    if env_address.startswith("http"):
        logger.warning(
            "ignoring RAY_ADDRESS=%s (a dashboard URL for `ray job`, not for ray.init)", env_address
        )
        os.environ.pop("RAY_ADDRESS")
        env_address = ""
    from megdecode.logs import log_file, quiet_console, verbose

    # Quiet mode: the workers' output (trials, Serve replicas' request logs) stays in the
    # session's log files instead of being streamed to this terminal; task and actor errors
    # still reach the driver as exceptions with their tracebacks.
    quiet_console()  # Ray's console logger exists from `import ray` on: quiet it before init talks
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": verbose(),
    }
    options.update(kwargs)
    if address or env_address:
        from megdecode.files import storage_env

        options["runtime_env"] = attach_runtime_env(
            options.get("runtime_env"), package_dir(), storage_env(), job_runtime_env()
        )
        ray.init(address=address or env_address, **options)
    else:
        _loopback_only()
        # "local": a private cluster even when `ray start` left one running on this machine
        # (a bare ray.init() would attach to it and then refuse num_cpus).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **options)
    quiet_console()
    resources = ray.cluster_resources()
    quiet = log_file()
    logger.info(
        "ray: %g CPU, %g GPU; logs: %s%s",
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        f"{quiet} (Ray, Tune, Serve, MLflow; -v streams them) and " if quiet else "",
        session_logs(),
    )


def attach_runtime_env(
    given: Mapping[str, Any] | None,
    package: str,
    storage: Mapping[str, str],
    job: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``runtime_env`` of a driver attaching to a cluster: `given` (the caller's), plus
    the package and the object-store variables where neither the caller nor the job set them.

    Why: a cluster's workers may not have megdecode installed (a job submitted with
    ``--working-dir`` ships the repository, but platform/ is not on sys.path), so the
    package itself is shipped (``py_modules``). And worker processes inherit the
    environment of the node they run on, not the driver's: a trial or a Ray Data read task
    on another node would not reach the driver's S3 endpoint with its credentials, so
    `storage` (`files.storage_env()`) goes in ``env_vars``; the caller's values win.

    job: the runtime_env of the Ray job this driver runs in (`ray job submit`), if any. Ray
    refuses a driver's runtime_env that sets a field or an environment variable the job
    already sets, and the job's reach every worker anyway: those are left out.
    """
    job = job or {}
    env = dict(given or {})
    if "py_modules" not in job:
        env.setdefault("py_modules", [package])
    job_vars = job.get("env_vars") or {}
    env_vars = {k: v for k, v in storage.items() if k not in job_vars}
    env_vars |= dict(env.get("env_vars") or {})
    if env_vars:
        env["env_vars"] = env_vars
    else:
        env.pop("env_vars", None)
    return env


def job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the Ray job this process is the driver of ({} outside a job)."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray for a submitted job
    if not raw:
        return {}
    return dict(json.loads(raw).get("runtime_env") or {})


def session_logs() -> str:
    """The log folder of the Ray session this process is attached to (workers' output)."""
    import ray

    try:
        from ray._private.worker import global_worker

        node = global_worker.node
        if node is not None:
            return str(Path(node.get_session_dir_path()) / "logs")
    except Exception:  # attached through a client, or Ray's internals moved
        pass
    return "/tmp/ray/session_latest/logs" if ray.is_initialized() else "(ray not started)"


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    """Make the private local cluster advertise and bind 127.0.0.1 only.

    On Linux, Ray resolves every local address (even ``_node_ip_address="127.0.0.1"`` or
    ``ray start --node-ip-address=127.0.0.1``) to the machine's network address, and its
    GCS, raylet and object manager then listen on all interfaces. With Ray's switch
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` ("no multi-node cluster") the node address is
    the loopback one and those servers bind 127.0.0.1, which is what a one-machine run
    wants. Set the variable to 1 yourself to let other machines join a cluster started here.
    Ray reads it when `ray` is first imported, so the imported constant is updated too; the
    variable is also what Ray's own child processes see.
    """
    from ray._private import ray_constants

    os.environ.setdefault(LOOPBACK_ENV, "0")
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOOPBACK_ENV].strip().lower() in ("1", "true")
