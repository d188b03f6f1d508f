"""The demo's client honours Retry-After: a 503 is retried later, never a crash of `make demo`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from megdecode.serve.demo import StillOverloadedError, post_honouring_retry_after


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP server that answers the statuses queued in `plan` (then 200)."""
    plan: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status = plan.pop(0) if plan else 200
            body = b'{"error": "overloaded"}' if status == 503 else b'{"ok": true}'
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "2")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/decode", plan
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_503_is_retried_after_its_retry_after(server: tuple[str, list[int]]) -> None:
    url, plan = server
    plan.extend([503, 503])
    waits: list[float] = []
    r, shed = post_honouring_retry_after(requests.Session(), url, data=b"x", sleep=waits.append)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert shed == 2 and waits == [2.0, 2.0]


def test_other_errors_are_returned_not_retried(server: tuple[str, list[int]]) -> None:
    url, plan = server
    plan.extend([422, 503])
    r, shed = post_honouring_retry_after(requests.Session(), url, data=b"x", sleep=lambda s: None)
    assert r.status_code == 422 and shed == 0 and plan == [503]


def test_gives_up_after_the_attempts_naming_the_last_answer(
    server: tuple[str, list[int]],
) -> None:
    url, plan = server
    plan.extend([503] * 3)
    waits: list[float] = []
    with pytest.raises(StillOverloadedError, match="503 to 3 attempts.*overloaded"):
        post_honouring_retry_after(
            requests.Session(), url, attempts=3, data=b"x", sleep=waits.append
        )
    assert waits == [2.0, 2.0]  # no wait after the last attempt
