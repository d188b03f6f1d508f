"""The application graph: Ingress -> BrainDecoder (+ Generator), composed with handles.

`build_app(config)` turns a `ServeConfig` into a bound Serve application; `app_builder`
is what ``serve run serve_apps/config.yaml`` calls with the YAML's ``args``; `start`
runs it on a local or attached Ray (loopback HTTP unless configured otherwise).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from megdecode.config import ConfigError
from megdecode.serve.config import ServeConfig

logger = logging.getLogger(__name__)

# Rolling updates start the replacement replicas first and drain the old ones (they finish
# what they hold, up to the timeout) before stopping them: a redeploy (new alias, new
# config, or any Python-built app, whose code version Serve draws anew) drops no request.
ROLLING = {"max_surge_percent": 100, "graceful_shutdown_wait_loop_s": 0.5, "graceful_shutdown_timeout_s": 30.0}


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def decoder_user_config(cfg: ServeConfig, store: str | None = None) -> dict[str, Any]:
    """What a reload changes: the model source and a revision to force reloading the same URI."""
    return {"model": cfg.decoder.model, "tracking_uri": cfg.tracking_uri(), "revision": cfg.decoder.revision,
            "store": store or ""}


def build_app(cfg: ServeConfig, token: str | None = None, store: str | None = None) -> Any:
    """The bound app; `token` None reads the variable named by http.token_env (empty = no auth)."""
    from megdecode.serve.decoder import BrainDecoder
    from megdecode.serve.generator import Generator
    from megdecode.serve.ingress import Ingress, token_digest

    d, g, h = cfg.decoder, cfg.generator, cfg.http
    token = os.environ.get(h.token_env, "") if token is None else token
    model_config = decoder_user_config(cfg, store)
    decoder = BrainDecoder.options(**ROLLING,  # type: ignore[attr-defined]
        num_replicas=d.num_replicas, max_ongoing_requests=d.max_ongoing_requests,
        max_queued_requests=d.max_queued_requests, ray_actor_options={"num_cpus": d.num_cpus},
        user_config=model_config,
    ).bind(d.to_flat_dict())
    generator = None
    if g.weights:
        gpus = g.num_gpus
        if gpus > 0 and _cluster_gpus() == 0:
            if not g.cpu_fallback:
                raise ConfigError("generator.num_gpus > 0 but the cluster has no GPU and cpu_fallback is off")
            logger.warning("no GPU in the cluster: the generator runs on CPU")
            gpus = 0.0
        generator = Generator.options(**ROLLING,  # type: ignore[attr-defined]
            autoscaling_config={"min_replicas": g.min_replicas, "max_replicas": g.max_replicas,
                                "initial_replicas": max(1, g.min_replicas),
                                "target_ongoing_requests": g.target_ongoing_requests},
            max_ongoing_requests=g.max_ongoing_requests, max_queued_requests=g.max_queued_requests,
            ray_actor_options={"num_cpus": g.num_cpus, "num_gpus": gpus},
        ).bind(g.replace(num_gpus=gpus).to_flat_dict())
    ingress_config = {"token_sha256": token_digest(token), "decoder": model_config if d.ingress_copy != "none" else {}}
    return Ingress.options(**ROLLING,  # type: ignore[attr-defined]
        max_ongoing_requests=h.max_ongoing_requests, max_queued_requests=h.max_queued_requests,
        ray_actor_options={"num_cpus": h.num_cpus}, user_config=ingress_config,
    ).bind(decoder, generator, cfg.to_flat_dict())


def app_builder(args: dict[str, Any]) -> Any:
    """``import_path`` target of serve_apps/config.yaml: its ``args`` override the defaults."""
    return build_app(ServeConfig.from_mapping(args))


def start(cfg: ServeConfig, token: str | None = None, store: str | None = None, address: str | None = None,
          blocking: bool = False) -> str:
    """Start Ray (loopback, unless `address`) and Serve on http.host:port, run the app; its URL."""
    import ray
    from ray import serve

    from megdecode.logs import quiet_console
    from megdecode.raycluster import init_ray

    quiet_console()  # Serve configures its driver-side console logger at import
    if not ray.is_initialized():
        init_ray(address)
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run(build_app(cfg, token, store), name=cfg.app_name, route_prefix=cfg.http.route_prefix,
              blocking=blocking)
    return f"http://{cfg.http.host}:{cfg.http.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now (for tests, the demo and benchmarks)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
