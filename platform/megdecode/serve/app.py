"""The application graph: Ingress -> BrainDecoder (+ Generator), composed with handles.

`build_app(config)` turns a `ServeConfig` into a bound Serve application, with each
deployment's resources planned against the cluster (`megdecode.serve.placement`);
`app_builder` is what ``serve run serve_apps/config.yaml`` calls with the YAML's ``args``;
`start` runs it on a local or attached Ray (loopback HTTP unless configured otherwise) and
returns once it runs, or raises `StartError` within ``start_timeout_s`` saying which
deployment does not fit, instead of leaving Serve waiting for resources forever.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from megdecode.serve.config import ServeConfig
from megdecode.serve.placement import (
    DECODER,
    GENERATOR,
    INGRESS,
    Cluster,
    Plan,
    log_plan,
    plan_resources,
)

logger = logging.getLogger(__name__)

# Rolling updates start the replacement replicas first and drain the old ones (they finish
# what they hold, up to the timeout) before stopping them: a redeploy (new alias, new
# config, or any Python-built app, whose code version Serve draws anew) drops no request.
ROLLING = {
    "max_surge_percent": 100,
    "graceful_shutdown_wait_loop_s": 0.5,
    "graceful_shutdown_timeout_s": 30.0,
}


class StartError(RuntimeError):
    """The app did not start; the message names the deployment, its request and the cluster."""


class StartInterrupted(StartError):
    """A stop was asked for (Ctrl-C, SIGTERM) while the app was starting."""


def decoder_user_config(cfg: ServeConfig, store: str | None = None) -> dict[str, Any]:
    """What a reload changes: the model source and a revision to force reloading the same URI."""
    return {
        "model": cfg.decoder.model,
        "tracking_uri": cfg.tracking_uri(),
        "revision": cfg.decoder.revision,
        "store": store or "",
    }


def build_app(
    cfg: ServeConfig, token: str | None = None, store: str | None = None, plan: Plan | None = None
) -> Any:
    """The bound app; `token` None reads the variable named by http.token_env (empty = no auth).

    `plan` None plans the requests against the connected cluster (`placement.plan_resources`).
    """
    from megdecode.serve.admission import token_digest
    from megdecode.serve.decoder import BrainDecoder
    from megdecode.serve.generator import Generator
    from megdecode.serve.ingress import Ingress

    if plan is None:
        plan = plan_resources(cfg, Cluster.now())
        log_plan(plan)
    d, g, h = cfg.decoder, cfg.generator, cfg.http
    token = os.environ.get(h.token_env, "") if token is None else token
    model_config = decoder_user_config(cfg, store)
    dec = plan.share(DECODER)
    decoder = BrainDecoder.options(  # type: ignore[attr-defined]  # Serve's decorator adds options()
        **ROLLING,
        num_replicas=dec.replicas,
        max_ongoing_requests=d.max_ongoing_requests,
        max_queued_requests=d.max_queued_requests,
        ray_actor_options=dec.actor_options(),
        user_config=model_config,
    ).bind(d.replace(num_cpus=dec.num_cpus).to_flat_dict())
    generator = None
    if g.weights:
        gen = plan.share(GENERATOR)
        generator = Generator.options(  # type: ignore[attr-defined]  # Serve's decorator adds options()
            **ROLLING,
            autoscaling_config={
                "min_replicas": g.min_replicas,
                "max_replicas": gen.max_replicas,
                "initial_replicas": gen.replicas,
                "target_ongoing_requests": g.target_ongoing_requests,
            },
            max_ongoing_requests=g.max_ongoing_requests,
            max_queued_requests=g.max_queued_requests,
            ray_actor_options=gen.actor_options(),
        ).bind(
            g.replace(
                num_gpus=gen.num_gpus, num_cpus=gen.num_cpus, max_replicas=gen.max_replicas
            ).to_flat_dict()
        )
    ingress_config = {
        "token_sha256": token_digest(token),
        "decoder": model_config if d.ingress_copy != "none" else {},
    }
    # Serve's proxy answers 503 itself once the ingress holds max_ongoing + max_queued requests;
    # backpressure_config gives that answer the same Retry-After as the ingress' own 503s.
    return Ingress.options(  # type: ignore[attr-defined]  # Serve's decorator adds options()
        **ROLLING,
        max_ongoing_requests=h.max_ongoing_requests,
        max_queued_requests=h.max_queued_requests,
        backpressure_config={"retry_after_s": h.retry_after_s},
        ray_actor_options=plan.share(INGRESS).actor_options(),
        user_config=ingress_config,
    ).bind(decoder, generator, cfg.to_flat_dict())


def app_builder(args: dict[str, Any]) -> Any:
    """``import_path`` target of serve_apps/config.yaml: its ``args`` override the defaults."""
    return build_app(ServeConfig.from_mapping(args))


def start(
    cfg: ServeConfig,
    token: str | None = None,
    store: str | None = None,
    address: str | None = None,
    blocking: bool = False,
    stop: threading.Event | None = None,
    fixed_cluster: bool | None = None,
) -> str:
    """Start Ray (loopback, unless `address`) and Serve on http.host:port, run the app; its URL.

    Returns once every deployment runs. Raises `StartError` (after deleting the app) when
    a request cannot fit a cluster that cannot grow (at once: a local cluster started
    here), when a deployment fails, or when the replicas do not all run within
    ``start_timeout_s``; `StartInterrupted` when `stop` is set meanwhile. `fixed_cluster`:
    whether the cluster can never grow (default: when this call starts a local one).
    """
    import ray
    from ray import serve

    from megdecode.logs import quiet_console
    from megdecode.raycluster import init_ray

    quiet_console()  # Serve configures its driver-side console logger at import
    if fixed_cluster is None:
        fixed_cluster = (
            not ray.is_initialized() and not address and not os.environ.get("RAY_ADDRESS")
        )
    if not ray.is_initialized():
        init_ray(address)
    plan = plan_resources(cfg, Cluster.now(fixed=fixed_cluster))
    log_plan(plan)
    if not plan.fits and plan.cluster.fixed:
        raise StartError(
            f"cannot start {cfg.app_name!r} on this cluster ({plan.cluster.describe()}): "
            f"{'; '.join(plan.problems)}. {ADVICE}"
        )
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run_many(
        [
            serve.RunTarget(
                build_app(cfg, token, store, plan),
                name=cfg.app_name,
                route_prefix=cfg.http.route_prefix,
            )
        ],
        wait_for_applications_running=False,
    )
    try:
        wait_running(cfg.app_name, plan, cfg.start_timeout_s, stop)
    except StartError:
        _delete_quietly(cfg.app_name)
        raise
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    if blocking:
        (stop or threading.Event()).wait()
    return url


ADVICE = (
    "Leave num_cpus unset in the config to derive it from the cluster, lower it, or give the cluster "
    "more resources"
)


def wait_running(
    app: str, plan: Plan, timeout_s: float, stop: threading.Event | None = None, poll_s: float = 0.5
) -> None:
    """Poll serve.status() until `app` runs; `StartError` on failure or after `timeout_s`."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        state = _name(getattr(status, "status", "NOT_STARTED"))
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED" and status is not None:
            raise StartError(
                f"{app!r} failed to deploy: {_short(status.message) or 'no message from Serve'}"
            )
        if stop is not None and stop.is_set():
            raise StartInterrupted(f"stopped while {app!r} was starting")
        if time.monotonic() >= deadline:
            raise StartError(not_running(app, status, plan, timeout_s))
        time.sleep(poll_s)


