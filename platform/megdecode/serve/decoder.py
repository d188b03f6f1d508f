"""The BrainDecoder deployment: MEG windows -> latents and top-k gallery images.

The model loads in `reconfigure` (Serve's user_config), not only in ``__init__``:
promoting a new alias and redeploying with a bumped ``revision`` (or a new ``model``)
makes Serve call `reconfigure` on the live replicas, which load the new bundle first and
then swap one reference, so requests in flight finish on the old model and none is
dropped. Single-window requests go through ``@serve.batch`` (size and wait from the
config); the ingress sends a window as `inline_parts` to `decode_parts` (so that Ray passes
it inline, not through the object store); the stream sends its windows already stacked to
`decode_windows`. A /v1/decode request carries its `Deadline` (``http.max_queue_ms``): one
that waited past it when the batch handler takes it is shed (`megdecode.serve.queue_budget`),
not computed. The stream's decodes are never shed: they bypass the batch queue
(`decode_windows`), and a stream that falls behind says so (a ``behind`` message) and skips
ahead instead.

The logic lives in `DecoderCore`, a plain class, so that the ingress can hold its own
copy of a small model (``decoder.ingress_copy``): a live stream then decodes in the
process that receives its chunks, without a deployment-handle hop per chunk.

Methods return error dicts (`errors.to_dict`) instead of raising for bad input: an
exception crossing a handle is re-wrapped by Ray, and the ingress should not have to
unpick it to produce a 422.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
import threadpoolctl
import torch
from ray import serve

from megdecode.serve.config import DecoderConfig
from megdecode.serve.errors import ApiError
from megdecode.serve.model import LoadedModel, load_served_model
from megdecode.serve.queue_budget import Deadline, Shed, shed_error, split_expired
from megdecode.serve.reconstruct import window_latents
from megdecode.serve.stream import StreamError, StreamSpec
from megdecode.serve.validate import check_window, subject_index

logger = logging.getLogger(__name__)


# Ray passes a task argument under 100 KiB inline with the call; a larger one goes through
# the object store (a put, then a fetch by the replica): ~2-3 ms more per hop on a 2-core
# machine for a paper-size window (272 x 181 float32, 197 KB). `inline_parts` cuts a window
# into channel blocks under this size, each its own argument, so they all travel inline.
INLINE_BYTES = 90 * 1024


def inline_parts(window: np.ndarray) -> list[np.ndarray]:
    """`window` as row blocks (views) of at most INLINE_BYTES each; np.concatenate undoes it."""
    n = -(-window.nbytes // INLINE_BYTES)
    return np.array_split(window, n) if n > 1 else [window]


# One computed row of a batch: (latent, forward ms, batch size, queue ms or None).
Batched = tuple[np.ndarray, float, int, float | None]


def error_dict(exc: ApiError) -> dict[str, Any]:
    return {"error": exc.error, "detail": exc.detail, "status": exc.status, "headers": exc.headers}


class DecoderCore:
    """A loaded bundle, a batching queue and the reload hook (one per replica or ingress)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = DecoderConfig.from_flat_dict(config)
        torch.set_num_threads(self.cfg.torch_threads)
        # BLAS too (the stream's resampling kernel, the gallery product): a pool of
        # OpenBLAS threads per process fights the other replicas for the same cores.
        threadpoolctl.threadpool_limits(self.cfg.torch_threads, user_api="blas")
        self._batched.set_max_batch_size(self.cfg.max_batch_size)  # type: ignore[attr-defined]  # added by @serve.batch at run time
        self._batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]  # added by @serve.batch
        self.state: LoadedModel | None = None
        self.loaded_from: tuple[str, str, int] | None = None
        self.load_error = ""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load {model, tracking_uri, revision} and swap it in; keep the old one on failure.

        (The dict's ``store`` is the ingress's, for the live page; the model needs none.)"""
        key = (
            str(user_config.get("model", "")),
            str(user_config.get("tracking_uri", "")),
            int(user_config.get("revision", 0)),
        )
        if key == self.loaded_from and self.state is not None:
            return
        try:
            new = load_served_model(key[0], key[1], self.cfg.precision)
        except Exception as exc:  # a bad source must not kill a replica that serves an older model
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("could not load %s: %s", key[0], self.load_error)
            return
        with torch.no_grad():  # warm up: the first forward allocates
            c, t = new.shape
            new.forward(np.zeros((1, c, t), np.float32), np.zeros(1, np.int64))
        self.state, self.loaded_from, self.load_error = new, key, ""

    # --- queries ---------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        return {"ready": self.state is not None, "error": self.load_error}

    def card(self) -> dict[str, Any] | None:
        return None if self.state is None else self.state.card

    def _current(self) -> LoadedModel:
        if self.state is None:
            raise ApiError(503, "model_not_loaded", self.load_error or "the model is still loading")
        return self.state

    def _check(
        self,
        state: LoadedModel,
        window: np.ndarray,
        subject: str | int,
        channels: tuple[str, ...] | None,
    ) -> tuple[np.ndarray, int]:
        """(the window in the model's channel order, the subject index) or an ApiError."""
        window = state.channels.align(window, channels)
        check_window(window, *state.shape)
        return window, subject_index(subject, state.bundle.subjects)

    # --- decoding --------------------------------------------------------------------------
    async def decode(
        self,
        window: np.ndarray,
        subject: str | int,
        top_k: int,
        channels: tuple[str, ...] | None = None,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """One window (C, T) -> {latent, top_k, model, timing} or an error dict.

        `channels` names the window's rows (any order, any CTF serial), None when they are
        the model's channels in its order. A request past its `deadline` when it arrives
        here or when its batch is taken gets the 503 ``overloaded`` error dict."""
        if deadline is not None and deadline.expired():
            return error_dict(
                shed_error(deadline.age_ms(), deadline.budget_ms, "before the decoder got it")
            )
        try:
            state = self._current()
            window, index = self._check(state, window, subject, channels)
        except ApiError as exc:
            return error_dict(exc)
        done = await self._batched((state, window, index, deadline))
        if isinstance(done, Shed):
            return error_dict(
                shed_error(done.waited_ms, done.budget_ms, "in the decoder's batch queue")
            )
        clip, forward_ms, batch, queue_ms = done
        timing = {"forward_ms": round(forward_ms, 3), "batch_size": batch}
        if queue_ms is not None:  # from the ingress' arrival to the batch's start
            timing["queue_ms"] = round(queue_ms, 3)
        # The latent stays a float32 array: smaller across a handle than a list of floats,
        # and the ingress' JSON writer (`jsonio`) writes arrays itself.
        return {
            "latent": clip,
            "top_k": state.gallery.topk(clip[None], top_k)[0],
            "model": {"name": state.card["name"], "version": state.card["version"]},
            "timing": timing,
        }

    async def decode_parts(
        self,
        subject: str | int,
        top_k: int,
        *parts: np.ndarray,
        channels: tuple[str, ...] | None = None,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """`decode` of the window sent as `inline_parts` (one argument each)."""
        window = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return await self.decode(window, subject, top_k, channels, deadline)

    @serve.batch(
        max_batch_size=16, batch_wait_timeout_s=0.0
    )  # both reset from the config in __init__
    async def _batched(
        self, items: list[tuple[LoadedModel, np.ndarray, int, Deadline | None]]
    ) -> list[Batched | Shed]:
        """Stack the queued windows into one forward (per model, should a reload split them);
        those past their deadline when the batch is taken are answered `Shed` instead."""
        out: list[Batched | Shed | None] = [None] * len(items)
        now = time.time()
        deadlines = [item[3] for item in items]
        expired, live = split_expired(deadlines, now)
        for i in expired:
            d = deadlines[i]
            assert d is not None  # split_expired never expires a request without a deadline
            out[i] = Shed(d.age_ms(now), d.budget_ms)
        groups: dict[int, list[int]] = {}
        for i in live:
            groups.setdefault(id(items[i][0]), []).append(i)
        for idx in groups.values():
            state = items[idx[0]][0]
            windows = np.stack([items[i][1] for i in idx])
            subjects = np.array([items[i][2] for i in idx], np.int64)
            start = time.perf_counter()
            clip, _ = await asyncio.to_thread(state.forward, windows, subjects)
            ms = (time.perf_counter() - start) * 1e3
            for row, i in enumerate(idx):
                d = deadlines[i]
                out[i] = (clip[row], ms, len(idx), None if d is None else d.age_ms(now))
        return out  # type: ignore[return-value]  # @serve.batch turns the list into one result per caller

    async def decode_windows_async(
        self, windows: np.ndarray, subject: int, top_k: int
    ) -> dict[str, Any]:
        """`decode_windows` off the event loop (the ingress' copy: other requests keep flowing)."""
        return await asyncio.to_thread(self.decode_windows, windows, subject, top_k)

    def decode_windows(self, windows: np.ndarray, subject: int, top_k: int) -> dict[str, Any]:
        """Stacked stream windows (K, C, T) of one subject index -> per-window top-k, forward time."""
        try:
            state = self._current()
            if windows.ndim != 3 or windows.shape[1:] != state.shape:
                raise ApiError(422, "invalid_shape", "stream windows do not match the model")
        except ApiError as exc:
            return error_dict(exc)
        start = time.perf_counter()
        clip, _ = state.forward(windows, np.full(len(windows), subject, np.int64))
        ms = (time.perf_counter() - start) * 1e3
        return {
            "top_k": state.gallery.topk(clip, top_k),
            "forward_ms": ms,
            "model": {"name": state.card["name"], "version": state.card["version"]},
        }

    def stream_spec(self, subject: str | int, sfreq: float | None) -> dict[str, Any]:
        """What the ingress needs to preprocess a live feed of `subject` (or an error dict)."""
        try:
            state = self._current()
            index = subject_index(subject, state.bundle.subjects)
            label = state.bundle.subjects[index]
            spec = StreamSpec.from_bundle(state.bundle, label, sfreq)
        except ApiError as exc:
            return error_dict(exc)
        except StreamError as exc:
            return error_dict(ApiError(422, "stream_unavailable", str(exc)))
        return {
            "spec": spec,
            "subject_index": index,
            "n_channels": state.shape[0],
            "channels": list(state.bundle.ch_names),
        }

    def generation_latent(
        self, window: np.ndarray, subject: str | int, channels: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """MSE head -> latents z-scored with the bundle's prediction statistics, on the training
        latents' scale, split per named latent (`reconstruct.window_latents`, which
        `megdecode reconstruct` runs too), for the generator."""
        try:
            state = self._current()
            latents = window_latents(state, window, subject, channels)
        except ApiError as exc:
            return error_dict(exc)
        return {
            "latents": latents,
            "model": {"name": state.card["name"], "version": state.card["version"]},
        }


@serve.deployment(name="BrainDecoder")
class BrainDecoder(DecoderCore):
    """One replica of the decoder pool (`DecoderCore` as a Serve deployment)."""

    def pid(self) -> int:
        return os.getpid()
