"""What the live page shows after it has replayed a recording for a while: decodes per second,
per-decode latency (server p50/p99, end to end p50) and the top-5 hit rate, read from the page
itself in headless Chromium, plus a screenshot.

Needs a running server (`make serve` after `make demo`) and Debian's chromium; playwright
drives it and never downloads a browser.

Usage: python benchmarks/live_page.py [--url http://127.0.0.1:8000] [--seconds 60]
                                      [--screenshot docs/live_page.png] [--token TOKEN]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

TILES = {  # element id -> what the page computes there
    "decodes": "decodes",
    "rate": "decodes/s",
    "hitrate": "top-5 hit rate",
    "hits": "hits / scored onsets",
    "chance": "chance",
    "lat-p50": "server latency p50 (ms)",
    "lat-p99": "server latency p99 (ms)",
    "e2e-p50": "end-to-end p50 (ms)",
    "clock": "signal sent (s)",
}


def read_tiles(page: Any) -> dict[str, str]:
    """The text of every stats tile, as the page shows it."""
    return {key: page.locator(f"#{key}").inner_text().strip() for key in TILES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=60.0, help="replay time before reading")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--token", default="", help="the API token, when the server has one")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1320})
        page.goto(f"{args.url}/live" + (f"#token={args.token}" if args.token else ""))
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            state = page.locator("#status").get_attribute("data-state")
            if state == "error":
                raise SystemExit(
                    f"the page reports an error: {page.locator('#status').inner_text()}"
                )
            time.sleep(1.0)
        tiles = read_tiles(page)
        if args.screenshot:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.screenshot), full_page=True)
        browser.close()
    print(f"live page at {args.url}/live after {args.seconds:.0f} s of replay:")
    for key, label in TILES.items():
        print(f"  {label:<26} {tiles[key]}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
