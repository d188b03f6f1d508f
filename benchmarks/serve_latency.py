"""Serving latency and throughput, all measured in one run on this machine; prints a table.

    python benchmarks/serve_latency.py --bundle runs/demo/models/handcrafted-seed0 [--requests 200]

Rows: the model's forward time for one window (the floor); a trivial echo deployment's
HTTP p50 (Serve's own overhead); /v1/decode p50/p99 at a fixed request rate (goal: p50 <=
echo p50 + floor + 2 ms); throughput at saturation with and without @serve.batch (goal:
>= 3x); the stream's sustained decodes/s against the 40/s a 25 ms stride needs and its
per-decode latency (goal <= floor + 3 ms); resident memory of the Ray + Serve processes.
Everything binds 127.0.0.1 on free ports and is shut down at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import time
from pathlib import Path

import numpy as np
import requests
import torch


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def floor_ms(bundle: Path, n: int = 200) -> float:
    from megdecode.serve.model import load_served_model

    torch.set_num_threads(1)
    m = load_served_model(str(bundle))
    c, t = m.shape
    x, s = np.random.default_rng(0).standard_normal((1, c, t)).astype(np.float32), np.zeros(1, np.int64)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        m.forward(x, s)
        times.append((time.perf_counter() - start) * 1e3)
    return pct(times[10:], 50)


def paced(url: str, body: bytes, headers: dict[str, str], n: int, rate: float) -> list[float]:
    """n requests at `rate`/s from one client: per-request latency (ms)."""
    session, out = requests.Session(), []
    for _ in range(n):
        due = time.perf_counter() + 1 / rate
        start = time.perf_counter()
        r = session.post(url, data=body, headers=headers, timeout=60)
        r.raise_for_status()
        out.append((time.perf_counter() - start) * 1e3)
        time.sleep(max(0.0, due - time.perf_counter()))
    return out


def saturate(url: str, body: bytes, headers: dict[str, str], seconds: float, clients: int = 32) -> float:
    """Requests/s with `clients` closed-loop clients; 503s are not counted."""
    stop = time.perf_counter() + seconds

    def loop(_: int) -> int:
        session, ok = requests.Session(), 0
        while time.perf_counter() < stop:
            ok += session.post(url, data=body, headers=headers, timeout=60).status_code == 200
        return ok

    with cf.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(loop, range(clients))) / seconds


def stream(ws_url: str, subject: str, n_channels: int, sfreq: float, seconds: float, realtime: bool) -> dict[str, float]:
    """Synthetic raw signal through WS /v1/stream: decodes/s and per-decode latency."""
    from websockets.sync.client import connect

    rng = np.random.default_rng(0)
    decodes, latencies = 0, []
    with connect(ws_url, max_size=2**24) as ws:
        ws.send(json.dumps({"subject": subject}))
        ready = json.loads(ws.recv(timeout=60))
        stride = ready["stride_samples"]
        warm = int(2 * sfreq)  # fill the first window
        ws.send((rng.standard_normal((n_channels, warm)) * 1e-12).astype("<f4").tobytes())
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            ws.send((rng.standard_normal((n_channels, stride)) * 1e-12).astype("<f4").tobytes())
            sent += 1
            while True:  # read what has arrived
                try:
                    msg = json.loads(ws.recv(timeout=0 if not realtime else 0.001))
                except TimeoutError:
                    break
                if msg["type"] == "decode":
                    decodes += 1
                    latencies.append(msg["latency_ms"] / msg["batch"])
            if realtime:
                time.sleep(max(0.0, start + sent * stride / sfreq - time.perf_counter()))
        elapsed = time.perf_counter() - start
    return {"decodes_per_s": decodes / elapsed, "p50_ms": pct(latencies, 50), "needed_per_s": sfreq / stride}


def ray_rss_mb() -> float:
    """Summed VmRSS of this process' descendants (the local Ray head, workers and replicas), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - mine
        mine |= frontier
    total = 0
    for pid in mine:
        try:
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
            total += int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            continue
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="fixed request rate for p50/p99")
    parser.add_argument("--seconds", type=float, default=10.0, help="per saturation / stream phase")
    args = parser.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    from megdecode.bundle import load_bundle
    from megdecode.raycluster import init_ray
    from megdecode.serve.app import build_app, free_port
    from megdecode.serve.config import ServeConfig

    b = load_bundle(args.bundle)
    x = np.random.default_rng(0).standard_normal((len(b.ch_names), b.n_times)).astype(np.float32)
    body = x.tobytes()
    headers = {"content-type": "application/octet-stream", "x-shape": f"{x.shape[0]},{x.shape[1]}",
               "x-subject": b.subjects[0]}
    rows: list[tuple[str, str, str]] = []
    floor = floor_ms(args.bundle)
    rows.append(("model forward, 1 window (floor)", f"{floor:.2f} ms", ""))

    init_ray(num_cpus=os.cpu_count())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class Echo:
            async def __call__(self, request: Request) -> bytes:
                await request.body()
                return b"ok"

        serve.run(Echo.bind(), name="echo", route_prefix="/echo")
        echo = paced(f"{url}/echo", body, headers, args.requests, args.rate)
        rows.append(("echo deployment HTTP p50", f"{pct(echo, 50):.2f} ms", "Serve's own overhead"))
        serve.delete("echo")

        def deploy(batch: int) -> None:
            cfg = ServeConfig.from_mapping({"http": {"port": port, "num_cpus": 0},
                                            "decoder": {"model": str(args.bundle), "num_cpus": 0, "max_batch_size": batch,
                                                        "max_queued_requests": 1000, "max_ongoing_requests": 64}})
            serve.run(build_app(cfg, token=""), name="megdecode", route_prefix="/")

        deploy(16)
        decode_url = f"{url}/v1/decode"
        lat = paced(decode_url, body, headers, args.requests, args.rate)
        goal = pct(echo, 50) + floor + 2
        rows.append((f"/v1/decode p50 @ {args.rate:g} req/s", f"{pct(lat, 50):.2f} ms",
                     f"goal <= {goal:.2f} ms: {'met' if pct(lat, 50) <= goal else 'NOT met'}"))
        rows.append((f"/v1/decode p99 @ {args.rate:g} req/s", f"{pct(lat, 99):.2f} ms", ""))
        batched = saturate(decode_url, body, headers, args.seconds)
        ws = stream(url.replace("http", "ws") + "/v1/stream", b.subjects[0], len(b.ch_names),
                    float(b.extra.get("scalers", {}).get(b.subjects[0], {}).get("raw_sfreq", 1200.0)), args.seconds, True)
        fast = stream(url.replace("http", "ws") + "/v1/stream", b.subjects[0], len(b.ch_names),
                      float(b.extra.get("scalers", {}).get(b.subjects[0], {}).get("raw_sfreq", 1200.0)), args.seconds, False)
        rss = ray_rss_mb()
        deploy(1)
        single = saturate(decode_url, body, headers, args.seconds)
        rows.append(("throughput, @serve.batch 16", f"{batched:.1f} req/s", ""))
        rows.append(("throughput, no batching", f"{single:.1f} req/s",
                     f"ratio {batched / single:.2f}x (goal >= 3x: {'met' if batched >= 3 * single else 'NOT met'})"))
        rows.append(("stream, real-time paced", f"{ws['decodes_per_s']:.1f} decodes/s", f"needs {ws['needed_per_s']:.1f}/s"))
        rows.append(("stream, as fast as possible", f"{fast['decodes_per_s']:.1f} decodes/s", ""))
        rows.append(("stream per-decode latency p50", f"{ws['p50_ms']:.2f} ms",
                     f"goal <= {floor + 3:.2f} ms: {'met' if ws['p50_ms'] <= floor + 3 else 'NOT met'}"))
        rows.append(("resident memory, Ray + Serve processes", f"{rss:.0f} MB", ""))
    finally:
        serve.shutdown()
        ray.shutdown()
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


if __name__ == "__main__":
    main()
