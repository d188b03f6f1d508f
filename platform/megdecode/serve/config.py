"""The serving configuration: one frozen dataclass tree, read from serve_apps/config.yaml.

The YAML is a Ray Serve config file (``serve run serve_apps/config.yaml`` works as is);
our knobs live in the application's ``args`` and override the defaults below, which are
what a laptop needs. Why keep them in ``args`` rather than only in Serve's own
``deployments:`` section: batching, GPU share, limits and auth must reach the code that
enforces them, and Serve forwards ``args`` to the app builder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megdecode.config import ConfigError, FlatConfig

logger = logging.getLogger(__name__)

DEFAULT_APP = "megdecode"


@dataclass(frozen=True)
class HttpConfig(FlatConfig):
    """The HTTP proxy and the ingress' limits."""

    host: str = "127.0.0.1"  # loopback unless configured: Serve's own builds default to 0.0.0.0
    port: int = 8000
    route_prefix: str = "/"
    max_body_bytes: int = 4 * 1024 * 1024  # 4 MiB: a 272 x 181 window is ~0.2 MB raw, ~1 MB JSON
    request_timeout_s: float = 10.0  # per request to a model deployment; then a 503
    retry_after_s: int = 1  # the Retry-After header of every 503
    token_env: str = "MEGDECODE_API_TOKEN"  # when that variable is set, requests need the token
    num_cpus: float | None = None  # None: a share of the cluster (megdecode.serve.placement)
    max_ongoing_requests: int = 64  # requests one ingress replica holds (stream sockets included)
    max_queued_requests: int = 32  # beyond these, Serve's proxy answers 503 + Retry-After itself
    # /v1/decode requests one ingress replica works on at once; beyond them a 503 at once,
    # before the body is read: a bounded queue keeps the accepted requests fast, where an
    # unbounded one makes every client wait (p50 1.2 s at 128 clients on 2 CPUs).
    # 0 = half a batch per decoder replica: max(1, max_batch_size // 2) x num_replicas. By
    # Little's law the accepted latency is about this bound / throughput: on the demo model
    # (2 CPUs, batch 16) a full batch (16) gave 118 req/s at p50 135 ms and p99 298 ms at 64
    # clients, half a batch (8) 99 req/s at p50 85 ms, p99 195 ms (benchmarks/serve_latency.py).
    max_decodes_in_flight: int = 0
    # A /v1/decode request that waited longer than this (from the ingress' arrival to the
    # start of its batch) is shed with a 503 instead of computed: a count bound does not
    # bound the wait on a loaded CPU, a time budget does (megdecode.serve.queue_budget).
    # An accepted request then takes at most this + one batch forward + the HTTP hops;
    # keep it above one full batch's forward. 0 disables it.
    max_queue_ms: float = 120.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ConfigError(f"http.max_body_bytes: at least 1024, got {self.max_body_bytes}")
        if self.request_timeout_s <= 0:
            raise ConfigError("http.request_timeout_s must be > 0")
        _check_cpus("http", self.num_cpus)
        _check_limits("http", self.max_ongoing_requests, self.max_queued_requests)
        if self.max_decodes_in_flight < 0:
            raise ConfigError(
                f"http.max_decodes_in_flight: >= 0 (0 = derived), got {self.max_decodes_in_flight}"
            )
        if not self.max_queue_ms >= 0:  # NaN too
            raise ConfigError(f"http.max_queue_ms: >= 0 (0 = no budget), got {self.max_queue_ms}")


