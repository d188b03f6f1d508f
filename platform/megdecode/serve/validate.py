"""Pure checks of a decode request: body -> (subject, window) or an `ApiError` saying why.

The server must never crash or decode garbage on bad input (DESIGN §6), so each class of
bad input has its own status and code: a body that is not JSON / not the declared bytes
is 400, a well-formed request the model cannot take (shape, non-finite values, unknown
subject) is 422, an unsupported content type or dtype is 415.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from megdecode.serve import jsonio
from megdecode.serve.channels import ChannelOrder
from megdecode.serve.errors import ApiError

logger = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
OCTET_TYPES = ("application/octet-stream",)
SHAPE_HEADER, SUBJECT_HEADER, DTYPE_HEADER = "x-shape", "x-subject", "x-dtype"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The JSON object of the body; 400 when it is not one."""
    try:
        doc = jsonio.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(
            400, "malformed_json", f"the body is not valid JSON ({type(exc).__name__})"
        ) from None
    if not isinstance(doc, dict):
        raise ApiError(
            400, "malformed_json", f"the body must be a JSON object, got {type(doc).__name__}"
        )
    return doc


def subject_value(value: Any) -> str | int:
    """A subject label (str) or index (int); anything else is 422."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ApiError(422, "invalid_subject", "subject must be a string label or an integer index")
    if isinstance(value, str) and not 0 < len(value) <= 64:
        raise ApiError(422, "invalid_subject", "subject label must have 1 to 64 characters")
    return value


def window_from_json(doc: Mapping[str, Any]) -> tuple[str | int, np.ndarray]:
    """{"subject": ..., "data": C x T numbers} -> (subject, float32 (C, T)); shape checked later."""
    if "subject" not in doc:
        raise ApiError(422, "missing_field", "the body needs 'subject'")
    if "data" not in doc:
        raise ApiError(422, "missing_field", "the body needs 'data' (C x T numbers)")
    subject = subject_value(doc["subject"])
    data = doc["data"]
    if not isinstance(data, list) or not data or not all(isinstance(row, list) for row in data):
        raise ApiError(
            422, "invalid_shape", "data must be a non-empty list of channel rows (C x T)"
        )
    n = len(data[0])
    if any(len(row) != n for row in data):
        raise ApiError(422, "invalid_shape", "data rows (channels) differ in length")
    try:
        arr = np.array(data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(422, "invalid_dtype", "data must hold numbers only") from None
    if arr.ndim != 2:
        raise ApiError(422, "invalid_shape", f"data must be 2-D (C x T), got {arr.ndim}-D")
    return subject, _to_float32(arr)


def _to_float32(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ApiError(422, "non_finite", "data holds NaN or infinite values")
    if np.abs(arr).max(initial=0.0) > np.finfo(np.float32).max:
        raise ApiError(422, "non_finite", "data values overflow float32")
    return arr.astype(np.float32)


def parse_shape(text: str | None) -> tuple[int, int]:
    """'C,T' (or 'CxT') from the X-Shape header."""
    if not text:
        raise ApiError(422, "missing_header", f"raw bytes need an {SHAPE_HEADER} header 'C,T'")
    parts = text.replace("x", ",").split(",")
    try:
        c, t = (int(p) for p in parts)
    except ValueError:
        raise ApiError(
            422, "invalid_header", f"{SHAPE_HEADER} must be 'C,T' with two integers"
        ) from None
    if c < 1 or t < 1:
        raise ApiError(422, "invalid_header", f"{SHAPE_HEADER} dimensions must be positive")
    return c, t


def window_from_bytes(body: bytes, headers: Mapping[str, str]) -> tuple[str | int, np.ndarray]:
    """Raw little-endian float32 C-order bytes + X-Shape / X-Subject headers -> (subject, (C, T))."""
    dtype = headers.get(DTYPE_HEADER, "float32").lower()
    if dtype not in ("float32", "<f4", "f4"):
        raise ApiError(
            415, "unsupported_dtype", f"raw bytes must be little-endian float32, got {dtype!r}"
        )
    c, t = parse_shape(headers.get(SHAPE_HEADER))
    if len(body) != c * t * 4:
        raise ApiError(
            400,
            "malformed_bytes",
            f"{SHAPE_HEADER} {c},{t} needs {c * t * 4} bytes, got {len(body)}",
        )
    raw_subject = headers.get(SUBJECT_HEADER)
    if raw_subject is None:
        raise ApiError(422, "missing_header", f"raw bytes need an {SUBJECT_HEADER} header")
    arr = np.frombuffer(body, dtype="<f4").reshape(
        c, t
    )  # the header carries a label, never an index
    if not np.isfinite(arr).all():  # float32 already: finite means it fits
        raise ApiError(422, "non_finite", "data holds NaN or infinite values")
    return subject_value(raw_subject), arr


def check_window(arr: np.ndarray, n_channels: int, n_times: int) -> np.ndarray:
    """The model's shape, exactly: 422 naming both shapes otherwise."""
    if arr.shape != (n_channels, n_times):
        raise ApiError(
            422,
            "invalid_shape",
            f"data has shape {arr.shape[0]} x {arr.shape[1]}, the model needs {n_channels} x {n_times} (C x T)",
        )
    return arr


def align_channels(
    arr: np.ndarray,
    channels: Sequence[str] | None,
    expected: Sequence[str],
    *,
    allow_extra: bool = False,
) -> np.ndarray:
    """The (C, T) window with its rows in the model's channel order, matched by sensor name.

    `channels` names the window's rows as the client sent them (None: already the model's
    order, checked by shape only). A window from another CTF system of the same sensors
    (``MLC11-4304`` for the model's ``MLC11-1609``), in any order, is reordered; missing
    sensors (and extra ones unless `allow_extra`) are 422 "channel_mismatch" naming them.
    The served routes keep one `ChannelOrder` per model instead, which caches the order.
    """
    return ChannelOrder(expected, allow_extra=allow_extra).align(arr, channels)


def subject_index(subject: str | int, subjects: Sequence[str]) -> int:
    """Label or index -> index; a label that is all digits is tried as a label first."""
    if isinstance(subject, str):
        if subject in subjects:
            return list(subjects).index(subject)
        raise ApiError(
            422, "unknown_subject", f"unknown subject {subject!r}; known: {', '.join(subjects)}"
        )
    if 0 <= subject < len(subjects):
        return int(subject)
    raise ApiError(
        422, "unknown_subject", f"subject index {subject} out of range 0..{len(subjects) - 1}"
    )


def bounded(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> float | int:
    """An option within [lo, hi] (from the config); 422 otherwise."""
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise ApiError(
            422,
            "invalid_option",
            f"{name} must be {'an integer' if integer else 'a finite number'}",
        )
    if not lo <= value <= hi:
        raise ApiError(422, "invalid_option", f"{name}={value} is outside [{lo}, {hi}]")
    return value
