"""The server side of GET /live: what the page replays, its thumbnails, its static files.

The page (``serve/static/live.*``, plain HTML/JS/CSS: no build step, no CDN) replays a
recording through WS /v1/stream at real-time pace. What it replays comes from here:

- a run of the BIDS dataset the model was trained on, at its native rate, with its events
  (sample, image id) so the page knows which image was on screen at each decode and can
  score the top-5. The BIDS root is ``live.bids_root``, else the ``bids`` folder next to
  the served store, else next to the store the bundle was trained on (the demo's layout);
- when no such recording is found, Gaussian noise with the subject's per-channel scale at
  the bundle's native rate, said so in the page (decodes flow, no hit rate).

The page fetches the signal in blocks (`Replay.read`) and forwards it as 25 ms chunks;
runs are opened without preloading, so a THINGS run (~0.8 GB at 1200 Hz) is read a block
at a time. Browsers cannot set headers on a WebSocket, so the page offers its token as a
subprotocol (`ws_auth`), which the ingress checks exactly as an Authorization header.
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi.responses import Response

from megdecode.bundle import ModelBundle
from megdecode.serve.config import LiveConfig
from megdecode.serve.errors import ApiError
from megdecode.serve.gallery import Gallery

logger = logging.getLogger(__name__)

WS_PROTOCOL = "megdecode"  # the subprotocol the page asks for and the ingress accepts
TOKEN_PROTOCOL = (
    "bearer."  # + the token, base64url without padding (a subprotocol is an HTTP token)
)
STATIC = {
    "live.html": "text/html; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}
CHUNKS_PER_BLOCK = 40  # a block the page fetches: 40 chunks (1 s at 25 ms)
MAX_BLOCK_S = 10.0  # the most signal one data request returns
NOISE_S = 120.0  # length of the noise stand-in
DISPLAY_CHANNELS = 6
CACHED_REPLAYS = 2
CACHED_THUMBS = 2048


# --- auth and static files --------------------------------------------------------------------
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


# --- what is replayed -------------------------------------------------------------------------
@dataclass
class Replay:
    """A signal the page replays: (C, n_samples) at `sfreq`, channels in the bundle's order.

    events: sample, image_id, category, image_path, trial_type (empty for the noise).
    """

    source: str  # "recording" | "noise"
    subject: str
    run: str
    runs: list[str]
    sfreq: float
    n_samples: int
    channels: list[str]
    events: pd.DataFrame
    note: str
    read_block: Callable[[int, int], np.ndarray]
    lock: threading.Lock

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as (C, n) float32 little-endian, bounds checked."""
        limit = int(MAX_BLOCK_S * self.sfreq)
        if not 0 <= start < stop <= self.n_samples or stop - start > limit:
            raise ApiError(
                422,
                "invalid_range",
                f"need 0 <= start < stop <= {self.n_samples}, at most {limit} samples",
            )
        with self.lock:  # one reader per open file
            return np.ascontiguousarray(self.read_block(start, stop), "<f4")


def display_channels(names: list[str], n: int = DISPLAY_CHANNELS) -> list[int]:
    """Indices of `n` channels to draw: occipital ones first (where visual responses are), spread."""
    occipital = [i for i, c in enumerate(names) if len(c) > 2 and c[0] == "M" and c[2] == "O"]
    pool = occipital if len(occipital) >= n else list(range(len(names)))
    picks = np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)
    return [pool[i] for i in dict.fromkeys(picks.tolist())]


