"""Hypothesis strategies for arbitrary requests to the app's OpenAPI operations."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import strategies as st

# No leading whitespace: requests refuses such a header value before sending it.
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24).map(
    str.lstrip
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)
FILLS = ("zeros", "normal", "nan", "inf", "huge", "text", "nested")


def window_data(shape: tuple[int, int], fill: str, seed: int) -> Any:
    """A C x T 'data' field: numbers, or the kinds of garbage a client may send."""
    c, t = shape
    x = np.random.default_rng(seed).standard_normal((c, t)) if fill != "zeros" else np.zeros((c, t))
    rows: list[Any] = x.tolist()
    if rows and rows[0]:
        if fill == "nan":
            rows[0][0] = float("nan")
        elif fill == "inf":
            rows[-1][-1] = float("-inf")
        elif fill == "huge":
            rows[0][0] = 1e300
        elif fill == "text":
            rows[0][0] = "1.0"
        elif fill == "nested":
            rows[0][0] = [1.0]
    return rows


def bodies(
    n_channels: int, n_times: int, subjects: list[str], channels: list[str] | None = None
) -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    """(body, headers): JSON windows of near-right shapes, arbitrary JSON, raw bytes, junk;
    with or without channel names (the model's, shuffled or cut, or garbage)."""
    model_names = list(channels or [f"CH{i:03d}" for i in range(n_channels)])
    names = (
        st.none()
        | st.permutations(model_names).map(list)
        | st.permutations(model_names).map(lambda p: p[1:])
        | st.lists(st.text(max_size=12), max_size=4)
        | JSON
    )
    shapes = st.sampled_from(
        [
            (n_channels, n_times),
            (n_channels, n_times - 1),
            (n_channels - 1, n_times),
            (1, 1),
            (n_times, n_channels),
            (2, 3),
        ]
    )
    subject = (
        st.sampled_from(subjects)
        | st.integers(-3, 5)
        | SCALARS
        | st.lists(st.integers(), max_size=2)
    )
    json_window = st.builds(
        lambda s, shape, fill, seed, ch: {
            "subject": s,
            "data": window_data(shape, fill, seed),
            **({} if ch is None else {"channels": ch}),
        },
        subject,
        shapes,
        st.sampled_from(FILLS),
        st.integers(0, 10),
        names,
    )
    as_json = (json_window | JSON).map(
        lambda doc: (json.dumps(doc).encode(), {"content-type": "application/json"})
    )

    def raw(
        shape: tuple[int, int],
        extra: int,
        subject_h: str,
        shape_h: str | None,
        dtype: str | None,
        channels_h: str | None,
    ) -> tuple[bytes, dict[str, str]]:
        values = np.zeros(shape, "<f4").tobytes()[: max(0, shape[0] * shape[1] * 4 + extra)]
        headers = {
            "content-type": "application/octet-stream",
            "x-subject": subject_h,
            "x-shape": shape_h if shape_h is not None else f"{shape[0]},{shape[1]}",
        }
        if dtype is not None:
            headers["x-dtype"] = dtype
        if channels_h is not None:
            headers["x-channels"] = channels_h
        return values + b"\x00" * max(0, extra), headers

    as_bytes = st.builds(
        raw,
        shapes,
        st.integers(-8, 8),
        st.sampled_from(subjects) | HEADER_TEXT,
        st.none() | HEADER_TEXT,
        st.none() | st.sampled_from(["float32", "float64", "<f4", "int8"]) | HEADER_TEXT,
        st.none() | st.permutations(model_names).map(",".join) | HEADER_TEXT,
    )
    junk = st.tuples(
        st.binary(max_size=512),
        st.fixed_dictionaries(
            {
                "content-type": st.sampled_from(
                    [
                        "application/json",
                        "application/octet-stream",
                        "text/plain",
                        "multipart/form-data",
                        "",
                    ]
                )
                | HEADER_TEXT
            }
        ),
    )
    return as_json | as_bytes | junk


def queries() -> st.SearchStrategy[dict[str, str]]:
    keys = st.sampled_from(["top_k", "steps", "guidance", "seed", "format", "other"])
    values = (
        st.integers(-5, 100).map(str)
        | st.floats(-1e3, 1e3).map(str)
        | st.sampled_from(["png", "json", "nan", "inf", ""])
        | HEADER_TEXT
    )
    return st.dictionaries(keys, values, max_size=3)


def auth_headers() -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(
        st.sampled_from(["authorization", "x-api-token", "accept", "content-length-ish"]),
        HEADER_TEXT,
        max_size=2,
    )
