"""The HTTP/WebSocket ingress: authenticate, bound and parse requests, route to deployments.

The ingress validates and routes; with ``decoder.ingress_copy`` it also holds its own
copy of the model (same source, reloaded with the same user config as the decoder pool)
so that the stream, and for small models /v1/decode, skip the hop to a decoder replica,
which costs more than such a model's forward pass. It turns every failure into
``{"error", "detail"}`` with a 4xx/503 status (`megdecode.serve.errors`): overload of a
model deployment (``max_queued_requests``) and timeouts become 503 with Retry-After, a
replica that died mid-request becomes 503 too, so no client waits forever. The token (when
MEGDECODE_API_TOKEN is set where the app is built) arrives as its sha256 in the user
config, never in clear, and is compared in constant time.

No ``from __future__ import annotations`` here: Serve's class-based view rebuilds the
route signatures, and string annotations (``request: "Request"``) would turn the request
into a required query parameter.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from megdecode import __version__
from megdecode.serve import schemas
from megdecode.serve.config import ServeConfig
from megdecode.serve.decoder import DecoderCore, inline_parts
from megdecode.serve.errors import ApiError, install_handlers, unavailable
from megdecode.serve.jsonio import FastJSONResponse
from megdecode.serve.live import run_session, ws_close
from megdecode.serve.livepage import LivePage, static_file, ws_auth
from megdecode.serve.stream import StreamError, StreamSession
from megdecode.serve.validate import (
    JSON_TYPES,
    OCTET_TYPES,
    bounded,
    media_type,
    parse_json_body,
    subject_value,
    window_from_bytes,
    window_from_json,
)

logger = logging.getLogger(__name__)

api = FastAPI(
    title="megdecode",
    version=__version__,
    description="MEG window -> image latent, top-k gallery images and reconstructions.",
)
install_handlers(api)


def token_digest(token: str | None) -> str:
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """Routes of the app; `decoder` and `generator` are DeploymentHandles (generator may be None)."""

    def __init__(self, decoder: Any, generator: Any, config: dict[str, Any]) -> None:
        self.cfg = ServeConfig.from_flat_dict(config)
        self.decoder, self.generator = decoder, generator
        self.token_sha256 = ""
        d = self.cfg.decoder
        self.local = DecoderCore(d.to_flat_dict()) if d.ingress_copy != "none" else None
        self.local_limit = (
            d.max_ongoing_requests + d.max_queued_requests if d.max_queued_requests >= 0 else None
        )
        self.local_inflight = 0
        self.decode_limit, self.decodes_inflight = self.cfg.decode_limit(), 0
        self.live, self.store = LivePage(self.cfg.live), ""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """{token_sha256, decoder: the decoder pool's user config (for the ingress' model copy)}."""
        self.token_sha256 = str(user_config.get("token_sha256", ""))
        self.store = str((user_config.get("decoder") or {}).get("store") or "")
        if self.local is not None and user_config.get("decoder"):
            self.local.reconfigure(dict(user_config["decoder"]))

    # --- plumbing --------------------------------------------------------------------------
    def _authorize(self, headers: Any) -> None:
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

    async def _call(self, response: Awaitable[Any], what: str, timeout: float | None = None) -> Any:
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
            raise ApiError(
                int(result["status"]),
                str(result["error"]),
                str(result["detail"]),
                result.get("headers"),
            )
        return result

    async def _local_call(self, response: Awaitable[Any]) -> Any:
        """A decode on the ingress' copy, bounded like the pool: beyond the limit a 503."""
        if self.local_limit is not None and self.local_inflight >= self.local_limit:
            getattr(
                response, "close", lambda: None
            )()  # never awaited: no "coroutine was never awaited"
            raise unavailable(
                "overloaded", "the decoder is at capacity; retry later", self.cfg.http.retry_after_s
            )
        self.local_inflight += 1
        try:
            return await self._call(response, "decoder")
        finally:
            self.local_inflight -= 1

    @contextlib.contextmanager
    def _decode_slot(self) -> Iterator[None]:
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

    async def _body(self, request: Request) -> bytes:
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

    async def _window(self, request: Request) -> tuple[str | int, np.ndarray]:
        kind = media_type(request.headers.get("content-type"))
        if kind not in JSON_TYPES + OCTET_TYPES:
            raise ApiError(
                415, "unsupported_media_type", "send application/json or application/octet-stream"
            )
        body = await self._body(request)
        if kind in OCTET_TYPES:
            return window_from_bytes(body, request.headers)
        return window_from_json(parse_json_body(body))

    # --- routes ----------------------------------------------------------------------------
    @api.get("/healthz", summary="liveness: the ingress answers")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz", summary="readiness: the model is loaded", responses={503: schemas.ERRORS[503]}
    )
    async def readyz(self) -> dict[str, Any]:
        state = await self._call(self.decoder.ready.remote(), "decoder", timeout=5.0)
        if state["ready"] and self.local is not None:
            state = self.local.ready()
        if not state["ready"]:
            raise unavailable(
                "not_ready",
                state["error"] or "the model is still loading",
                self.cfg.http.retry_after_s,
            )
        return {"ready": True}

    @api.get(
        "/v1/model",
        summary="the model card",
        response_model=schemas.ModelCard,
        responses=schemas.ERRORS,
    )
    async def model_card(self, request: Request) -> Any:
        self._authorize(request.headers)
        card = await self._call(self.decoder.card.remote(), "decoder")
        if card is None:
            raise unavailable(
                "not_ready", "the model is still loading", self.cfg.http.retry_after_s
            )
        return card

    @api.post(
        "/v1/decode",
        summary="decode one MEG window",
        response_model=schemas.DecodeResponse,
        responses=schemas.ERRORS,
        openapi_extra=schemas.window_body(
            "one window, JSON or raw float32 bytes (headers X-Shape: C,T and X-Subject)"
        ),
    )
    async def decode(self, request: Request, top_k: int | None = None) -> Response:
        start = time.perf_counter()
        self._authorize(request.headers)
        k = (
            self.cfg.decoder.top_k
            if top_k is None
            else int(bounded("top_k", top_k, 1, self.cfg.decoder.max_top_k, True))
        )
        with self._decode_slot():
            subject, window = await self._window(request)
            if self.local is not None and self.cfg.decoder.ingress_copy == "all":
                result = await self._local_call(self.local.decode(window, subject, k))
            else:
                result = await self._call(
                    self.decoder.decode_parts.remote(subject, k, *inline_parts(window)), "decoder"
                )
        result["timing"]["server_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        return FastJSONResponse(result)

    @api.post(
        "/v1/reconstruct",
        summary="generate an image from one MEG window",
        responses={
            200: {"content": {"image/png": {}}, "model": schemas.ReconstructJSON},
            **schemas.ERRORS,
        },
        openapi_extra=schemas.window_body("one window, as for /v1/decode"),
    )
    async def reconstruct(
        self,
        request: Request,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        format: str = "png",
    ) -> Response:
        start = time.perf_counter()
        self._authorize(request.headers)
        g = self.cfg.generator
        steps_ = int(
            bounded("steps", g.default_steps if steps is None else steps, 1, g.max_steps, True)
        )
        guidance_ = float(
            bounded(
                "guidance",
                g.default_guidance if guidance is None else guidance,
                0.0,
                g.max_guidance,
            )
        )
        seed_ = int(bounded("seed", seed, 0, 2**31 - 1, True))
        if format not in ("png", "json"):
            raise ApiError(422, "invalid_option", "format must be 'png' or 'json'")
        if self.generator is None:
            raise unavailable(
                "generator_disabled", "no generator is configured (generator.weights)", 60
            )
        subject, window = await self._window(request)
        decoded = await self._call(
            self.decoder.generation_latent.remote(window, subject), "decoder"
        )
        result = await self._call(
            self.generator.generate.remote(decoded["latents"], steps_, guidance_, seed_),
            "generator",
            g.timeout_s,
        )
        ms = round((time.perf_counter() - start) * 1e3, 3)
        if format == "json":
            images = [base64.b64encode(p).decode() for p in result["png"]]
            return JSONResponse(
                {"images": images, "model": decoded["model"], "timing": {"server_ms": ms}}
            )
        return Response(result["png"][0], media_type="image/png", headers={"X-Server-Ms": str(ms)})

    @api.websocket("/v1/stream")
    async def stream(self, ws: WebSocket) -> None:
        """Start message {subject, sfreq?, top_k?}, then binary float32 chunks (C x n, channel-major).

        A browser, which cannot set headers here, offers its token as a subprotocol (`ws_auth`)."""
        auth, protocol = ws_auth(ws.headers)
        await ws.accept(subprotocol=protocol)
        try:
            self._authorize(auth)
            start = await asyncio.wait_for(ws.receive_json(), 30)
            if not isinstance(start, dict):
                raise ApiError(400, "malformed_json", "the first message must be a JSON object")
            subject = subject_value(start.get("subject"))
            sfreq = start.get("sfreq")
            if sfreq is not None:
                bounded("sfreq", sfreq, 1.0, 100_000.0)
            k = int(
                bounded(
                    "top_k",
                    start.get("top_k", self.cfg.decoder.top_k),
                    1,
                    self.cfg.decoder.max_top_k,
                    True,
                )
            )
            if self.local is not None:
                info = await self._call(
                    asyncio.to_thread(self.local.stream_spec, subject, sfreq), "decoder"
                )
            else:
                info = await self._call(self.decoder.stream_spec.remote(subject, sfreq), "decoder")
            await self._stream_loop(ws, info, k)
        except WebSocketDisconnect:
            return
        except ApiError as exc:
            await ws_close(ws, {"type": "error", "error": exc.error, "detail": exc.detail})
        except StreamError as exc:
            await ws_close(ws, {"type": "error", "error": "invalid_chunk", "detail": str(exc)})
        except (TimeoutError, ValueError, KeyError, TypeError):
            await ws_close(
                ws,
                {
                    "type": "error",
                    "error": "bad_message",
                    "detail": "expected a JSON start message",
                },
            )

    async def _stream_loop(self, ws: WebSocket, info: dict[str, Any], k: int) -> None:
        s = self.cfg.stream
        spec, n_channels = info["spec"], int(info["n_channels"])
        if s.require_causal_training and not spec.matches_training:
            raise ApiError(
                422,
                "stream_unavailable",
                "this model was trained on zero-phase filtered data; "
                "the stream's causal filter would feed it other inputs",
            )
        session = StreamSession(spec, n_channels, s.stride_s, s.max_backlog_s, s.max_chunk_s)
        await ws.send_json(
            {
                "type": "ready",
                "n_channels": n_channels,
                "sfreq": spec.sfreq_in,
                "stride_samples": session.stride,
                "stride_s": session.stride_s,
                "window": [spec.tmin, spec.tmax],
                "delay_s": session.pre.delay_s,
                "filter_matches_training": spec.matches_training,
            }
        )
        subject = info["subject_index"]
        await run_session(
            ws,
            session,
            n_channels,
            s.max_backlog_s,
            lambda segment, onsets: self._decode_stream(session, segment, onsets, subject, k),
        )

    async def _decode_stream(
        self, session: StreamSession, segment: np.ndarray, onsets: np.ndarray, subject: int, k: int
    ) -> Any:
        """Windows at `onsets` (from their `segment` copy) -> decodes: on the ingress' copy in one
        thread hop, else via the pool."""
        local = self.local
        if local is not None:
            return await self._local_call(
                asyncio.to_thread(
                    lambda: local.decode_windows(
                        session.pre.windows_from(segment, onsets), subject, k
                    )
                )
            )
        windows = await asyncio.to_thread(session.pre.windows_from, segment, onsets)
        return await self._call(self.decoder.decode_windows.remote(windows, subject, k), "decoder")

    # --- the live page (megdecode.serve.livepage) ------------------------------------------
    @api.get("/live", include_in_schema=False)
    async def live_page(self, request: Request) -> Response:
        return static_file("live.html", str(request.scope.get("root_path", "")))

    @api.get("/live/{name}", include_in_schema=False)
    async def live_static(self, name: str) -> Response:
        return static_file(name)

    async def _live_model(self) -> tuple[Any, Any]:
        """(bundle, gallery) of the served model: the ingress' copy, else loaded once for the page."""
        if self.local is None:
            return await asyncio.to_thread(
                self.live.model, self.cfg.decoder.model, self.cfg.tracking_uri()
            )
        state = self.local.state
        if state is None:
            raise unavailable(
                "not_ready",
                self.local.load_error or "the model is still loading",
                self.cfg.http.retry_after_s,
            )
        return state.bundle, state.gallery

    @api.get(
        "/v1/live/recording",
        summary="what the live page replays: signal facts and events",
        responses=schemas.ERRORS,
    )
    async def live_recording(
        self, request: Request, subject: str | None = None, run: str | None = None
    ) -> Response:
        self._authorize(request.headers)
        bundle, gallery = await self._live_model()
        replay = await asyncio.to_thread(self.live.replay, bundle, self.store, subject, run)
        return FastJSONResponse(self.live.info(replay, gallery, bundle.subjects))

    @api.get(
        "/v1/live/recording/data",
        summary="samples [start, stop) of the replay as float32 (C x n)",
        responses={200: {"content": {"application/octet-stream": {}}}, **schemas.ERRORS},
    )
    async def live_data(
        self,
        request: Request,
        start: int,
        stop: int,
        subject: str | None = None,
        run: str | None = None,
    ) -> Response:
        self._authorize(request.headers)
        bundle, _ = await self._live_model()
        replay = await asyncio.to_thread(self.live.replay, bundle, self.store, subject, run)
        block = await asyncio.to_thread(replay.read, start, stop)
        return Response(
            block.tobytes(),
            media_type="application/octet-stream",
            headers={"X-Shape": f"{block.shape[0]},{block.shape[1]}"},
        )

    @api.get(
        "/v1/gallery/{image_id}.png",
        summary="a gallery image's thumbnail",
        responses={200: {"content": {"image/png": {}}}, **schemas.ERRORS},
    )
    async def gallery_png(self, request: Request, image_id: int) -> Response:
        self._authorize(request.headers)
        bundle, gallery = await self._live_model()
        png = await asyncio.to_thread(self.live.thumbnail, image_id, bundle, gallery, self.store)
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )
