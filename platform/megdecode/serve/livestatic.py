"""The live page's own files (HTML, JS, CSS) and the headers they are served with.

The page (``serve/static/live.*``, plain HTML/JS/CSS: no build step, no CDN) is read from
the package once per file and served with a content security policy that keeps it to its
own origin.
"""

from __future__ import annotations

import html
import logging
from functools import lru_cache
from importlib import resources

from fastapi.responses import Response

from megdecode.serve.errors import ApiError

logger = logging.getLogger(__name__)

STATIC = {
    "live.html": "text/html; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}

# The page loads only its own files and talks only to its own origin (WS included).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=len(STATIC))
def _static_bytes(name: str) -> bytes:
    return (resources.files("megdecode.serve") / "static" / name).read_bytes()


def static_file(name: str, base: str = "") -> Response:
    """A page file; `base` (the app's root path) fills ``__BASE__`` in the HTML."""
    if name not in STATIC:
        raise ApiError(404, "not_found", f"no page file {name!r}")
    body = _static_bytes(name)
    if name.endswith(".html"):
        body = body.replace(b"__BASE__", html.escape(base.rstrip("/"), quote=True).encode())
    return Response(body, media_type=STATIC[name], headers=PAGE_HEADERS)