def not_running(app: str, status: Any, plan: Plan, timeout_s: float) -> str:
    """Which deployments are not running yet, what each asks for and what the cluster has."""
    import ray

    lines = []
    for name, dep in sorted((getattr(status, "deployments", None) or {}).items()):
        if _name(dep.status) == "HEALTHY":
            continue
        ask = plan.share(name).describe() if plan.has(name) else name
        states = ", ".join(f"{n} {_name(k)}" for k, n in dep.replica_states.items())
        serve_says = f" (Serve: {_short(dep.message)})" if dep.message else ""
        lines.append(f"{ask} is {_name(dep.status)}{f' [{states}]' if states else ''}{serve_says}")
    free = ray.available_resources()
    what = "; ".join(lines) or "no deployment reported yet"
    return (
        f"{app!r} did not start within {timeout_s:g} s: {what}. The cluster has {plan.cluster.describe()} "
        f"({free.get('CPU', 0.0):g} CPU, {free.get('GPU', 0.0):g} GPU free now). {ADVICE}, or raise "
        "start_timeout_s (--start-timeout) if it is still loading."
    )


def _name(state: Any) -> str:
    """An enum member of Serve's status (or its plain string) as its bare name."""
    return str(getattr(state, "value", state))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _delete_quietly(app: str) -> None:
    """Delete a half-started app without waiting on replicas that never ran."""
    from ray import serve

    try:
        serve.delete(app, _blocking=False)
    except Exception as exc:  # noqa: BLE001 - the caller reports the start error, not this one
        logger.warning("could not delete %r: %s", app, exc)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now (for tests, the demo and benchmarks)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
