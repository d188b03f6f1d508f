"""A served window's channel names -> the model's channel order, matched by sensor name.

A client may name the rows of what it sends: ``"channels"`` in a JSON body, the
``X-Channels`` header (comma-separated) with raw float32 bytes, ``"channels"`` in the
stream's start message. Named rows are matched to the bundle's channels by sensor
(`megdecode.data.sensors`: the serial suffix is ignored, so a model trained on
``MLC11-1609`` takes ``MLC11-4304``), in any order. Without names the window must already be
in the model's order and is checked by shape only, as before.

Why extra sensors are dropped rather than refused: once every row is named, the rows the
model does not use are known exactly, so a client can send what its acquisition system
records (THINGS' broken ``MRO11``, which a model may have been trained without, included)
without learning each bundle's exclusions. A missing sensor is always a 422
``channel_mismatch`` naming it: the model cannot run without it.

Why a cache: matching 272 names costs ~0.35 ms of dictionary work (2-core CPU), the cached
reordering of a 272 x 181 window ~0.02 ms; a client sends the same list with every window,
so `ChannelOrder` keeps the permutation per distinct list (a bounded LRU, so many distinct
lists cannot grow it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from megdecode.data.sensors import SensorMismatchError, match_sensors
from megdecode.serve.errors import ApiError

logger = logging.getLogger(__name__)

CHANNELS_HEADER = "x-channels"
MAX_CHANNELS = 4096  # more names than any MEG system has: a bound on the work per request
MAX_NAME = 64  # characters per channel name (CTF names are ~10)
CACHED_LISTS = 32  # distinct channel lists whose permutation a model keeps


def channels_value(value: Any) -> tuple[str, ...] | None:
    """The ``channels`` field of a JSON body or start message: None (absent) or the names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ApiError(422, "invalid_channels", "channels must be a non-empty list of names")
    if len(value) > MAX_CHANNELS:
        raise ApiError(422, "invalid_channels", f"channels lists more than {MAX_CHANNELS} names")
    if not all(isinstance(v, str) and 0 < len(v.strip()) <= MAX_NAME for v in value):
        raise ApiError(
            422,
            "invalid_channels",
            f"each channel name must be a string of 1 to {MAX_NAME} characters",
        )
    return tuple(v.strip() for v in value)


def channels_from_header(text: str | None) -> tuple[str, ...] | None:
    """The X-Channels header ('MLC11-4304,MLC12-4304,...') -> the names; None when absent."""
    if text is None:
        return None
    return channels_value(text.split(",") if text.strip() else [])


def channel_picks(
    expected: Sequence[str], channels: Sequence[str], *, allow_extra: bool = True
) -> np.ndarray:
    """Rows of a window named `channels` that give the model's (`expected`) order; 422 otherwise."""
    try:
        picks = match_sensors(
            expected,
            channels,
            allow_extra=allow_extra,
            expected_label="the model",
            got_label="the window",
        )
    except SensorMismatchError as exc:
        raise ApiError(422, "channel_mismatch", str(exc)) from None
    picks.setflags(write=False)  # shared by every request that sends the same list
    return picks


def dropped(channels: Sequence[str], picks: np.ndarray) -> list[str]:
    """The named channels that `picks` leaves out (sensors the model does not use)."""
    kept = set(picks.tolist())
    return [name for i, name in enumerate(channels) if i not in kept]


class ChannelOrder:
    """One model's channel list and the permutations of the client lists seen so far."""

    def __init__(self, expected: Sequence[str], *, allow_extra: bool = True) -> None:
        self.expected = tuple(expected)
        self.allow_extra = allow_extra
        # Per instance, so a reloaded model starts with its own cache; errors are not cached.
        self.picks = functools.lru_cache(maxsize=CACHED_LISTS)(self._picks)

    def _picks(self, channels: tuple[str, ...]) -> np.ndarray:
        return channel_picks(self.expected, channels, allow_extra=self.allow_extra)

    def align(self, window: np.ndarray, channels: Sequence[str] | None) -> np.ndarray:
        """(C_sent, T) with rows named `channels` -> (C_model, T) in the model's order.

        None: the window is taken as it is (already the model's order; the shape check
        that follows decides)."""
        if channels is None:
            return window
        if len(channels) != window.shape[0]:
            raise ApiError(
                422,
                "invalid_shape",
                f"{len(channels)} channel names for {window.shape[0]} data rows",
            )
        picks = self.picks(tuple(channels))
        if len(picks) == window.shape[0] and bool((picks[1:] > picks[:-1]).all()):
            return window  # already the model's order: no copy
        return window[picks]
