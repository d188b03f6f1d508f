"""Sensor names across CTF systems: one rule for every place that compares channel lists.

A CTF channel name is the sensor's name plus the system's serial number
(``MRO11-1609`` on THINGS-MEG's CTF-275, ``MRO11-4304`` on another CTF-275): the same
sensor under two names. Everything that compares channel lists (the preprocessing's
exclusion list, a bundle against a store, a served window or a replayed recording against
a bundle) matches by sensor name through this module, so a model trained on one system's
names takes another system's recording by sensor, and two different sensor sets are
never mixed silently: the error lists the missing and the extra sensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

_SERIAL = re.compile(r"^(?P<sensor>.+?)-\d+$")
_SHOWN = 8  # names listed per kind of mismatch before "and N more"


class SensorMismatchError(ValueError):
    """Two channel lists do not hold the same sensors; the message names the difference."""

    def __init__(
        self, message: str, missing: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.missing, self.extra = list(missing), list(extra)


def sensor_name(channel: str) -> str:
    """The channel's sensor: ``"MLC11-1609"`` -> ``"MLC11"``; a name without serial is kept."""
    match = _SERIAL.match(channel.strip())
    return match.group("sensor") if match else channel.strip()


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _index(names: Sequence[str], label: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        sensor = sensor_name(name)
        if sensor in index:
            raise SensorMismatchError(
                f"{label} names sensor {sensor!r} twice ({names[index[sensor]]!r} and {name!r})"
            )
        index[sensor] = i
    return index


def match_sensors(
    expected: Sequence[str],
    got: Sequence[str],
    *,
    allow_extra: bool = False,
    expected_label: str = "expected",
    got_label: str = "got",
) -> np.ndarray:
    """Indices into `got` that put its channels in `expected`'s order, matched by sensor.

    ``data[match_sensors(expected, got)]`` (data rows in `got`'s order) is the data in
    `expected`'s order. A sensor of `expected` absent from `got` is an error; so is a
    sensor of `got` absent from `expected` unless `allow_extra` (a recording holds more
    channels than a model needs, a window or a store must hold exactly its sensors). The
    error (`SensorMismatchError`) names the missing and extra sensors; the labels name
    the two lists in it ("the bundle", "the store").
    """
    want, have = _index(expected, expected_label), _index(got, got_label)
    missing = [expected[i] for s, i in want.items() if s not in have]
    extra = [got[i] for s, i in have.items() if s not in want]
    if missing or (extra and not allow_extra):
        parts = []
        if missing:
            parts.append(f"{got_label} lacks {len(missing)} sensor(s): {_listed(missing)}")
        if extra and not allow_extra:
            parts.append(f"{got_label} has {len(extra)} sensor(s) {expected_label} lacks: "
                         f"{_listed(extra)}")  # fmt: skip
        raise SensorMismatchError(
            f"{got_label} ({len(got)} channels) and {expected_label} ({len(expected)} channels) "
            f"differ: {'; '.join(parts)}",
            missing,
            extra,
        )
    return np.array([have[s] for s in want], dtype=np.int64)


def same_sensors(expected: Sequence[str], got: Sequence[str]) -> bool:
    """Whether the two lists hold the same sensors in the same order (serials aside)."""
    return [sensor_name(c) for c in expected] == [sensor_name(c) for c in got]


def require_same_sensors(
    expected: Sequence[str], got: Sequence[str], expected_label: str, got_label: str
) -> None:
    """Refuse two channel lists that are not the same sensors in the same order.

    For data that cannot be reordered where it is compared (a bundle against a store's
    epochs): a different set names the missing/extra sensors, a different order says so.
    """
    perm = match_sensors(expected, got, expected_label=expected_label, got_label=got_label)
    if not np.array_equal(perm, np.arange(len(expected))):
        first = int(np.flatnonzero(perm != np.arange(len(expected)))[0])
        raise SensorMismatchError(
            f"{got_label} holds the sensors of {expected_label} in another order "
            f"(position {first}: {got[first]!r} vs {expected[first]!r})"
        )


def excluded(channels: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """The channels whose sensor is listed in `exclude` (any serial): ``MRO11-1609`` in
    `exclude` drops ``MRO11-4304`` too, since it is the same broken sensor position."""
    drop = {sensor_name(c) for c in exclude}
    return [c for c in channels if sensor_name(c) in drop]
