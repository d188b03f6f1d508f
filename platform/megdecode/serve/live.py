"""WS /v1/stream's loop: read chunks as they come, decode what they made ready, reply.

Two tasks per connection. `read_chunks` receives frames and pushes them through the
session's causal filter at once, so a model slower than the stride finds a backlog
(which `StreamSession.due` trims to real time) rather than chunks left unread in the
socket; `run_session` hands the queued onsets to the decoder in one stacked call and
sends one message per decode. A copy of the samples the windows need is taken before
the decode, so the reader may keep overwriting the ring buffer meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import WebSocket

from megdecode.serve.stream import StreamError
from megdecode.serve.stream_session import StreamSession

logger = logging.getLogger(__name__)

Decode = Callable[
    [np.ndarray, np.ndarray], Awaitable[Any]
]  # (segment (C, S), onsets (K,)) -> {top_k, forward_ms}


async def ws_close(ws: WebSocket, message: dict[str, Any], code: int = 1008) -> None:
    try:
        await ws.send_json(message)
        await ws.close(code=code)
    except Exception:  # the client is gone already
        logger.debug("websocket closed before the final message")


async def run_session(
    ws: WebSocket, session: StreamSession, n_channels: int, max_backlog_s: float, decode: Decode
) -> None:
    """Until the client sends {"type": "end"} (answered with "end") or leaves; raises StreamError."""
    spec = session.pre.spec
    wake, ended, room = asyncio.Event(), asyncio.Event(), asyncio.Event()
    arrivals: list[float] = []  # when the chunks behind the queued onsets arrived (oldest first)
    reader = asyncio.create_task(read_chunks(ws, session, n_channels, arrivals, wake, ended, room))
    try:
        while True:
            await wake.wait()
            wake.clear()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]  # not None: the task is done and raised
            received = arrivals[0] if arrivals else time.perf_counter()
            arrivals.clear()
            tick = session.due()
            segment = session.pre.segment(tick.onsets) if len(tick.onsets) else None
            room.set()  # the windows are copied: the reader may overwrite the ring buffer
            if tick.skipped or tick.lag_s > max_backlog_s:
                await ws.send_json(
                    {"type": "behind", "lag_s": round(tick.lag_s, 4), "skipped": tick.skipped}
                )
            if segment is not None:
                out = await decode(segment, tick.onsets)
                latency = (time.perf_counter() - received) * 1e3
                if reader.done() and not ended.is_set() and reader.exception() is None:
                    return  # the client left while its windows were decoded
                for onset, hits in zip(tick.onsets.tolist(), out["top_k"], strict=True):
                    await ws.send_json(
                        {
                            "type": "decode",
                            "onset_sample": onset,
                            "t_s": onset / spec.sfreq_in,
                            "top_k": hits,
                            "forward_ms": round(out["forward_ms"], 3),
                            "latency_ms": round(latency, 3),
                            "batch": len(tick.onsets),
                            "lag_s": round(tick.lag_s, 4),
                        }
                    )
            if reader.done() and session.queued:
                wake.set()  # decode what is left before closing
            elif reader.done():
                if ended.is_set():
                    await ws_close(ws, {"type": "end"}, code=1000)
                elif not reader.cancelled() and reader.exception() is not None:
                    raise reader.exception()  # type: ignore[misc]  # not None: the task is done and raised
                return
    finally:
        reader.cancel()


async def read_chunks(
    ws: WebSocket,
    session: StreamSession,
    n_channels: int,
    arrivals: list[float],
    wake: asyncio.Event,
    ended: asyncio.Event,
    room: asyncio.Event,
) -> None:
    """Receive chunks as they come and queue their onsets, while the decode loop works:
    a model slower than the stride then sees the backlog (and skips it) instead of
    chunks piling up unread in the socket. It stops reading (back-pressure) only when
    the ring buffer is full of samples that queued windows still need: a replay sent
    faster than real time is slowed down, never cut."""
    try:
        while True:
            while session.room() < session.max_chunk:
                room.clear()
                await room.wait()
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                if '"end"' in message["text"]:
                    ended.set()
                    return
                raise StreamError("send chunks as binary float32 frames")
            raw = message.get("bytes") or b""
            if len(raw) % (4 * n_channels) or not raw:
                raise StreamError(
                    f"a chunk must be n x {n_channels} float32 values (channel-major)"
                )
            arrived, before = time.perf_counter(), len(session.queued)
            if session.push(np.frombuffer(raw, "<f4").reshape(n_channels, -1)) > before:
                arrivals.append(arrived)
                wake.set()
    finally:
        wake.set()
