"""Serving latency and throughput, all measured in one run on this machine; prints a table.

    python benchmarks/serve_latency.py [--model-size paper|demo|both] [--bundle runs/demo/champion]

Model sizes. ``paper``: the paper's ~6M-parameter retrieval architecture (BrainConfig
defaults) on 272 channels, a -0.5..1.0 s window at 120 Hz, a 768-d latent, a 200-image
gallery and a 1200 Hz stream (THINGS-MEG's shape). ``demo``: the demo search's small
models (smoke.yaml: 64 channels wide, 0..0.6 s) on the demo twin's 240 Hz, or the bundle
given with ``--bundle`` (e.g. the demo's champion). Models built here are UNTRAINED (random
weights): they time the arithmetic and decode nothing.

Rows, per model size: the forward time of one window (the floor) and of B stacked windows
(B = max_batch_size), with the replica's thread count, and the arithmetic bound on what
batching can give, B·f(1)/f(B); /v1/decode p50/p99 at a fixed rate through the decoder pool
(ingress -> BrainDecoder, two hops) and on the ingress' own copy (``decoder.ingress_copy:
all``, one hop); goal: p50 <= echo p50 + floor + 2 ms; throughput at saturation with and
without @serve.batch (goal >= 3x), over HTTP and straight to the decoder pool through its
DeploymentHandle (what batching itself buys when the HTTP proxy and the ingress are not the
bottleneck); the stream's sustained decodes/s against the 40/s a 25 ms stride needs and its
per-decode latency (goal <= floor + 3 ms). The load curve (``--curve``; ``--curve-only`` for
nothing else) runs the app as shipped under 1..128 closed-loop clients, once per queue budget
of ``--queue-ms`` (default: http.max_queue_ms's default, then 0 = none): accepted req/s, p50
and p99 of the accepted (200) requests ("ok"), the share shed (503), and a line naming the
saturating client count (the fewest reaching 95% of the peak) and whether the accepted p99
stays under 250 ms at 4x it. Plus a trivial echo deployment's HTTP p50
(Serve's own overhead) and the resident memory of the Ray + Serve processes. Everything
binds 127.0.0.1 on free ports and is shut down at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def forward_ms(
    bundle: Path, batch: int = 1, n: int = 60, threads: int = 1, precision: str = "float32"
) -> float:
    """p50 of the served model's forward on `batch` stacked windows, with a replica's thread count."""
    from megdecode.serve.model import load_served_model

    torch.set_num_threads(threads)
    m = load_served_model(str(bundle), precision=precision)
    c, t = m.shape
    x = np.random.default_rng(0).standard_normal((batch, c, t)).astype(np.float32)
    s = np.zeros(batch, np.int64)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        m.forward(x, s)
        times.append((time.perf_counter() - start) * 1e3)
    return pct(times[5:], 50)


SMOKE_MODEL = {
    "hidden_channels": 64,
    "merger_channels": 64,
    "fourier_freqs": 8,
    "projection_hidden": 64,
    "backbone_dim": 64,
    "depth": 2,
}  # the middle of search_spaces/smoke.yaml


def synthetic_bundle(size: str, out: Path) -> Path:
    """An untrained bundle of `size` ("paper" or "demo") with every field serving reads,
    the stream's included (causal preprocessing, per-subject scalers, native rate)."""
    from megdecode.bundle import ModelBundle
    from megdecode.bundle_fields import FitRecord, GalleryMeta, LatentPart, LossState, SubjectScaler
    from megdecode.bundle_io import save_bundle
    from megdecode.data.preprocess import PreprocessConfig
    from megdecode.models.brain import BrainConfig, BrainModule

    paper = size == "paper"
    n_ch, n_sub, latent_dim, gallery = 272, 4, (768 if paper else 256), 200
    tmin, tmax, raw_sfreq = (-0.5, 1.0, 1200.0) if paper else (0.0, 0.6, 240.0)
    n_times = int(round((tmax - tmin) * 120.0)) + 1
    shape = {"n_channels": n_ch, "n_times": n_times, "n_subjects": n_sub, "out_dim": latent_dim}
    cfg = BrainConfig(**shape) if paper else BrainConfig(**shape, **SMOKE_MODEL)
    rng = np.random.default_rng(0)
    pos2d = rng.uniform(0.05, 0.95, (n_ch, 2)).astype(np.float32)
    torch.manual_seed(0)
    model = BrainModule(cfg, pos2d).eval()
    subjects = [f"{i + 1:02d}" for i in range(n_sub)]
    scaler = SubjectScaler(np.zeros(n_ch), np.full(n_ch, 1e-12), raw_sfreq=raw_sfreq)
    b = ModelBundle(  # untrained, for latency benchmarks: τ at its initial value, no training data
        model_config=cfg.to_flat_dict(),
        state_dict=model.state_dict(),
        loss=LossState(float(np.log(1 / 0.07)), learned=True),
        tmin=tmin,
        tmax=tmax,
        sfreq=120.0,
        n_times=n_times,
        ch_names=[f"MEG{i:03d}" for i in range(n_ch)],
        pos2d=pos2d,
        subjects=subjects,
        latent_name="synthetic",
        latent_parts=[LatentPart("synthetic", latent_dim)],
        latent_mean=np.zeros(latent_dim, np.float32),
        latent_std=np.ones(latent_dim, np.float32),
        gallery=rng.standard_normal((gallery, latent_dim)).astype(np.float32),
        gallery_ids=np.arange(gallery),
        gallery_meta=GalleryMeta(tuple(f"c{i}" for i in range(gallery)), ("",) * gallery),
        fit_config=FitRecord({}),
        preprocess=PreprocessConfig(filter_phase="causal"),
        scalers={s: scaler for s in subjects},
    )
    return save_bundle(b, out)


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
    return out[5:]