class LivePage:
    """Per ingress: finds and caches replays and thumbnails."""

    def __init__(self, cfg: LiveConfig) -> None:
        self.cfg = cfg
        self._replays: OrderedDict[tuple[str, str, str], Replay] = OrderedDict()
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._model: tuple[str, ModelBundle, Gallery] | None = None

    def model(self, source: str, tracking_uri: str) -> tuple[ModelBundle, Gallery]:
        """(bundle, gallery) of `source`, loaded once: for an ingress without its own model copy."""
        if self._model is None or self._model[0] != source:
            from megdecode.bundle import load_bundle
            from megdecode.tracking import resolve_bundle

            try:
                bundle = load_bundle(resolve_bundle(source, tracking_uri)[0])
            except (OSError, ValueError, KeyError) as exc:
                raise ApiError(
                    503,
                    "not_ready",
                    f"the live page cannot load the model: {exc}",
                    {"Retry-After": "5"},
                ) from None
            self._model = (source, bundle, Gallery.from_bundle(bundle))
        return self._model[1], self._model[2]

    def bids_root(self, store: str, bundle: ModelBundle) -> tuple[Path | None, str]:
        """(the BIDS root, or None and why)."""
        trained = bundle.fit_config.store
        tried = [Path(self.cfg.bids_root)] if self.cfg.bids_root else []
        tried += [Path(s).parent / "bids" for s in (store, trained) if s]
        for path in tried:
            if (path / "dataset_description.json").is_file():
                return path, ""
        where = ", ".join(str(p) for p in tried) or "nowhere (no live.bids_root, no store)"
        return None, f"no BIDS dataset found (looked in {where})"

    def replay(
        self, bundle: ModelBundle, store: str, subject: str | None, run: str | None
    ) -> Replay:
        """The replay of `run` of `subject` (defaults: live.run, the bundle's first subject, its last run)."""
        subject = subject or bundle.subjects[0]
        if subject not in bundle.subjects:
            raise ApiError(
                404, "unknown_subject", f"the model knows subjects {list(bundle.subjects)}"
            )
        root, why = self.bids_root(store, bundle)
        key = (str(root), subject, run or "")
        with self._lock:
            if key in self._replays:
                self._replays.move_to_end(key)
                return self._replays[key]
        made: Replay | str = why
        if root is not None and run != "noise":
            made = self._recording(root, bundle, subject, run)
        if isinstance(made, str):
            made = _noise(bundle, subject, made)
        with (
            self._lock
        ):  # under the request's key and the resolved run's (the page's data requests)
            self._replays[key] = self._replays[(str(root), subject, made.run)] = made
            while len(self._replays) > 2 * CACHED_REPLAYS:
                self._replays.popitem(last=False)
        return made

    def _recording(
        self, root: Path, bundle: ModelBundle, subject: str, run: str | None
    ) -> Replay | str:
        """A run of `root` (or why none could be used)."""
        from megdecode.data import bids

        try:
            keys = bids.find_runs(root, subjects=[subject])
        except FileNotFoundError as exc:
            return str(exc)
        names = [k.basename for k in keys]
        wanted = run or (self.cfg.run if self.cfg.run in names else names[-1])
        if wanted not in names:
            raise ApiError(404, "unknown_run", f"subject {subject} has runs {names}")
        key = keys[names.index(wanted)]
        try:
            rec = bids.read_run(root, key, preload=False)
        except (OSError, ValueError) as exc:
            logger.warning("live page: cannot read %s: %s", wanted, exc)
            return f"{wanted} could not be read ({type(exc).__name__})"
        raw = rec.raw
        index = {name: i for i, name in enumerate(raw.ch_names)}
        missing = [c for c in bundle.ch_names if c not in index]
        if missing:
            return f"{wanted} lacks {len(missing)} of the model's channels (e.g. {missing[0]})"
        picks = [index[c] for c in bundle.ch_names]
        events = rec.events[["sample", "image_id", "category", "image_path", "trial_type"]].copy()
        return Replay(
            "recording",
            subject,
            wanted,
            names,
            float(raw.info["sfreq"]),
            int(raw.n_times),
            list(bundle.ch_names),
            events,
            f"{wanted} of {root}",
            lambda a, b: raw.get_data(picks=picks, start=a, stop=b),
            threading.Lock(),
        )

    # --- JSON and PNG bodies ------------------------------------------------------------------
    def info(self, replay: Replay, gallery: Gallery, subjects: list[str]) -> dict[str, Any]:
        """What the page needs before it opens the socket."""
        chunk = max(1, int(round(self.cfg.chunk_s * replay.sfreq)))
        in_gallery = set(gallery.ids.tolist())
        events = [
            {
                "sample": int(e.sample),
                "image_id": int(e.image_id),
                "category": str(e.category),
                "trial_type": str(e.trial_type),
                "in_gallery": int(e.image_id) in in_gallery,
            }
            for e in replay.events.itertuples()
        ]
        return {
            "source": replay.source,
            "subject": replay.subject,
            "subjects": list(subjects),
            "run": replay.run,
            "runs": replay.runs,
            "note": replay.note,
            "sfreq": replay.sfreq,
            "n_samples": replay.n_samples,
            "duration_s": round(replay.n_samples / replay.sfreq, 3),
            "n_channels": len(replay.channels),
            "chunk_samples": chunk,
            "block_samples": chunk * CHUNKS_PER_BLOCK,
            "display": [
                {"index": i, "name": replay.channels[i]} for i in display_channels(replay.channels)
            ],
            "events": events,
            "gallery_size": len(gallery),
        }

    def thumbnail(self, image_id: int, bundle: ModelBundle, gallery: Gallery, store: str) -> bytes:
        """A PNG of gallery (or replayed) image `image_id`, longest side live.thumb_px, cached."""
        with self._lock:
            if image_id in self._thumbs:
                self._thumbs.move_to_end(image_id)
                return self._thumbs[image_id]
        path = self._image_path(image_id, gallery)
        root, why = self.bids_root(store, bundle)
        if root is None or not path:
            raise ApiError(
                404,
                "no_image",
                f"no image file is known for image {image_id}" + (f": {why}" if why else ""),
            )
        from megdecode.data.bids import image_file

        try:
            png = _png(image_file(root, path), self.cfg.thumb_px)
        except (OSError, ValueError) as exc:  # missing or unreadable file
            raise ApiError(404, "no_image", f"image {image_id}: {type(exc).__name__}") from None
        with self._lock:
            self._thumbs[image_id] = png
            while len(self._thumbs) > CACHED_THUMBS:
                self._thumbs.popitem(last=False)
        return png

    def _image_path(self, image_id: int, gallery: Gallery) -> str:
        where = np.flatnonzero(gallery.ids == image_id)
        if len(where) and gallery.paths[where[0]]:
            return gallery.paths[where[0]]
        with self._lock:
            replays = list(self._replays.values())
        for replay in replays:  # an image seen in the replay but not in the gallery
            rows = replay.events.loc[replay.events["image_id"] == image_id, "image_path"]
            if len(rows):
                return str(rows.iloc[0])
        return ""


