"""Channel names of a served window: parsing, the sensor match, the per-list cache."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from megdecode.serve.channels import (
    ChannelOrder,
    channels_from_header,
    channels_value,
    dropped,
)
from megdecode.serve.errors import ApiError

MODEL = ["MLC11-1609", "MLC12-1609", "MRO12-1609", "MZO01-1609"]


def _error(fn: Callable[..., object], *args: object) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value.status, info.value.error, info.value.detail


def test_named_rows_in_any_order_and_serial_reach_the_model_in_its_order() -> None:
    order = ChannelOrder(MODEL)
    x = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    sent = ["MZO01-4304", "MLC11-4304", "EEG057-4304", "MRO12-4304", "MLC12-4304"]
    rows = np.stack([x[3], x[0], np.full(3, 9.0, np.float32), x[2], x[1]])
    np.testing.assert_array_equal(order.align(rows, sent), x)
    assert dropped(sent, order.picks(tuple(sent))) == ["EEG057-4304"]
    assert order.align(x, None) is x  # no names: taken as it is (the shape check decides)
    assert order.align(x, MODEL) is x  # the model's own order: no copy


def test_a_missing_sensor_is_a_422_naming_it_and_extras_can_be_refused() -> None:
    x = np.zeros((3, 2), np.float32)
    status, error, detail = _error(ChannelOrder(MODEL).align, x, MODEL[:2] + MODEL[3:])
    assert (status, error) == (422, "channel_mismatch") and "MRO12" in detail
    strict = ChannelOrder(MODEL[:3], allow_extra=False)
    status, error, detail = _error(strict.align, np.zeros((4, 2), np.float32), MODEL)
    assert error == "channel_mismatch" and "MZO01" in detail
    assert _error(ChannelOrder(MODEL).align, x, MODEL)[:2] == (422, "invalid_shape")


def test_the_permutation_is_computed_once_per_distinct_list() -> None:
    order = ChannelOrder(MODEL)
    sent = tuple(reversed([c.replace("1609", "4304") for c in MODEL]))
    x = np.ones((4, 2), np.float32)
    for _ in range(5):
        order.align(x, list(sent))
    info = order.picks.cache_info()
    assert (info.misses, info.hits) == (1, 4)
    assert order.picks(sent) is order.picks(sent) and not order.picks(sent).flags.writeable
    with pytest.raises(ApiError):  # an error is not cached: each request gets its own
        order.align(x[:3], list(sent[:3]))
    assert order.picks.cache_info().currsize == 1


def test_channel_lists_from_json_and_header() -> None:
    assert channels_value(None) is None and channels_from_header(None) is None
    assert channels_value([" MLC11-4304", "MLC12"]) == ("MLC11-4304", "MLC12")
    assert channels_from_header("MLC11-4304, MLC12-4304") == ("MLC11-4304", "MLC12-4304")
    for bad in ([], "MLC11", [1, 2], ["ok", ""], ["x" * 65]):
        assert _error(channels_value, bad)[:2] == (422, "invalid_channels"), bad
    for bad_header in ("", "MLC11,,MLC12"):
        assert _error(channels_from_header, bad_header)[:2] == (422, "invalid_channels")
