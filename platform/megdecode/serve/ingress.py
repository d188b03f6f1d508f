"""The HTTP/WebSocket ingress: the FastAPI routes of the app, routed to the deployments.

The ingress validates and routes; with ``decoder.ingress_copy`` it also holds its own
copy of the model (same source, reloaded with the same user config as the decoder pool)
so that the stream, and for small models /v1/decode, skip the hop to a decoder replica,
which costs more than such a model's forward pass. It turns every failure into
``{"error", "detail"}`` with a 4xx/503 status (`megdecode.serve.errors`). Who and how
much it lets in (the token, in-flight bounds, the body) is `megdecode.serve.admission`;
WS /v1/stream is `megdecode.serve.stream_handler`; the live page's replays and thumbnails
are `megdecode.serve.livepage`.

No ``from __future__ import annotations`` here: Serve's class-based view rebuilds the
route signatures, and string annotations (``request: "Request"``) would turn the request
into a required query parameter.
"""

import asyncio
import base64
import logging
import time
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from ray import serve

from megdecode import __version__
from megdecode.serve import schemas
from megdecode.serve.admission import Admission
from megdecode.serve.config import ServeConfig
from megdecode.serve.decoder import DecoderCore, inline_parts
from megdecode.serve.errors import ApiError, install_handlers, unavailable
from megdecode.serve.jsonio import FastJSONResponse
from megdecode.serve.livepage import LivePage
from megdecode.serve.livestatic import static_file
from megdecode.serve.stream_handler import StreamHandler
from megdecode.serve.validate import bounded

logger = logging.getLogger(__name__)

api = FastAPI(
    title="megdecode",
    version=__version__,
    description="MEG window -> image latent, top-k gallery images and reconstructions.",
)
install_handlers(api)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """Routes of the app; `decoder` and `generator` are DeploymentHandles (generator may be None)."""

    def __init__(self, decoder: Any, generator: Any, config: dict[str, Any]) -> None:
        self.cfg = ServeConfig.from_flat_dict(config)
        self.decoder, self.generator = decoder, generator
        d = self.cfg.decoder
        self.local = DecoderCore(d.to_flat_dict()) if d.ingress_copy != "none" else None
        self.admission = Admission(self.cfg)
        self.streams = StreamHandler(self.cfg, self.admission, decoder, self.local)
        self.live, self.store = LivePage(self.cfg.live), ""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """{token_sha256, decoder: the decoder pool's user config (for the ingress' model copy)}."""
        self.admission.token_sha256 = str(user_config.get("token_sha256", ""))
        self.store = str((user_config.get("decoder") or {}).get("store") or "")
        if self.local is not None and user_config.get("decoder"):
            self.local.reconfigure(dict(user_config["decoder"]))

    # --- routes ----------------------------------------------------------------------------
    @api.get("/healthz", summary="liveness: the ingress answers")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz", summary="readiness: the model is loaded", responses={503: schemas.ERRORS[503]}
    )
    async def readyz(self) -> dict[str, Any]:
        state = await self.admission.call(self.decoder.ready.remote(), "decoder", timeout=5.0)
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
        self.admission.authorize(request.headers)
        card = await self.admission.call(self.decoder.card.remote(), "decoder")
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
            "one window, JSON or raw float32 bytes (headers X-Shape: C,T and X-Subject; "
            "optional X-Channels: the rows' channel names, comma-separated)"
        ),
    )
    async def decode(self, request: Request, top_k: int | None = None) -> Response:
        start, deadline = time.perf_counter(), self.admission.deadline()
        self.admission.authorize(request.headers)
        k = (
            self.cfg.decoder.top_k
            if top_k is None
            else int(bounded("top_k", top_k, 1, self.cfg.decoder.max_top_k, True))
        )
        with self.admission.decode_slot():
            subject, window, channels = await self.admission.window(request)
            self.admission.check_deadline(deadline)
            if self.local is not None and self.cfg.decoder.ingress_copy == "all":
                result = await self.admission.local_call(
                    self.local.decode(window, subject, k, channels, deadline)
                )
            else:
                result = await self.admission.call(
                    self.decoder.decode_parts.remote(
                        subject, k, *inline_parts(window), channels=channels, deadline=deadline
                    ),
                    "decoder",
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
        self.admission.authorize(request.headers)
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
        subject, window, channels = await self.admission.window(request)
        decoded = await self.admission.call(
            self.decoder.generation_latent.remote(window, subject, channels), "decoder"
        )
        result = await self.admission.call(
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
        """Start message {subject, sfreq?, top_k?, channels?}, then binary float32 chunks
        (C x n, channel-major; rows in the order of `channels` when given)."""
        await self.streams.handle(ws)

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
        self.admission.authorize(request.headers)
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
        self.admission.authorize(request.headers)
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
        self.admission.authorize(request.headers)
        bundle, gallery = await self._live_model()
        png = await asyncio.to_thread(self.live.thumbnail, image_id, bundle, gallery, self.store)
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )
