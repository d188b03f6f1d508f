"""Pure serving pieces: request validation, the config tree, the gallery, the ring buffer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megdecode.config import ConfigError
from megdecode.evaluation.retrieval import retrieval_ranks
from megdecode.serve.config import ServeConfig, read_config_file
from megdecode.serve.errors import ApiError
from megdecode.serve.gallery import Gallery
from megdecode.serve.online_preprocess import RingBuffer
from megdecode.serve.validate import (
    bounded,
    check_window,
    parse_json_body,
    subject_index,
    window_from_bytes,
    window_from_json,
)

REPO = Path(__file__).resolve().parents[3]


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value.status, info.value.error


def test_json_windows_and_each_bad_class() -> None:
    subject, x = window_from_json({"subject": "A", "data": [[1, 2, 3], [4, 5, 6]]})
    assert subject == "A" and x.dtype == np.float32 and x.shape == (2, 3)
    assert _status(parse_json_body, b"{nope") == (400, "malformed_json")
    assert _status(parse_json_body, b"[1, 2]") == (400, "malformed_json")
    assert _status(window_from_json, {"data": [[1.0]]}) == (422, "missing_field")
    assert _status(window_from_json, {"subject": True, "data": [[1.0]]}) == (422, "invalid_subject")
    assert _status(window_from_json, {"subject": "A", "data": [[1.0], [1.0, 2.0]]}) == (
        422,
        "invalid_shape",
    )
    assert _status(window_from_json, {"subject": "A", "data": [["x"]]}) == (422, "invalid_dtype")
    assert _status(window_from_json, {"subject": "A", "data": [[1e39]]}) == (422, "non_finite")
    doc = json.loads('{"subject": "A", "data": [[NaN]]}')
    assert _status(window_from_json, doc) == (422, "non_finite")
    assert _status(check_window, np.zeros((2, 3), np.float32), 2, 4) == (422, "invalid_shape")


def test_bytes_windows_need_their_headers() -> None:
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    headers = {"x-shape": "2,3", "x-subject": "A"}
    subject, y = window_from_bytes(x.tobytes(), headers)
    np.testing.assert_array_equal(x, y)
    assert _status(window_from_bytes, x.tobytes()[:-4], headers) == (400, "malformed_bytes")
    assert _status(window_from_bytes, x.tobytes(), {"x-subject": "A"}) == (422, "missing_header")
    assert _status(window_from_bytes, x.tobytes(), headers | {"x-shape": "2;3"}) == (
        422,
        "invalid_header",
    )
    assert _status(window_from_bytes, x.tobytes(), headers | {"x-dtype": "float64"}) == (
        415,
        "unsupported_dtype",
    )


def test_subjects_and_bounds() -> None:
    assert subject_index("b", ["a", "b"]) == 1 and subject_index(0, ["a", "b"]) == 0
    assert _status(subject_index, "c", ["a", "b"]) == (422, "unknown_subject")
    assert _status(subject_index, 2, ["a", "b"]) == (422, "unknown_subject")
    assert bounded("steps", 3, 1, 5, True) == 3
    assert _status(bounded, "steps", 6, 1, 5, True)[0] == 422
    assert _status(bounded, "steps", 2.5, 1, 5, True)[0] == 422
    assert _status(bounded, "g", float("nan"), 0, 5)[0] == 422


def test_shipped_yaml_reads_and_overrides_defaults() -> None:
    cfg, doc = read_config_file(REPO / "serve_apps" / "config.yaml")
    assert cfg.http.host == "127.0.0.1" and doc["http_options"]["host"] == "127.0.0.1"
    assert cfg.decoder.model.startswith("models:/")
    assert ServeConfig.from_mapping({"decoder": {"max_batch_size": 4}}).decoder.max_batch_size == 4
    with pytest.raises(ConfigError, match="unknown key"):
        ServeConfig.from_mapping({"decoder": {"batch": 4}})
    with pytest.raises(ConfigError, match="num_gpus"):
        ServeConfig.from_mapping({"generator": {"num_gpus": 2}})


def test_gallery_topk_is_cosine_order() -> None:
    g = Gallery(np.array([10, 11, 12]), np.eye(3, dtype=np.float32), ["a", "b", "c"], ["", "", ""])
    hits = g.topk(np.array([[0.1, 2.0, 1.0]]), 2)[0]
    assert [h["image_id"] for h in hits] == [11, 12] and hits[0]["category"] == "b"
    assert g.rank_of(np.array([0.1, 2.0, 1.0]), 12) == 1
    # ties as in evaluation: a prediction equally close to every image ranks at random
    # (rank 0 or 1 or 2 for seed 0), never last by rule as pessimistic ties would put it
    tied = g.rank_of(np.array([1.0, 1.0, 1.0]), 12)
    expected = retrieval_ranks(np.ones((1, 3)), np.eye(3), np.array([2]))[0]
    assert tied == expected and expected < 2


def test_ring_buffer_wraps() -> None:
    buf = RingBuffer(2, 5)
    data = np.arange(24, dtype=float).reshape(2, 12)
    for start in range(0, 12, 3):
        buf.extend(data[:, start : start + 3])
    np.testing.assert_array_equal(buf.get(7, 12), data[:, 7:12])
    with pytest.raises(IndexError):
        buf.get(6, 12)