def saturate(
    url: str, body: bytes, headers: dict[str, str], seconds: float, clients: int = 32
) -> float:
    """Requests/s with `clients` closed-loop clients; 503s are not counted."""
    stop = time.perf_counter() + seconds

    def loop(_: int) -> int:
        session, ok = requests.Session(), 0
        while time.perf_counter() < stop:
            ok += session.post(url, data=body, headers=headers, timeout=60).status_code == 200
        return ok

    with cf.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(loop, range(clients))) / seconds


def saturate_handle(
    app: str, window: np.ndarray, subject: str, seconds: float, clients: int = 32
) -> float:
    """Decodes/s of the BrainDecoder pool called through its DeploymentHandle (no HTTP, no ingress)."""
    from ray import serve

    from megdecode.serve.decoder import inline_parts

    handle = serve.get_deployment_handle("BrainDecoder", app)
    parts = inline_parts(window)  # as the ingress sends it
    handle.decode_parts.remote(subject, 5, *parts).result()
    stop = time.perf_counter() + seconds

    def loop(_: int) -> int:
        ok = 0
        while time.perf_counter() < stop:
            ok += "latent" in handle.decode_parts.remote(subject, 5, *parts).result()
        return ok

    with cf.ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(loop, range(clients))) / seconds


def stream(
    ws_url: str, subject: str, n_channels: int, sfreq: float, seconds: float, realtime: bool
) -> dict[str, float]:
    """Synthetic raw signal through WS /v1/stream, one stride per chunk: decodes/s and per-decode latency.

    realtime: chunks paced at the signal's rate (a live recording); else closed loop, the
    next chunk once the previous one's decode arrived (the sustained maximum).
    """
    from websockets.sync.client import connect

    rng = np.random.default_rng(0)
    decodes, latencies, forwards = 0, [], []

    def take(timeout: float) -> bool:
        nonlocal decodes
        msg = json.loads(ws.recv(timeout=timeout))
        if msg["type"] == "decode":
            decodes += 1
            latencies.append(msg["latency_ms"] / msg["batch"])
            forwards.append(msg["forward_ms"] / msg["batch"])
        return msg["type"] == "decode"

    with connect(ws_url, max_size=2**24, max_queue=None) as ws:
        ws.send(json.dumps({"subject": subject}))
        ready = json.loads(ws.recv(timeout=60))
        stride = ready["stride_samples"]
        warm = int(2 * sfreq)  # fill the first window
        ws.send((rng.standard_normal((n_channels, warm)) * 1e-12).astype("<f4").tobytes())
        while take(60) and decodes < 2:
            pass
        while True:  # the warm-up chunk made many windows ready: let their decodes drain first
            try:
                take(1.0)
            except TimeoutError:
                break
        decodes, latencies, forwards = 0, [], []
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            ws.send((rng.standard_normal((n_channels, stride)) * 1e-12).astype("<f4").tobytes())
            sent += 1
            if realtime:
                while True:  # read what has arrived
                    try:
                        take(0)
                    except TimeoutError:
                        break
                time.sleep(max(0.0, start + sent * stride / sfreq - time.perf_counter()))
            else:
                while not take(60):
                    pass
        elapsed = time.perf_counter() - start
        ws.send(json.dumps({"type": "end"}))
        while json.loads(ws.recv(timeout=120))["type"] != "end":
            pass
    return {
        "decodes_per_s": decodes / elapsed,
        "p50_ms": pct(latencies, 50),
        "needed_per_s": sfreq / stride,
        "forward_p50_ms": pct(forwards, 50),
    }


