"""`start` on a real 2-CPU Ray: the default app (CPU-fallback generator included) fits and
answers; what cannot be scheduled fails within the bound, naming itself; overload is shed
with 503 + Retry-After, by the ingress and by Serve's proxy, and nobody waits long."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serve_helpers import is_error_body, window

from megdecode.bundle_io import load_bundle
from megdecode.serve.app import StartError, StartInterrupted, free_port, start
from megdecode.serve.config import ServeConfig
from megdecode.serve.placement import Cluster, plan_resources

pytestmark = [pytest.mark.serve, pytest.mark.ray]


@pytest.fixture(scope="module")
def port(ray_local: None) -> int:
    """One HTTP port for the module: Serve keeps the proxy options of its first start."""
    return free_port()


@pytest.fixture(scope="module")
def generator_weights(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from megdecode.generate.tiny import build_tiny_generator

    b = load_bundle(tiny_bundle)
    return build_tiny_generator(
        tmp_path_factory.mktemp("gen") / "g", {b.latent_name: len(b.latent_mean)}, size=16
    )


def _deployed(app: str) -> bool:
    from ray import serve

    return app in serve.status().applications


def _deleting(app: str, within_s: float = 10.0) -> bool:
    """Gone or being deleted within `within_s` (the delete is asynchronous; replicas still
    starting take their graceful shutdown to stop)."""
    from ray import serve

    deadline = time.monotonic() + within_s
    while True:
        status = serve.status().applications.get(app)
        if status is None or str(getattr(status.status, "value", status.status)) == "DELETING":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@pytest.fixture()
def running(port: int) -> Iterator[list[str]]:
    """Apps a test started; deleted after it."""
    from ray import serve

    apps: list[str] = []
    yield apps
    for app in apps:
        if _deployed(app):
            serve.delete(app)


def test_the_default_app_with_a_cpu_generator_fits_two_cpus_and_answers(
    running: list[str], port: int, tiny_bundle: Path, generator_weights: Path
) -> None:
    """No num_cpus anywhere (the shipped defaults): 0.4 + 0.8 + 0.8 CPU of 2, /readyz 200,
    a decode and a reconstruction; the replicas hold what the plan said."""
    import ray

    cfg = ServeConfig.from_mapping(
        {
            "app_name": "fits",
            "http": {"port": port},
            "decoder": {"model": str(tiny_bundle)},
            "generator": {"weights": str(generator_weights), "max_steps": 2, "default_steps": 1},
        }
    )
    assert (
        cfg.http.num_cpus is None
        and cfg.decoder.num_cpus is None
        and cfg.generator.num_cpus is None
    )
    running.append(cfg.app_name)
    url = start(cfg, token="", fixed_cluster=True)
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
    subject, x = window(tiny_bundle)
    r = requests.post(f"{url}/v1/decode", json={"subject": subject, "data": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    png = requests.post(
        f"{url}/v1/reconstruct", json={"subject": subject, "data": x.tolist()}, timeout=120
    )
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG", png.text[:300]
    plan = plan_resources(cfg, Cluster.now(fixed=True))
    assert [(s.deployment, s.num_cpus, s.num_gpus, s.max_replicas) for s in plan.shares] == [
        ("Ingress", 0.4, 0.0, 1),
        ("BrainDecoder", 0.8, 0.0, 1),
        ("Generator", 0.8, 0.0, 1),
    ]
    # and the replicas hold exactly that: nothing left over, nothing pending
    assert ray.available_resources().get("CPU", 0.0) == pytest.approx(0.0, abs=1e-6)


def test_an_unschedulable_deployment_fails_within_the_bound_naming_itself(
    running: list[str], port: int, tiny_bundle: Path
) -> None:
    """On a cluster that may grow (attached), start waits start_timeout_s, then names the
    deployment, its request and the cluster, and deletes the half-started app."""
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "too-big",
            "start_timeout_s": 6,
            "http": {"port": port},
            "decoder": {"model": str(tiny_bundle), "num_cpus": 3},
        }
    )
    running.append(cfg.app_name)
    t0 = time.monotonic()
    with pytest.raises(StartError) as info:
        start(cfg, token="", fixed_cluster=False)
    elapsed = time.monotonic() - t0
    assert 6 <= elapsed < 30, elapsed
    message = str(info.value)
    assert "'too-big' did not start within 6 s" in message
    assert (
        "BrainDecoder 1 x 3 CPU (config)" in message and "The cluster has 2 CPU, 0 GPU" in message
    ), message
    assert (
        "Ingress" not in message.split("The cluster")[0]
    )  # the ingress fit: only the decoder is named
    assert _deleting(cfg.app_name)


def test_a_fixed_cluster_refuses_what_cannot_fit_at_once(
    running: list[str], port: int, tiny_bundle: Path
) -> None:
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "never",
            "http": {"port": port},
            "decoder": {"model": str(tiny_bundle), "num_cpus": 3},
        }
    )
    t0 = time.monotonic()
    with pytest.raises(
        StartError,
        match=r"BrainDecoder asks 3 CPU per replica \(decoder.num_cpus\); the cluster has 2",
    ):
        start(cfg, token="", fixed_cluster=True)
    assert time.monotonic() - t0 < 5 and not _deployed(cfg.app_name)


def test_a_stop_while_starting_returns_promptly(
    running: list[str], port: int, tiny_bundle: Path
) -> None:
    """What Ctrl-C does to `megdecode serve` while it waits for replicas."""
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "stopped",
            "start_timeout_s": 300,
            "http": {"port": port},
            "decoder": {"model": str(tiny_bundle), "num_cpus": 3},
        }
    )
    running.append(cfg.app_name)
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(StartInterrupted):
        start(cfg, token="", stop=stop, fixed_cluster=False)
    assert time.monotonic() - t0 < 15
    assert _deleting(cfg.app_name)


async def _burst(
    url: str, body: bytes, headers: dict[str, str], clients: int, per_client: int
) -> list[tuple[int, float, str | None, str]]:
    import aiohttp

    out: list[tuple[int, float, str | None, str]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            for _ in range(per_client):
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    text = await r.text()
                    out.append(
                        (r.status, time.perf_counter() - t0, r.headers.get("retry-after"), text)
                    )

        await asyncio.gather(*(client() for _ in range(clients)))
    return out


def _octet(bundle: Path) -> tuple[bytes, dict[str, str]]:
    subject, x = window(bundle)
    return x.tobytes(), {
        "content-type": "application/octet-stream",
        "x-shape": f"{x.shape[0]},{x.shape[1]}",
        "x-subject": subject,
    }


@pytest.mark.parametrize(
    ("http", "who"),
    [
        ({"max_decodes_in_flight": 2}, "ingress"),  # the ingress' own bound: a JSON 503
        (
            {"max_ongoing_requests": 2, "max_queued_requests": 1},
            "proxy",
        ),  # Serve's proxy: 503 before the ingress
    ],
)
def test_overload_is_shed_with_retry_after_and_nobody_waits(
    running: list[str], port: int, tiny_bundle: Path, http: dict, who: str
) -> None:
    cfg = ServeConfig.from_mapping(
        {
            "app_name": f"shed-{who}",
            "http": {"port": port, "retry_after_s": 2, **http},
            "decoder": {"model": str(tiny_bundle)},
        }
    )
    running.append(cfg.app_name)
    url = start(cfg, token="", fixed_cluster=True)
    body, headers = _octet(tiny_bundle)
    results = asyncio.run(_burst(f"{url}/v1/decode", body, headers, clients=24, per_client=8))
    codes = [status for status, *_ in results]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert codes.count(200) > 0 and codes.count(503) > 0, codes
    bound = 5.0  # seconds: an unbounded queue of 192 requests on 2 CPUs takes longer than this
    assert max(seconds for _, seconds, *_ in results) < bound
    shed = [(ra, text) for status, _, ra, text in results if status == 503]
    assert all(ra == "2" for ra, _ in shed), {ra for ra, _ in shed}
    if who == "ingress":
        assert {is_error_body(503, text)["error"] for _, text in shed} == {"overloaded"}
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200  # probes still answer


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model whose forward takes ~20 ms per window on one thread (four 640-wide blocks
    on the 6-channel fixture bundle): a burst of requests queues behind it for hundreds of ms."""
    import dataclasses

    import torch

    from fixtures.bundles import tiny_bundle
    from megdecode.bundle_io import save_bundle
    from megdecode.models.brain import BrainConfig, BrainModule

    b = tiny_bundle()
    wide = {"hidden_channels": 640, "projection_hidden": 640, "depth": 4}
    cfg = BrainConfig(**(b.model_config | wide))
    torch.manual_seed(0)
    model = BrainModule(cfg, b.pos2d)
    b = dataclasses.replace(b, model_config=cfg.to_flat_dict(), state_dict=model.state_dict())
    return save_bundle(b, tmp_path_factory.mktemp("slow") / "b")


