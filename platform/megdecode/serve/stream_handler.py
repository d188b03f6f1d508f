"""WS /v1/stream: the start message, the "ready" reply, then decodes of the live feed.

The client sends a start message {subject, sfreq?, top_k?, channels?}, then binary float32
chunks (C x n, channel-major). With ``channels`` (the names of the chunk rows) the rows are
matched to the model's channels by sensor (`megdecode.serve.channels`) once, at the start:
a sensor the model needs and the list lacks closes the socket with a "channel_mismatch"
error, extra sensors are dropped from every chunk. The handler checks the token (`megdecode.serve.admission`), asks
the decoder (the ingress' own model copy when it holds one, else the pool) how to
preprocess the subject's feed, answers "ready" with the stride and delay, and runs the
connection's loop (`megdecode.serve.live.run_session`). Every failure closes the socket
with an ``{"type": "error", "error", "detail"}`` message, never an exception in the server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from megdecode.serve.admission import Admission, ws_auth
from megdecode.serve.channels import channel_picks, channels_value, dropped
from megdecode.serve.config import ServeConfig
from megdecode.serve.decoder import DecoderCore
from megdecode.serve.errors import ApiError
from megdecode.serve.live import run_session, ws_close
from megdecode.serve.stream import StreamError
from megdecode.serve.stream_session import StreamSession
from megdecode.serve.validate import bounded, subject_value

logger = logging.getLogger(__name__)


class StreamHandler:
    """The stream endpoint of one ingress replica; `decoder` is the pool's DeploymentHandle."""

    def __init__(
        self, cfg: ServeConfig, admission: Admission, decoder: Any, local: DecoderCore | None
    ) -> None:
        self.cfg, self.admission = cfg, admission
        self.decoder, self.local = decoder, local

    async def handle(self, ws: WebSocket) -> None:
        """Serve one connection until the client ends it or leaves.

        A browser, which cannot set headers here, offers its token as a subprotocol (`ws_auth`)."""
        auth, protocol = ws_auth(ws.headers)
        await ws.accept(subprotocol=protocol)
        try:
            self.admission.authorize(auth)
            start = await asyncio.wait_for(ws.receive_json(), 30)
            if not isinstance(start, dict):
                raise ApiError(400, "malformed_json", "the first message must be a JSON object")
            subject = subject_value(start.get("subject"))
            channels = channels_value(start.get("channels"))
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
                info = await self.admission.call(
                    asyncio.to_thread(self.local.stream_spec, subject, sfreq), "decoder"
                )
            else:
                info = await self.admission.call(
                    self.decoder.stream_spec.remote(subject, sfreq), "decoder"
                )
            picks = None if channels is None else channel_picks(info["channels"], channels)
            await self._loop(ws, info, k, channels, picks)
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

    async def _loop(
        self,
        ws: WebSocket,
        info: dict[str, Any],
        k: int,
        channels: tuple[str, ...] | None,
        picks: np.ndarray | None,
    ) -> None:
        """Refuse a model the causal filter would feed other inputs, say "ready", run the loop.

        With `channels` (the start message's names of the chunk rows), `picks` takes the
        model's sensors out of every chunk in the model's order; "ready" then says how many
        rows a chunk has and which named channels the model does not use."""
        s = self.cfg.stream
        spec, n_channels = info["spec"], int(info["n_channels"])
        if s.require_causal_training and not spec.matches_training:
            raise ApiError(
                422,
                "stream_unavailable",
                "this model was trained on zero-phase band-passed data; "
                "the stream's causal filter would feed it other inputs",
            )
        session = StreamSession(
            spec, n_channels, s.stride_s, s.max_backlog_s, s.max_chunk_s, picks=picks
        )
        rows = n_channels if channels is None else len(channels)
        await ws.send_json(
            {
                "type": "ready",
                "n_channels": rows,
                "dropped_channels": [] if picks is None else dropped(channels or (), picks),
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
            rows,
            s.max_backlog_s,
            lambda segment, onsets: self._decode(session, segment, onsets, subject, k),
        )

    async def _decode(
        self, session: StreamSession, segment: np.ndarray, onsets: np.ndarray, subject: int, k: int
    ) -> Any:
        """Windows at `onsets` (from their `segment` copy) -> decodes: on the ingress' copy in one
        thread hop, else via the pool."""
        local = self.local
        if local is not None:
            return await self.admission.local_call(
                asyncio.to_thread(
                    lambda: local.decode_windows(
                        session.pre.windows_from(segment, onsets), subject, k
                    )
                )
            )
        windows = await asyncio.to_thread(session.pre.windows_from, segment, onsets)
        return await self.admission.call(
            self.decoder.decode_windows.remote(windows, subject, k), "decoder"
        )