def clients_run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    warmup: float,
    honor_retry_after: bool,
) -> list[tuple[float, int, float, str | None]]:
    """`clients` closed-loop aiohttp clients for warmup + seconds: (start, status, ms, Retry-After) of
    the requests started after the warm-up. A client that gets a 503 waits Retry-After seconds
    when `honor_retry_after`, else sends the next request at once (the worst case for shedding)."""
    import asyncio

    import aiohttp

    async def main() -> list[tuple[float, int, float, str | None]]:
        out: list[tuple[float, int, float, str | None]] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        begin, stop = t0 + warmup, t0 + warmup + seconds
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=timeout
        ) as session:

            async def client() -> None:
                while loop.time() < stop:
                    start = loop.time()
                    try:
                        async with session.post(url, data=body, headers=headers) as r:
                            await r.read()
                            status, retry = r.status, r.headers.get("retry-after")
                    except (aiohttp.ClientError, TimeoutError):
                        status, retry = 0, None
                    if start >= begin:
                        out.append((start - begin, status, (loop.time() - start) * 1e3, retry))
                    if status == 503 and honor_retry_after:
                        await asyncio.sleep(float(retry or 1))

            await asyncio.gather(*(client() for _ in range(clients)))
        return out

    return asyncio.run(main())


def load_curve(
    url: str,
    body: bytes,
    headers: dict[str, str],
    levels: list[int],
    seconds: float,
    honor_retry_after: bool,
) -> list[dict[str, float]]:
    """Per client count: accepted req/s, p50/p99 of accepted, share shed (503), other failures, the
    slowest 503 and whether every 503 carried Retry-After."""
    rows = []
    for n in levels:
        runs = clients_run(url, body, headers, n, seconds, 1.0, honor_retry_after)
        ok = [ms for _, st, ms, _ in runs if st == 200]
        shed = [(ms, ra) for _, st, ms, ra in runs if st == 503]
        rows.append(
            {
                "clients": n,
                "req_s": len(ok) / seconds,
                "p50": pct(ok, 50),
                "p99": pct(ok, 99),
                "shed": len(shed) / max(1, len(runs)),
                "other": sum(st not in (200, 503) for _, st, _, _ in runs),
                "shed_max_ms": max((ms for ms, _ in shed), default=float("nan")),
                "retry_after": all(ra for _, ra in shed),
            }
        )
    return rows


def curve_table(title: str, rows: list[dict[str, float]]) -> str:
    lines = [
        title,
        f"{'clients':>7}  {'req/s':>7}  {'p50 ok':>7}  {'p99 ok':>7}  {'shed':>6}  {'503 max ms':>10}"
        f"  {'other':>5}  Retry-After on every 503",
    ]
    for r in rows:
        lines.append(
            f"{r['clients']:>7}  {r['req_s']:>7.1f}  {r['p50']:>7.1f}  {r['p99']:>7.1f}  {r['shed']:>6.1%}  "
            f"{r['shed_max_ms']:>10.1f}  {r['other']:>5}  {'yes' if r['retry_after'] else 'NO'}"
        )
    return "\n".join(lines)


P99_GOAL_MS = 250.0  # accepted requests at 4x the saturating client count