@dataclass(frozen=True)
class DecoderConfig(FlatConfig):
    """The BrainDecoder deployment: which model, and how requests are batched."""

    model: str = ""  # "models:/<name>@<alias>" or a bundle folder
    tracking_uri: str = ""  # for models:/ URIs; "" = $MEGDECODE_TRACKING_URI
    revision: int = 0  # bump to reload the same source (an alias moved to a new version)
    num_replicas: int = 1
    num_cpus: float | None = None  # None: a share of the cluster (megdecode.serve.placement)
    torch_threads: int = 1  # per replica; replicas, not threads, scale a CPU node
    precision: str = (
        "float32"  # or "bfloat16": faster on CPUs with AMX/AVX512-BF16, latents ~1e-5 off
    )
    max_batch_size: int = 16  # @serve.batch; 1 = no batching
    # 0: a batch is what queued while the previous forward ran (a lone request never
    # waits, a busy replica stacks up to max_batch_size); > 0 also waits this long for more.
    batch_wait_timeout_s: float = 0.0
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64  # beyond it: 503 with Retry-After, never an unbounded queue
    top_k: int = 5
    max_top_k: int = 50
    # Where the ingress holds its own copy of the model (loaded with the same source):
    # "stream": WS /v1/stream decodes in the ingress, with no handle hop per chunk;
    # "all": /v1/decode too (one hop less: for small models, whose forward is cheaper than
    # the hop; the BrainDecoder pool still serves reconstructions and the model card);
    # "none": every decode goes to the BrainDecoder pool (large models, GPU replicas).
    ingress_copy: str = "stream"

    def __post_init__(self) -> None:
        if self.precision not in ("float32", "bfloat16"):
            raise ConfigError(f"decoder.precision: float32 or bfloat16, got {self.precision!r}")
        if self.ingress_copy not in ("none", "stream", "all"):
            raise ConfigError(
                f"decoder.ingress_copy: none, stream or all, got {self.ingress_copy!r}"
            )
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ConfigError("decoder.max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        if not 1 <= self.top_k <= self.max_top_k:
            raise ConfigError(f"decoder.top_k must be in 1..max_top_k={self.max_top_k}")
        if self.num_replicas < 1:
            raise ConfigError(f"decoder.num_replicas: at least 1, got {self.num_replicas}")
        _check_cpus("decoder", self.num_cpus)
        _check_limits("decoder", self.max_ongoing_requests, self.max_queued_requests)


@dataclass(frozen=True)
class GeneratorConfig(FlatConfig):
    """The Generator deployment: a pool of replicas sharing GPUs, bounded sampling options."""

    weights: str = (
        ""  # a VD or twin generator folder (generate.loader); "" = /v1/reconstruct is 503
    )
    num_gpus: float = 0.25  # a GPU share per replica (a scheduling label; see gpu_memory_fraction)
    gpu_memory_fraction: float = 0.0  # cap on this process' GPU memory; 0 = num_gpus
    cpu_fallback: bool = True  # no GPU in the cluster: run on CPU instead of never starting
    num_cpus: float | None = None  # None: a share of the cluster (megdecode.serve.placement)
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 1.0
    max_ongoing_requests: int = 2
    max_queued_requests: int = 8
    default_steps: int = 20
    max_steps: int = 50
    default_guidance: float = 3.0
    max_guidance: float = 15.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.num_gpus <= 1:
            raise ConfigError(f"generator.num_gpus: a share in [0, 1], got {self.num_gpus}")
        if not 0 <= self.gpu_memory_fraction <= 1:
            raise ConfigError("generator.gpu_memory_fraction must be in [0, 1]")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(
                "generator: need 0 <= min_replicas <= max_replicas, max_replicas >= 1"
            )
        if not 1 <= self.default_steps <= self.max_steps:
            raise ConfigError("generator.default_steps must be in 1..max_steps")
        if not 0 <= self.default_guidance <= self.max_guidance:
            raise ConfigError("generator.default_guidance must be in 0..max_guidance")
        _check_cpus("generator", self.num_cpus)
        _check_limits("generator", self.max_ongoing_requests, self.max_queued_requests)


def _check_cpus(section: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ConfigError(
            f"{section}.num_cpus: >= 0 or unset (a share of the cluster), got {value}"
        )


def _check_limits(section: str, ongoing: int, queued: int) -> None:
    if ongoing < 1 or (queued < 1 and queued != -1):  # Serve's own rule for max_queued_requests
        raise ConfigError(
            f"{section}: max_ongoing_requests >= 1 and max_queued_requests >= 1 or -1 (unbounded), "
            f"got {ongoing} and {queued}"
        )


@dataclass(frozen=True)
class StreamConfig(FlatConfig):
    """WS /v1/stream: online preprocessing and decoding of a live MEG feed."""

    stride_s: float = 0.025  # a decode every 25 ms of signal (rounded to native samples)
    max_backlog_s: float = 0.5  # undecoded signal beyond this: report "behind", skip ahead
    max_chunk_s: float = 2.0  # larger chunks are refused (memory bound per message)
    require_causal_training: bool = False  # refuse bundles trained on zero-phase filtered data

    def __post_init__(self) -> None:
        if self.stride_s <= 0 or self.max_backlog_s <= 0 or self.max_chunk_s <= 0:
            raise ConfigError("stream: stride_s, max_backlog_s and max_chunk_s must be > 0")


@dataclass(frozen=True)
class LiveConfig(FlatConfig):
    """GET /live: the page that replays a recording through WS /v1/stream."""

    bids_root: str = (
        ""  # "" = the "bids" folder next to the served store (or the bundle's training store)
    )
    run: str = ""  # the run replayed by default (e.g. "sub-BIGMEG1_ses-01_task-main_run-01"); "" = the subject's last
    chunk_s: float = 0.025  # signal per WebSocket message the page sends, at real-time pace
    thumb_px: int = 96  # gallery thumbnails: longest side in pixels

    def __post_init__(self) -> None:
        if not 0.001 <= self.chunk_s <= 1.0:
            raise ConfigError(f"live.chunk_s: between 0.001 and 1 s, got {self.chunk_s}")
        if not 16 <= self.thumb_px <= 512:
            raise ConfigError(f"live.thumb_px: between 16 and 512, got {self.thumb_px}")


@dataclass(frozen=True)
class ServeConfig(FlatConfig):
    """Everything the app needs; `from_mapping` reads the nested ``args`` of config.yaml."""

    app_name: str = DEFAULT_APP
    # How long `start` waits for every replica to run before it gives up, naming what does
    # not fit (an autoscaler gets this long to add nodes; a fixed cluster is refused at once).
    start_timeout_s: float = 90.0
    http: HttpConfig = field(default_factory=HttpConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    live: LiveConfig = field(default_factory=LiveConfig)

    def __post_init__(self) -> None:
        if self.start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")

    @classmethod
    def from_mapping(cls, args: dict[str, Any] | None) -> ServeConfig:
        """Nested ``{"decoder": {"model": ...}}`` (YAML) or flat ``{"decoder.model": ...}``."""
        return cls.from_flat_dict(_flatten(dict(args or {})))

    def tracking_uri(self) -> str:
        return self.decoder.tracking_uri or os.environ.get("MEGDECODE_TRACKING_URI", "")

    def decode_limit(self) -> int:
        """/v1/decode requests an ingress replica admits at once (http.max_decodes_in_flight)."""
        return (
            self.http.max_decodes_in_flight
            or max(1, self.decoder.max_batch_size // 2) * self.decoder.num_replicas
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_config_file(
    path: str | Path, app_name: str | None = None
) -> tuple[ServeConfig, dict[str, Any]]:
    """(our config, the whole Serve config dict) of a Serve YAML; the app's args are ours.

    The file's ``http_options`` host/port win over ``args.http`` so that one YAML drives
    both ``serve run`` and ``megdecode serve``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no serve config at {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    apps = doc.get("applications") or []
    if not apps:
        raise ConfigError(f"{path}: no 'applications' entry")
    chosen = next((a for a in apps if a.get("name") == (app_name or a.get("name"))), None)
    if chosen is None:
        raise ConfigError(f"{path}: no application named {app_name!r}")
    cfg = ServeConfig.from_mapping(chosen.get("args"))
    http = doc.get("http_options") or {}
    changes = {k: http[k] for k in ("host", "port") if k in http}
    if changes:
        cfg = cfg.replace(http=cfg.http.replace(**changes))
    if chosen.get("name"):
        cfg = cfg.replace(app_name=str(chosen["name"]))
    return cfg, doc