@pytest.mark.parametrize(
    ("budget_ms", "copy"),
    [(100, "stream"), (100, "all"), (0, "stream")],  # pool; the ingress' copy; no budget
)
def test_requests_past_the_queue_budget_are_shed_and_the_accepted_stay_within_it(
    running: list[str], port: int, slow_bundle: Path, budget_ms: int, copy: str
) -> None:
    """12 concurrent requests, one forward each (max_batch_size 1), all within the count
    bounds: with a budget the late ones get 503 overloaded + Retry-After and every accepted
    one answers within budget + its forward + slack; without one all are accepted and the
    last ones wait longer than the budget would allow."""
    cfg = ServeConfig.from_mapping(
        {
            "app_name": f"budget-{budget_ms}-{copy}",
            "http": {
                "port": port,
                "retry_after_s": 2,
                "max_queue_ms": budget_ms,
                "max_decodes_in_flight": 32,  # the count bound (else 1 x 1) lets all 12 in
            },
            "decoder": {"model": str(slow_bundle), "max_batch_size": 1, "ingress_copy": copy},
        }
    )
    running.append(cfg.app_name)
    url = start(cfg, token="", fixed_cluster=True)
    body, headers = _octet(slow_bundle)
    assert requests.post(f"{url}/v1/decode", data=body, headers=headers, timeout=30).ok  # warm
    results = asyncio.run(_burst(f"{url}/v1/decode", body, headers, clients=12, per_client=1))
    codes = [status for status, *_ in results]
    accepted = [json.loads(text)["timing"] for status, _, _, text in results if status == 200]
    server_ms = [t["server_ms"] for t in accepted]
    if budget_ms == 0:
        assert codes == [200] * 12, codes
        assert max(server_ms) > 100, server_ms  # the queue behind 12 forwards: past 100 ms
        return
    assert set(codes) == {200, 503}, codes
    for _, _, retry_after, text in (r for r in results if r[0] == 503):
        err = is_error_body(503, text)
        assert (err["error"], retry_after) == ("overloaded", "2"), text
        assert "http.max_queue_ms" in err["detail"], text
    slack = 150.0  # the return hop, top-k and JSON on a loaded 2-CPU machine
    for t in accepted:
        assert t["queue_ms"] <= budget_ms, t
        assert t["server_ms"] <= budget_ms + t["forward_ms"] + slack, t