def saturation_line(rows: list[dict[str, float]]) -> str:
    """The saturating client count (the fewest reaching 95% of the peak accepted req/s) and
    whether accepted p99 < P99_GOAL_MS holds at 4x it (the first measured count >= 4x)."""
    peak = max(r["req_s"] for r in rows)
    sat = int(next(r["clients"] for r in rows if r["req_s"] >= 0.95 * peak))
    at = next((r for r in rows if r["clients"] >= 4 * sat), None)
    head = f"saturates at {sat} clients (>= 95% of the peak {peak:.1f} req/s)"
    if at is None:
        return f"{head}; 4x = {4 * sat} clients not measured (add it to --curve)"
    met = at["p99"] < P99_GOAL_MS  # NaN (nothing accepted) is not met
    return (
        f"{head}; at {int(at['clients'])} clients (>= 4x) accepted p99 {at['p99']:.1f} ms: "
        f"{'met' if met else 'NOT met'} (goal < {P99_GOAL_MS:g} ms), {at['shed']:.1%} shed"
    )


def bench_curve(
    label: str, bundle: Path, port: int, url: str, args: argparse.Namespace
) -> list[str]:
    """The app with the shipped defaults (resources derived from this cluster) under 1..128
    clients, once per queue budget of --queue-ms (http.max_queue_ms; 0 = none)."""
    from ray import serve

    from megdecode.bundle_io import load_bundle
    from megdecode.serve.app import build_app
    from megdecode.serve.config import ServeConfig

    b = load_bundle(bundle)
    x = np.random.default_rng(0).standard_normal((len(b.ch_names), b.n_times)).astype(np.float32)
    headers = {
        "content-type": "application/octet-stream",
        "x-shape": f"{x.shape[0]},{x.shape[1]}",
        "x-subject": b.subjects[0],
    }
    levels = [int(v) for v in args.curve.split(",")]
    tables = []
    for budget in queue_budgets(args.queue_ms):
        http = {"port": port, "max_queue_ms": budget}
        http |= {"max_decodes_in_flight": args.in_flight} if args.in_flight else {}
        cfg = ServeConfig.from_mapping({"http": http, "decoder": {"model": str(bundle)}})
        serve.run(build_app(cfg, token=""), name="megdecode", route_prefix="/")
        d, h = cfg.decoder, cfg.http
        limits = (
            f"queue budget {f'{budget:g} ms' if budget else 'off'}; ingress admits "
            f"{cfg.decode_limit()} decodes, decoder max_ongoing {d.max_ongoing_requests} + queued "
            f"{d.max_queued_requests}, batch {d.max_batch_size}; ingress max_ongoing "
            f"{h.max_ongoing_requests} + queued {h.max_queued_requests}"
        )
        for honor in (True, False):
            rows = load_curve(
                f"{url}/v1/decode", x.tobytes(), headers, levels, args.curve_seconds, honor
            )
            how = "clients wait Retry-After after a 503" if honor else "clients retry a 503 at once"
            title = f"[{label}] /v1/decode load curve, {how} ({limits})"
            tables.append(curve_table(title, rows) + "\n" + saturation_line(rows))
        serve.delete("megdecode")
    return tables


def queue_budgets(text: str) -> list[float]:
    """--queue-ms: comma-separated budgets in ms; "default" is http.max_queue_ms's default."""
    from megdecode.serve.config import HttpConfig

    out = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        value = HttpConfig().max_queue_ms if item == "default" else float(item)
        if not value >= 0:
            raise SystemExit(f"--queue-ms: budgets >= 0 (0 = none), got {item!r}")
        out.append(value)
    return out


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
            line = next(
                x
                for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("VmRSS")
            )
            total += int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            continue
    return total / 2**20


