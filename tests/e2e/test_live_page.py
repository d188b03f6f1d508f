"""GET /live in a real browser: headless Chromium (Debian's package) driven by Playwright.

The app serves a tiny bundle trained on the tiny twin's causal store, with a token set;
the page replays a twin run through WS /v1/stream at real-time pace. Checked in the DOM:
decodes arrive and keep arriving, top-5 thumbnails render, the latency histogram fills,
decodes at image onsets are scored; without the token the page's socket is refused.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "serve"))
from serve_helpers import train_bundle  # noqa: E402

pytestmark = [
    pytest.mark.serve,
    pytest.mark.ray,
    pytest.mark.slow,
]  # ~20 s data + fit, ~30 s Serve, ~40 s pages

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None
)
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary (Debian: apt-get install -y chromium); the live page needs a browser",
        allow_module_level=True,
    )

TOKEN = "live-page-token"


@pytest.fixture(scope="module")
def live_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin with a causal store (what the stream computes) and its BIDS next to it."""
    from megdecode.data.build import build_epoch_store
    from megdecode.data.preprocess import PreprocessConfig

    root = tmp_path_factory.mktemp("live_run")
    build_epoch_store(tiny_run / "bids", root / "store", PreprocessConfig(filter_phase="causal"))
    shutil.copytree(tiny_run / "latents", root / "latents")
    (root / "bids").symlink_to(tiny_run / "bids")
    return root


@pytest.fixture(scope="module")
def live_url(live_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import ray
    from ray import serve

    from megdecode.raycluster import init_ray
    from megdecode.serve.app import free_port, start
    from megdecode.serve.config import ServeConfig

    bundle = train_bundle(live_run, tmp_path_factory.mktemp("live_bundle") / "b0")
    init_ray(num_cpus=2)
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "megdecode-live",
            "http": {"port": free_port(), "num_cpus": 0.1},
            "decoder": {"model": str(bundle), "num_cpus": 0.2},
        }
    )
    try:
        yield start(cfg, token=TOKEN, store=str(live_run / "store"))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def poll(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Read until ok(value) (page.wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {timeout} s"
        time.sleep(0.25)


def dom(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => ({
        decodes: Number(document.getElementById('decodes').textContent),
        hits: document.getElementById('hits').textContent,
        status: document.getElementById('status').textContent,
        state: document.getElementById('status').dataset.state,
        source: document.getElementById('source').textContent,
        entries: Number(document.getElementById('latency').dataset.entries),
        thumbs: [...document.querySelectorAll('#top5 img')].filter(i => i.complete && i.naturalWidth > 0).length,
        trials: document.querySelectorAll('#trials li').length,
        trialThumbs: [...document.querySelectorAll('#trials li img')].filter(i => i.naturalWidth > 0).length,
        url: location.href,
    })""")


def test_live_page_replays_a_twin_run_and_shows_decodes_thumbnails_and_latency(
    live_url: str, browser: Any
) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_url}/live?token={TOKEN}")
    first = poll(
        lambda: dom(page), lambda d: d["decodes"] > 0 or d["state"] == "error", 90, "first decode"
    )
    assert first["state"] != "error", first
    assert "token" not in first["url"]  # taken from the URL, then dropped from the address bar
    assert first["source"].startswith("Recording:") and "sub-BIGMEG1" in first["source"]
    later = poll(
        lambda: dom(page),
        lambda d: (
            d["decodes"] >= first["decodes"] + 40
            and d["thumbs"] == 5
            and d["entries"] > 0
            and int(d["hits"].split("/")[1]) > 0
        ),
        60,
        "decodes, thumbnails, histogram, a scored trial",
    )
    assert later["trials"] >= 1 and later["trialThumbs"] >= 6, later  # seen image and its top-5
    assert not errors, errors
    page.close()


def test_without_the_token_the_page_and_its_socket_are_refused(live_url: str, browser: Any) -> None:
    import requests

    page = browser.new_page()
    page.goto(f"{live_url}/live")  # the page itself is public

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    refused = poll(lambda: dom(page), lambda d: d["state"] == "error", 30, "the page's error")
    assert (
        "401" in refused["status"]
        and "unauthorized" in refused["status"]
        and refused["decodes"] == 0
    )
    socket = """async (protocols) => await new Promise((done) => {
        const ws = new WebSocket(location.href.replace('http', 'ws').replace(/\\/live.*$/, '/v1/stream'), protocols);
        const seen = [];
        ws.onopen = () => ws.send(JSON.stringify({subject: 'BIGMEG1'}));
        ws.onmessage = (e) => { seen.push(JSON.parse(e.data)); if (seen[0].type === 'ready') ws.close(1000); };
        ws.onclose = (e) => done({code: e.code, protocol: ws.protocol, seen});
        setTimeout(() => { ws.close(); done({code: 'open', protocol: ws.protocol, seen}); }, 20000);
    })"""
    for protocols in (["megdecode"], ["megdecode", f"bearer.{b64('wrong')}"]):
        out = page.evaluate(socket, protocols)
        assert out["code"] == 1008 and [m["error"] for m in out["seen"]] == ["unauthorized"], (
            protocols,
            out,
        )
    out = page.evaluate(socket, ["megdecode", f"bearer.{b64(TOKEN)}"])
    assert out["protocol"] == "megdecode" and out["seen"][0]["type"] == "ready", out
    page.close()
    for path in (
        "/v1/live/recording",
        "/v1/live/recording/data?start=0&stop=10",
        "/v1/gallery/1.png",
    ):
        r = requests.get(live_url + path, timeout=30)
        assert r.status_code == 401 and set(json.loads(r.text)) == {"error", "detail"}, (
            path,
            r.text,
        )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    info = requests.get(f"{live_url}/v1/live/recording", headers=auth, timeout=30).json()
    r = requests.get(
        f"{live_url}/v1/live/recording/data",
        headers=auth,
        timeout=30,
        params={"subject": info["subject"], "run": info["run"], "start": 0, "stop": 30},
    )
    assert r.status_code == 200 and r.headers["x-shape"] == f"{info['n_channels']},30"
    assert len(r.content) == 4 * info["n_channels"] * 30
    assert len(info["channels"]) == info["n_channels"] and all(info["channels"])
    assert requests.get(f"{live_url}/live/live.js", timeout=30).status_code == 200
    missing = requests.get(f"{live_url}/live/secret.txt", timeout=30)
    assert missing.status_code == 404 and json.loads(missing.text)["error"] == "not_found"
