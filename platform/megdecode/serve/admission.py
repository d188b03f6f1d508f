"""Who and how much the ingress lets in: the token, the in-flight bounds, the request body.

The token (when MEGDECODE_API_TOKEN is set where the app is built) arrives as its sha256
in the user config, never in clear, and is compared in constant time; a browser, which
cannot set headers on a WebSocket, offers it as a subprotocol (`ws_auth`). Overload is
shed at once rather than queued: beyond ``http.max_decodes_in_flight`` /v1/decode answers
503 before its body is read, and the ingress' own model copy takes no more requests than
the decoder pool would hold. A request that waited past ``http.max_queue_ms`` is shed too
(`megdecode.serve.queue_budget`): here once its body is read, in the decoder when its batch
is taken. Every failure of a model deployment (``max_queued_requests`` reached, a timeout, a
replica that died mid-request, a shed request) becomes a 503 with Retry-After, so no client
waits forever.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any

import numpy as np
from fastapi import Request
from ray.serve.exceptions import BackPressureError

from megdecode.serve.channels import CHANNELS_HEADER, channels_from_header, channels_value
from megdecode.serve.config import ServeConfig
from megdecode.serve.errors import ApiError, unavailable
from megdecode.serve.queue_budget import Deadline, shed_error
from megdecode.serve.validate import (
    JSON_TYPES,
    OCTET_TYPES,
    media_type,
    parse_json_body,
    window_from_bytes,
    window_from_json,
)

logger = logging.getLogger(__name__)

WS_PROTOCOL = "megdecode"  # the subprotocol the page asks for and the ingress accepts
TOKEN_PROTOCOL = (
    "bearer."  # + the token, base64url without padding (a subprotocol is an HTTP token)
)


def token_digest(token: str | None) -> str:
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def ws_auth(headers: Mapping[str, str]) -> tuple[Mapping[str, str], str | None]:
    """(headers to authorize, subprotocol to accept) of a WebSocket handshake.

    A client that sets Authorization / X-Api-Token keeps them; a browser offers
    ``megdecode, bearer.<base64url token>`` and gets an Authorization header built from it.
    The accepted subprotocol is ``megdecode`` when offered (never the token's).
    """
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    protocol = WS_PROTOCOL if WS_PROTOCOL in offered else None
    if headers.get("authorization") or headers.get("x-api-token"):
        return headers, protocol
    for item in offered:
        if item.startswith(TOKEN_PROTOCOL):
            token = _b64url(item[len(TOKEN_PROTOCOL) :])
            return ({"authorization": f"Bearer {token}"} if token else {}), protocol
    return {}, protocol


def _b64url(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


class Admission:
    """Per ingress replica: the token check, the in-flight counters and the 503 mapping."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.token_sha256 = ""
        d = cfg.decoder
        self.local_limit = (
            d.max_ongoing_requests + d.max_queued_requests if d.max_queued_requests >= 0 else None
        )
        self.local_inflight = 0
        self.decode_limit, self.decodes_inflight = cfg.decode_limit(), 0

    def authorize(self, headers: Any) -> None:
        """Raise a 401 unless the headers carry the token (when the app has one)."""
        if not self.token_sha256:
            return
        auth = headers.get("authorization", "")
        token = (
            auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-token", "")
        )
        if not token or not hmac.compare_digest(token_digest(token), self.token_sha256):
            raise ApiError(
                401,
                "unauthorized",
                "a valid token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    async def call(self, response: Awaitable[Any], what: str, timeout: float | None = None) -> Any:
        """Await a handle call; overload, timeout and dead replicas become 503s."""
        retry = self.cfg.http.retry_after_s
        try:
            result = await asyncio.wait_for(response, timeout or self.cfg.http.request_timeout_s)
        except BackPressureError:
            raise unavailable(
                "overloaded", f"the {what} is at capacity; retry later", retry
            ) from None
        except TimeoutError:
            raise unavailable("timeout", f"the {what} did not answer in time", retry) from None
        except Exception as exc:  # replica died, deployment unavailable, ...
            logger.warning("%s call failed: %s", what, type(exc).__name__)
            raise unavailable(
                f"{what}_unavailable", f"the {what} failed to answer; retry", retry
            ) from None
        if isinstance(result, dict) and "error" in result and "status" in result:
            status, headers = int(result["status"]), dict(result.get("headers") or {})
            if status == 503:  # the deployment does not know http.retry_after_s
                headers.setdefault("Retry-After", str(max(1, int(retry))))
            raise ApiError(status, str(result["error"]), str(result["detail"]), headers)
        return result

    async def local_call(self, response: Awaitable[Any]) -> Any:
        """A decode on the ingress' copy, bounded like the pool: beyond the limit a 503."""
        if self.local_limit is not None and self.local_inflight >= self.local_limit:
            # Closed, as it is never awaited: no "coroutine was never awaited" warning.
            getattr(response, "close", lambda: None)()
            raise unavailable(
                "overloaded", "the decoder is at capacity; retry later", self.cfg.http.retry_after_s
            )
        self.local_inflight += 1
        try:
            return await self.call(response, "decoder")
        finally:
            self.local_inflight -= 1

    def deadline(self) -> Deadline:
        """The stamp of a /v1/decode request, taken when its route starts."""
        return Deadline.start(self.cfg.http.max_queue_ms)

    def check_deadline(self, deadline: Deadline) -> None:
        """A 503 ``overloaded`` when the request already waited past http.max_queue_ms."""
        if deadline.expired():
            exc = shed_error(deadline.age_ms(), deadline.budget_ms, "before the ingress sent it on")
            raise unavailable(exc.error, exc.detail, self.cfg.http.retry_after_s)

    @contextlib.contextmanager
    def decode_slot(self) -> Iterator[None]:
        """One of http.max_decodes_in_flight, else a 503 at once (before the body is read)."""
        if self.decodes_inflight >= self.decode_limit:
            raise unavailable(
                "overloaded", "the decoder is at capacity; retry later", self.cfg.http.retry_after_s
            )
        self.decodes_inflight += 1
        try:
            yield
        finally:
            self.decodes_inflight -= 1

    async def body(self, request: Request) -> bytes:
        """The request body, refused with a 413 as soon as it exceeds http.max_body_bytes."""
        limit = self.cfg.http.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def window(
        self, request: Request
    ) -> tuple[str | int, np.ndarray, tuple[str, ...] | None]:
        """(subject, (C, T) window, its channel names or None) of a JSON or float32-bytes
        request body; the names come from the body's "channels" or the X-Channels header."""
        kind = media_type(request.headers.get("content-type"))
        if kind not in JSON_TYPES + OCTET_TYPES:
            raise ApiError(
                415, "unsupported_media_type", "send application/json or application/octet-stream"
            )
        body = await self.body(request)
        if kind in OCTET_TYPES:
            subject, data = window_from_bytes(body, request.headers)
            return subject, data, channels_from_header(request.headers.get(CHANNELS_HEADER))
        doc = parse_json_body(body)
        subject, data = window_from_json(doc)
        return subject, data, channels_value(doc.get("channels"))