def bench_model(
    label: str,
    bundle: Path,
    url: str,
    port: int,
    echo_p50: float,
    args: argparse.Namespace,
    rows: list[tuple[str, str, str]],
) -> None:
    """All rows of one model size on the running Serve at `url`."""
    from ray import serve

    from megdecode.bundle_io import load_bundle
    from megdecode.serve.app import build_app
    from megdecode.serve.config import ServeConfig

    b = load_bundle(bundle)
    x = np.random.default_rng(0).standard_normal((len(b.ch_names), b.n_times)).astype(np.float32)
    body = x.tobytes()
    headers = {
        "content-type": "application/octet-stream",
        "x-shape": f"{x.shape[0]},{x.shape[1]}",
        "x-subject": b.subjects[0],
    }
    d = ServeConfig().decoder
    B, threads = d.max_batch_size, d.torch_threads
    floor, floor_b = (
        forward_ms(bundle, threads=threads),
        forward_ms(bundle, B, n=20, threads=threads),
    )
    bound = B * floor / floor_b
    rows.append((f"[{label}] forward, 1 window (floor), {threads} thread", f"{floor:.2f} ms", ""))
    rows.append(
        (
            f"[{label}] forward, {B} windows stacked",
            f"{floor_b:.2f} ms",
            f"{floor_b / B:.2f} ms per window",
        )
    )
    rows.append(
        (
            f"[{label}] batching bound {B}*f(1)/f({B}), in-process",
            f"{bound:.2f}x",
            f"the most @serve.batch can give here (goal 3x {'reachable' if bound >= 3 else 'NOT reachable'})",
        )
    )
    bf1, bfb = (
        forward_ms(bundle, n_, n=m_, threads=threads, precision="bfloat16")
        for n_, m_ in ((1, 60), (B, 20))
    )
    rows.append(
        (
            f"[{label}] forward bfloat16 (opt-in), 1 / {B} windows",
            f"{bf1:.2f} / {bfb:.2f} ms",
            f"{floor / bf1:.2f}x / {floor_b / bfb:.2f}x faster than float32; bound {B * bf1 / bfb:.2f}x",
        )
    )

    def deploy(batch: int, copy: str) -> None:
        decoder = {
            "model": str(bundle),
            "num_cpus": 0,
            "max_batch_size": batch,
            "ingress_copy": copy,
            "max_queued_requests": 1000,
            "max_ongoing_requests": 64,
        }
        if args.batch_wait is not None:
            decoder["batch_wait_timeout_s"] = args.batch_wait
        cfg = ServeConfig.from_mapping(
            {"http": {"port": port, "num_cpus": 0, "request_timeout_s": 60}, "decoder": decoder}
        )
        serve.run(build_app(cfg, token=""), name="megdecode", route_prefix="/")

    decode_url = f"{url}/v1/decode"
    goal = echo_p50 + floor + 2
    for copy, hops in (("stream", "pool, 2 hops"), ("all", "ingress copy, 1 hop")):
        deploy(B, copy)
        lat = paced(decode_url, body, headers, args.requests, args.rate)
        rows.append(
            (
                f"[{label}] /v1/decode p50 @ {args.rate:g}/s, {hops}",
                f"{pct(lat, 50):.2f} ms",
                f"goal <= {goal:.2f} ms: {'met' if pct(lat, 50) <= goal else 'NOT met'}",
            )
        )
        rows.append(
            (f"[{label}] /v1/decode p99 @ {args.rate:g}/s, {hops}", f"{pct(lat, 99):.2f} ms", "")
        )
        if copy == "all":
            local = saturate(decode_url, body, headers, args.seconds)
            rows.append(
                (
                    f"[{label}] throughput via HTTP, {hops}, @serve.batch {B}",
                    f"{local:.1f} req/s",
                    "",
                )
            )
        if copy == "stream":
            batched = saturate(decode_url, body, headers, args.seconds)
            batched_handle = saturate_handle("megdecode", x, b.subjects[0], args.seconds)
            scaler = b.scalers.get(b.subjects[0])
            sfreq = float(scaler.raw_sfreq or 1200.0) if scaler is not None else 1200.0
            ws_url = url.replace("http", "ws") + "/v1/stream"
            ws = stream(ws_url, b.subjects[0], len(b.ch_names), sfreq, args.seconds, True)
            fast = stream(ws_url, b.subjects[0], len(b.ch_names), sfreq, args.seconds, False)
    deploy(1, "stream")
    single = saturate(decode_url, body, headers, args.seconds)
    single_handle = saturate_handle("megdecode", x, b.subjects[0], args.seconds)
    for via, on, off in (("HTTP", batched, single), ("handle", batched_handle, single_handle)):
        rows.append((f"[{label}] throughput via {via}, @serve.batch {B}", f"{on:.1f} req/s", ""))
        rows.append(
            (
                f"[{label}] throughput via {via}, no batching",
                f"{off:.1f} req/s",
                f"ratio {on / off:.2f}x vs bound {bound:.2f}x (goal >= 3x: {'met' if on >= 3 * off else 'NOT met'})",
            )
        )
    rows.append(
        (
            f"[{label}] stream, real-time paced",
            f"{ws['decodes_per_s']:.1f} decodes/s",
            f"needs {ws['needed_per_s']:.1f}/s",
        )
    )
    rows.append(
        (f"[{label}] stream, as fast as possible", f"{fast['decodes_per_s']:.1f} decodes/s", "")
    )
    rows.append(
        (
            f"[{label}] stream per-decode latency p50",
            f"{ws['p50_ms']:.2f} ms",
            f"goal <= {floor + 3:.2f} ms: {'met' if ws['p50_ms'] <= floor + 3 else 'NOT met'}",
        )
    )
    rows.append(
        (
            f"[{label}] stream, the forward inside it p50",
            f"{ws['forward_p50_ms']:.2f} ms",
            f"vs the floor's {floor:.2f} ms back to back: a forward every stride starts from cold caches",
        )
    )
    serve.delete("megdecode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", choices=("paper", "demo", "both"), default="both")
    parser.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="a trained bundle to time as the demo size (default: an untrained smoke-size model)",
    )
    parser.add_argument(
        "--paper-size", action="store_true", help=argparse.SUPPRESS
    )  # older spelling of the default
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="fixed request rate for p50/p99")
    parser.add_argument("--seconds", type=float, default=10.0, help="per saturation / stream phase")
    parser.add_argument(
        "--batch-wait",
        type=float,
        default=None,
        help="@serve.batch wait (s); default: the config's",
    )
    parser.add_argument(
        "--curve", default="1,2,4,8,16,32,64,128", help="client counts of the load curve"
    )
    parser.add_argument(
        "--curve-seconds", type=float, default=5.0, help="per client count of the curve"
    )
    parser.add_argument(
        "--curve-only", action="store_true", help="only the load curve (of the demo size)"
    )
    parser.add_argument(
        "--queue-ms",
        default="default,0",
        help="http.max_queue_ms of the curve's app, comma-separated: one curve each "
        '("default" = the config\'s; 0 = no budget)',
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=0,
        help="http.max_decodes_in_flight of the curve's app (default: the config's)",
    )
    args = parser.parse_args()
    if args.curve_only and args.model_size == "both":
        args.model_size = "demo"

    import ray
    from ray import serve
    from starlette.requests import Request

    from megdecode.raycluster import init_ray
    from megdecode.serve.app import free_port

    rows: list[tuple[str, str, str]] = []
    init_ray(num_cpus=os.cpu_count())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    tmp = tempfile.TemporaryDirectory()
    try:

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class Echo:
            async def __call__(self, request: Request) -> bytes:
                await request.body()
                return b"ok"

        serve.run(Echo.bind(), name="echo", route_prefix="/echo")
        from megdecode.bundle_io import load_bundle

        sizes = ("paper", "demo") if args.model_size == "both" else (args.model_size,)
        bundles = {}
        for size in sizes:
            if size == "demo" and args.bundle is not None:
                bundles["demo: " + args.bundle.name] = args.bundle
            else:
                bundles[f"{size}, untrained"] = synthetic_bundle(size, Path(tmp.name) / size)
        b = load_bundle(next(iter(bundles.values())))
        body = np.zeros((len(b.ch_names), b.n_times), np.float32).tobytes()
        echo = paced(
            f"{url}/echo",
            body,
            {"content-type": "application/octet-stream"},
            args.requests,
            args.rate,
        )
        echo_p50 = pct(echo, 50)
        rows.append(
            ("echo deployment HTTP p50", f"{echo_p50:.2f} ms", "Serve's own overhead (one hop)")
        )
        serve.delete("echo")
        curves: list[str] = []
        for label, path in bundles.items():
            if not args.curve_only:
                bench_model(label, path, url, port, echo_p50, args, rows)
            if label.startswith("demo") and args.curve:
                curves += bench_curve(label, path, port, url, args)
        rows.append(
            (
                "resident memory, Ray + Serve processes",
                f"{ray_rss_mb():.0f} MB",
                "after the last deployment",
            )
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    for table in curves:
        print(table, end="\n\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


if __name__ == "__main__":
    main()