def _png(path: Path, size: int) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    out = io.BytesIO()
    thumb.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _noise(bundle: ModelBundle, subject: str, why: str) -> Replay:
    """White noise at the subject's native rate and per-channel scale: the stand-in recording."""
    scaler = bundle.scalers.get(subject)
    sfreq = float(scaler.raw_sfreq or 0) if scaler is not None else 0.0
    if scaler is None or sfreq <= 0:
        raise ApiError(
            422,
            "live_unavailable",
            f"{why}; and the bundle records no native rate to replay noise at",
        )
    scale = np.asarray(scaler.scale, np.float64)[:, None]

    def read(start: int, stop: int) -> np.ndarray:
        # One seed per block start: the same request returns the same samples.
        return np.random.default_rng([0, start]).standard_normal((len(scale), stop - start)) * scale

    empty = pd.DataFrame(
        {
            "sample": pd.Series(dtype="int64"),
            "image_id": pd.Series(dtype="int64"),
            "category": "",
            "image_path": "",
            "trial_type": "",
        }
    )
    return Replay(
        "noise",
        subject,
        "noise",
        ["noise"],
        sfreq,
        int(NOISE_S * sfreq),
        list(bundle.ch_names),
        empty,
        f"{why}: replaying noise (no seen images, no hit rate)",
        read,
        threading.Lock(),
    )
