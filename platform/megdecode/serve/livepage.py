"""The server side of GET /live: the replays the page asks for, what it draws, its thumbnails.

The page (``serve/static/live.*``, `megdecode.serve.livestatic`) replays a recording
through WS /v1/stream at real-time pace. `LivePage` finds what it replays
(`megdecode.serve.replay`): a run of the BIDS dataset the model was trained on, found at
``live.bids_root``, else the ``bids`` folder next to the served store, else next to the
store the bundle was trained on (the demo's layout); noise when none is found. It caches
the replays and the gallery thumbnails, and describes a replay to the page (`info`).

The page fetches the signal in blocks (`Replay.read`) and forwards it as 25 ms chunks.
Browsers cannot set headers on a WebSocket, so the page offers its token as a subprotocol
(`megdecode.serve.admission.ws_auth`), which the ingress checks exactly as an
Authorization header.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from megdecode.bundle import ModelBundle
from megdecode.serve.config import LiveConfig
from megdecode.serve.errors import ApiError
from megdecode.serve.gallery import Gallery
from megdecode.serve.replay import Replay, noise_replay, read_recording

logger = logging.getLogger(__name__)

CHUNKS_PER_BLOCK = 40  # a block the page fetches: 40 chunks (1 s at 25 ms)
DISPLAY_CHANNELS = 6
CACHED_REPLAYS = 2
CACHED_THUMBS = 2048


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
            from megdecode.bundle_io import load_bundle
            from megdecode.model_registry import resolve_bundle

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
            made = read_recording(root, bundle, subject, run, self.cfg.run)
        if isinstance(made, str):
            made = noise_replay(bundle, subject, made)
        # Cached under the request's key and the resolved run's (the page's data requests).
        with self._lock:
            self._replays[key] = self._replays[(str(root), subject, made.run)] = made
            while len(self._replays) > 2 * CACHED_REPLAYS:
                self._replays.popitem(last=False)
        return made

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
            "channels": list(replay.channels),  # the page names its rows in the stream's start
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
