"""The app on a real Serve (127.0.0.1, free port, tiny bundle): endpoints, bad input, auth, overload,
and served answers against the bundle run offline (`offline_reference`): /v1/decode and the
stream for every subject, batched concurrent requests, /v1/reconstruct against the CLI."""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import requests
from offline_reference import (
    LATENT_ATOL,
    SCORE_ATOL,
    OfflineDecoder,
    assert_discriminates,
    assert_same_decode,
    assert_topk_matches,
)
from serve_helpers import is_error_body

from megdecode.bundle_io import load_bundle
from megdecode.serve.app import free_port

if TYPE_CHECKING:
    from megdecode.serve.config import ServeConfig

pytestmark = [pytest.mark.serve, pytest.mark.ray]


@pytest.fixture(scope="module")
def served(
    ray_local: None, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, object]]:
    from ray import serve

    from megdecode.generate.tiny import build_tiny_generator
    from megdecode.serve.app import start
    from megdecode.serve.config import ServeConfig

    b = load_bundle(tiny_bundle)
    weights = build_tiny_generator(
        tmp_path_factory.mktemp("gen") / "g", {b.latent_name: len(b.latent_mean)}, size=16
    )
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "megdecode-test",
            "http": {
                "port": free_port(),
                "num_cpus": 0.1,
                "max_body_bytes": 600_000,
                "request_timeout_s": 5,
                "max_decodes_in_flight": 8,  # a full batch: rounds of 8 reach the decoder
            },
            "decoder": {
                "model": str(tiny_bundle),
                "num_cpus": 0.2,
                "max_queued_requests": 4,
                "max_ongoing_requests": 4,
                "max_batch_size": 8,
            },
            "generator": {
                "weights": str(weights),
                "num_cpus": 0.2,
                "max_steps": 4,
                "default_steps": 2,
                "min_replicas": 1,
                "max_replicas": 1,
            },
            "stream": {"max_chunk_s": 10.0},
        }
    )
    url = start(cfg, token="")
    yield url, cfg
    serve.delete(cfg.app_name)


@pytest.fixture(scope="module")
def offline(tiny_bundle: Path) -> OfflineDecoder:
    """The served bundle's model, loaded offline in the test process."""
    return OfflineDecoder.load(tiny_bundle)


def _window(bundle_dir: Path, seed: int = 0) -> tuple[str, np.ndarray]:
    b = load_bundle(bundle_dir)
    rng = np.random.default_rng(seed)
    return b.subjects[0], rng.standard_normal((len(b.ch_names), b.n_times)).astype(np.float32)


def _post(url: str, subject: object, data: object, **kw: object) -> requests.Response:
    return requests.post(
        f"{url}/v1/decode", json={"subject": subject, "data": data}, timeout=30, **kw
    )


def _is_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and "Traceback" not in body["detail"]
    return body


def test_health_ready_model_and_openapi(served: tuple[str, object], tiny_bundle: Path) -> None:
    url, _ = served
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    card = requests.get(f"{url}/v1/model", timeout=10).json()
    b = load_bundle(tiny_bundle)
    assert card["window"]["n_times"] == b.n_times and card["channels"]["n"] == len(b.ch_names)
    assert card["subjects"] == b.subjects and card["streaming"]["filter_phase"] == "causal"
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1/decode", "/v1/reconstruct", "/v1/model", "/healthz", "/readyz"} <= set(
        schema["paths"]
    )
    for path in ("/v1/decode", "/v1/reconstruct"):  # the optional channel names, both forms
        op = schema["paths"][path]["post"]
        assert "X-Channels" in {p["name"] for p in op["parameters"]}
        assert (
            "channels" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
        )


def test_decode_json_and_bytes_agree(served: tuple[str, object], tiny_bundle: Path) -> None:
    url, _ = served
    subject, x = _window(tiny_bundle)
    r = _post(url, subject, x.tolist(), params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["top_k"]) == 3 and {"image_id", "category", "score"} <= set(body["top_k"][0])
    assert len(body["latent"]) == len(load_bundle(tiny_bundle).latent_mean)
    assert body["timing"]["server_ms"] > 0 and body["model"]["name"]
    raw = requests.post(
        f"{url}/v1/decode",
        data=x.tobytes(),
        params={"top_k": 3},
        timeout=30,
        headers={
            "content-type": "application/octet-stream",
            "x-shape": f"{x.shape[0]},{x.shape[1]}",
            "x-subject": subject,
        },
    )
    assert raw.status_code == 200, raw.text
    np.testing.assert_allclose(raw.json()["latent"], body["latent"], rtol=1e-5, atol=1e-6)
    assert [h["image_id"] for h in raw.json()["top_k"]] == [h["image_id"] for h in body["top_k"]]


def _store_windows(causal_run: Path, tiny_bundle: Path, subject: str, n: int) -> np.ndarray:
    """`n` epochs of `subject` from the causal store cut to the bundle's window (N, C, T): the
    offline preprocessing's model inputs for that subject."""
    from megdecode.data import store as epoch_store

    b = load_bundle(tiny_bundle)
    X, _ = epoch_store.load_epochs(
        causal_run / "store", subjects=[subject], tmin=b.tmin, tmax=b.tmax
    )
    assert X.shape[0] >= n and X.shape[1:] == (len(b.ch_names), b.n_times), X.shape
    return np.ascontiguousarray(X[:n], np.float32)


def _post_bytes(url: str, subject: str, x: np.ndarray, top_k: int) -> requests.Response:
    return requests.post(
        f"{url}/v1/decode",
        data=x.tobytes(),
        params={"top_k": top_k},
        timeout=30,
        headers={
            "content-type": "application/octet-stream",
            "x-shape": f"{x.shape[0]},{x.shape[1]}",
            "x-subject": subject,
        },
    )


def test_decode_equals_the_offline_model_for_every_subject(
    served: tuple[str, object], causal_run: Path, tiny_bundle: Path, offline: OfflineDecoder
) -> None:
    """Each subject's own store epochs, as JSON (label and index) and as bytes: the latent and
    the full gallery ranking are the offline model's for that window and that subject."""
    url, _ = served
    k = len(offline.gallery_ids)
    for index, subject in enumerate(offline.subjects):
        windows = _store_windows(causal_run, tiny_bundle, subject, 2)
        latents = offline.latents(windows, np.full(len(windows), index))
        other = (index + 1) % len(offline.subjects)
        assert_discriminates(
            latents,
            offline.latents(windows, np.full(len(windows), other)),
            LATENT_ATOL,
            "another subject's latent",
        )
        scores = offline.scores(latents)
        for x, z, row in zip(windows, latents, scores, strict=True):
            answers = [
                _post(url, subject, x.tolist(), params={"top_k": k}),
                _post(url, index, x.tolist(), params={"top_k": k}),
                _post_bytes(url, subject, x, k),
            ]
            for r in answers:
                assert r.status_code == 200, r.text
                assert_same_decode(r.json(), z, row, offline.gallery_ids)


def test_concurrent_decodes_of_distinct_windows_and_subjects_each_get_their_own_answer(
    served: tuple[str, object], causal_run: Path, tiny_bundle: Path, offline: OfflineDecoder
) -> None:
    """Rounds of 8 simultaneous requests, distinct windows, subjects interleaved: the decoder
    stacks them (`@serve.batch`), and each must still get its own window's and subject's
    answer. A batch that permuted rows or ran every row with one subject's layer fails here
    (both gaps are checked to exceed the tolerance). Rounds go on until at least 8 answers
    came from batches of two or more, so mixed-subject batches were served. A round is never
    larger than what the app admits at once (its decode limit, the decoder's ongoing + queued
    requests), and a request shed as overloaded is sent again: a 503 is the right answer
    beyond the limit (test_overload_gives_503_with_retry_after_not_a_hang) and not this
    test's subject."""
    import random
    import threading
    import time

    from megdecode.serve.config import ServeConfig

    url, cfg = served
    per_subject = 4
    windows = np.concatenate(
        [_store_windows(causal_run, tiny_bundle, s, per_subject) for s in offline.subjects]
    )
    subjects = np.repeat(np.arange(len(offline.subjects)), per_subject)
    latents = offline.latents(windows, subjects)
    n = len(windows)
    assert isinstance(cfg, ServeConfig)
    queue = cfg.decoder.max_ongoing_requests + cfg.decoder.max_queued_requests
    per_round = min(n, cfg.decode_limit(), queue)
    assert per_round == 8
    for shift in range(1, n):  # any other request's answer (a permuted batch)
        assert_discriminates(
            latents, np.roll(latents, shift, axis=0), LATENT_ATOL, "another window's latent"
        )
    for shift in range(1, len(offline.subjects)):  # any other subject (one subject per batch)
        wrong = offline.latents(windows, (subjects + shift) % len(offline.subjects))
        assert_discriminates(latents, wrong, LATENT_ATOL, "another subject's latent")
    scores = offline.scores(latents)
    k = len(offline.gallery_ids)
    rng = random.Random(0)

    def one(i: int, gate: threading.Barrier) -> tuple[int, requests.Response]:
        gate.wait(timeout=30)  # a round leaves together, so it queues at the decoder together
        for _ in range(50):  # an overloaded app sheds a few at the limit on a busy machine
            r = _post_bytes(url, offline.subjects[subjects[i]], windows[i], k)
            if r.status_code != 503 or r.json()["error"] != "overloaded":
                break
            time.sleep(0.1)
        return i, r

    batched, sizes = 0, []
    for _ in range(20):
        # other requests in another arrival order, so other batch compositions
        order = rng.sample(range(n), per_round)
        gate = threading.Barrier(per_round)
        with cf.ThreadPoolExecutor(per_round) as pool:
            answers = list(pool.map(one, order, [gate] * per_round))
        for i, r in answers:
            assert r.status_code == 200, r.text
            body = r.json()
            assert_same_decode(body, latents[i], scores[i], offline.gallery_ids)
            sizes.append(body["timing"]["batch_size"])
        batched = sum(s > 1 for s in sizes)
        if batched >= 8:
            break
    assert batched >= 8, f"the decoder never stacked requests: batch sizes {sizes}"


def test_each_bad_input_gets_its_status_and_the_app_keeps_serving(
    served: tuple[str, object], tiny_bundle: Path
) -> None:
    url, cfg = served
    subject, x = _window(tiny_bundle)
    data = x.tolist()
    _is_error(_post(url, subject, data[:-1]), 422)  # wrong shape
    bad = [row[:] for row in data]
    bad[0][0] = float("nan")
    r = requests.post(
        f"{url}/v1/decode",
        data=json.dumps({"subject": subject, "data": bad}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert _is_error(r, 422)["error"] == "non_finite"
    assert (
        _is_error(_post(url, subject, [["a"] * x.shape[1]] * x.shape[0]), 422)["error"]
        == "invalid_dtype"
    )
    r = requests.post(
        f"{url}/v1/decode",
        data=b'{"subject": 1, "data": [[1',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert _is_error(r, 400)["error"] == "malformed_json"
    r = requests.post(
        f"{url}/v1/decode",
        data=b"\x00" * 12,
        timeout=30,
        headers={
            "content-type": "application/octet-stream",
            "x-shape": "3,5",
            "x-subject": subject,
        },
    )
    assert _is_error(r, 400)["error"] == "malformed_bytes"
    r = requests.post(
        f"{url}/v1/decode",
        data=x.astype(np.float64).tobytes(),
        timeout=30,
        headers={
            "content-type": "application/octet-stream",
            "x-shape": "3,5",
            "x-subject": subject,
            "x-dtype": "float64",
        },
    )
    _is_error(r, 415)
    assert _is_error(_post(url, "nobody", data), 422)["error"] == "unknown_subject"
    big = b"[" * 700_000
    r = requests.post(
        f"{url}/v1/decode", data=big, headers={"content-type": "application/json"}, timeout=30
    )
    _is_error(r, 413)
    _is_error(
        requests.post(
            f"{url}/v1/decode", data=b"x", headers={"content-type": "text/plain"}, timeout=30
        ),
        415,
    )
    _is_error(requests.get(f"{url}/v1/nothing", timeout=30), 404)
    _is_error(_post(url, subject, data, params={"top_k": 0}), 422)
    _is_error(_post(url, subject, data, params={"top_k": "x"}), 422)
    assert _post(url, subject, data).status_code == 200  # still serving


@pytest.mark.slow  # two redeploys: Serve restarts every replica of a Python-built app (~60 s here)
def test_auth_on_and_off(served: tuple[str, object], tiny_bundle: Path) -> None:
    from ray import serve

    from megdecode.serve.app import build_app

    url, cfg = served
    subject, x = _window(tiny_bundle)
    serve.run(build_app(cfg, token="s3cret"), name=cfg.app_name, route_prefix="/")
    try:
        _is_error(_post(url, subject, x.tolist()), 401)
        _is_error(_post(url, subject, x.tolist(), headers={"authorization": "Bearer wrong"}), 401)
        assert (
            _post(url, subject, x.tolist(), headers={"authorization": "Bearer s3cret"}).status_code
            == 200
        )
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes stay open
    finally:
        serve.run(build_app(cfg, token=""), name=cfg.app_name, route_prefix="/")
    assert _post(url, subject, x.tolist()).status_code == 200


def test_overload_gives_503_with_retry_after_not_a_hang(
    served: tuple[str, object], tiny_bundle: Path
) -> None:
    url, _ = served
    subject, x = _window(tiny_bundle)
    body = x.tobytes()
    headers = {
        "content-type": "application/octet-stream",
        "x-shape": f"{x.shape[0]},{x.shape[1]}",
        "x-subject": subject,
    }

    def one(_: int) -> tuple[int, str | None]:
        r = requests.post(f"{url}/v1/decode", data=body, headers=headers, timeout=30)
        return r.status_code, r.headers.get("retry-after")

    with cf.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(400)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0
    assert all(ra == "1" for c, ra in results if c == 503)
    assert _post(url, subject, x.tolist()).status_code == 200


def test_reconstruct_png_json_and_bounds(served: tuple[str, object], tiny_bundle: Path) -> None:
    url, _ = served
    subject, x = _window(tiny_bundle)
    body = {"subject": subject, "data": x.tolist()}
    r = requests.post(
        f"{url}/v1/reconstruct", json=body, params={"steps": 2, "seed": 3}, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    j = requests.post(
        f"{url}/v1/reconstruct",
        json=body,
        params={"steps": 2, "seed": 3, "format": "json"},
        timeout=120,
    )
    assert j.status_code == 200, j.text
    import base64

    assert base64.b64decode(j.json()["images"][0]) == r.content  # same seed, same image
    _is_error(
        requests.post(f"{url}/v1/reconstruct", json=body, params={"steps": 5}, timeout=30), 422
    )
    _is_error(
        requests.post(f"{url}/v1/reconstruct", json=body, params={"guidance": -1}, timeout=30), 422
    )
    _is_error(
        requests.post(
            f"{url}/v1/reconstruct", json={"subject": subject, "data": [[0.0]]}, timeout=30
        ),
        422,
    )


def test_served_png_equals_megdecode_reconstruct(
    served: tuple[str, ServeConfig], tiny_bundle: Path, tmp_path: Path
) -> None:
    """/v1/reconstruct equals `megdecode reconstruct` on the same window, byte for byte: the
    bundle stores its validation prediction statistics, the generator is random-init, and
    equal PNG bytes mean the same window -> latents -> scaled latents -> image path ran."""
    from typer.testing import CliRunner

    from megdecode.cli import app

    url, cfg = served
    generator = cfg.generator.weights
    card = requests.get(f"{url}/v1/model", timeout=30).json()
    assert card["prediction_stats"]["reference"] == "val" and card["prediction_stats"]["n"] > 1
    assert card["warnings"] == []
    subject, x = _window(tiny_bundle, seed=7)
    body = tmp_path / "window.json"
    body.write_text(json.dumps({"subject": subject, "data": x.tolist()}))
    pngs = []
    for seed, steps in ((3, 2), (11, 3)):
        served_png = requests.post(
            f"{url}/v1/reconstruct",
            data=body.read_bytes(),
            timeout=120,
            headers={"content-type": "application/json"},
            params={"steps": steps, "seed": seed, "guidance": 2.5},
        )
        assert served_png.status_code == 200, served_png.text
        out = tmp_path / f"offline-{seed}.png"
        result = CliRunner().invoke(
            app,
            [
                "reconstruct",
                "--bundle",
                str(tiny_bundle),
                "--generator",
                str(generator),
                "--window",
                str(body),
                "--seed",
                str(seed),
                "--steps",
                str(steps),
                "--guidance",
                "2.5",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert "z-scored with the bundle's val statistics" in result.output
        assert out.read_bytes() == served_png.content
        pngs.append(served_png.content)
    assert pngs[0] != pngs[1]  # the comparison is not between two constant images


def _stream(
    url: str, subject: str, raw: np.ndarray, top_k: int, **start: object
) -> tuple[dict, list[dict]]:
    """Replay `raw` (C, n) float32 through WS /v1/stream in 100-sample chunks: (ready, decodes).

    `start`: more fields of the start message (``channels``)."""
    from websockets.sync.client import connect

    decodes, chunk = [], 100
    with connect(url.replace("http", "ws") + "/v1/stream", max_size=2**24) as ws:
        ws.send(json.dumps({"subject": subject, "top_k": top_k, **start}))
        ready = json.loads(ws.recv(timeout=30))
        for start in range(0, raw.shape[1], chunk):
            ws.send(np.ascontiguousarray(raw[:, start : start + chunk]).tobytes())
        ws.send(json.dumps({"type": "end"}))
        for message in ws:
            msg = json.loads(message)
            if msg["type"] == "end":
                break
            if msg["type"] == "decode":
                decodes.append(msg)
    return ready, decodes


def test_stream_decodes_every_stride_as_the_offline_model_for_every_subject(
    served: tuple[str, object], causal_run: Path, tiny_bundle: Path, offline: OfflineDecoder
) -> None:
    """Each subject's own recording, streamed: every decode's full gallery ranking equals the
    offline model's on the window that `OnlinePreprocessor` cuts at that onset in this process
    (test_stream_offline shows those windows are the causal store's)."""
    from websockets.sync.client import connect

    from megdecode.data import bids
    from megdecode.data.meg_info import pick_meg
    from megdecode.serve.online_preprocess import OnlinePreprocessor
    from megdecode.serve.stream import StreamSpec

    url, _ = served
    b = load_bundle(tiny_bundle)
    k = len(offline.gallery_ids)  # the whole gallery: every score is compared
    for index, subject in enumerate(b.subjects):
        spec = StreamSpec.from_bundle(b, subject)
        rec = bids.read_run(
            causal_run / "bids", bids.find_runs(causal_run / "bids", subjects=[subject])[0]
        )
        raw = rec.raw.get_data(picks=pick_meg(rec.raw.info, spec.preprocess)).astype(np.float32)
        ready, decodes = _stream(url, subject, raw[:, :1500], k)
        assert (
            ready["type"] == "ready"
            and ready["n_channels"] == len(b.ch_names)
            and ready["filter_matches_training"]
        ), ready
        onsets = np.array([d["onset_sample"] for d in decodes])
        assert len(onsets) > 20 and np.all(np.diff(onsets) == ready["stride_samples"])
        pre = OnlinePreprocessor(spec, len(b.ch_names), extra_capacity=1500)
        pre.push(raw[:, :1500])
        windows = pre.windows(onsets)
        scores = offline.scores(offline.latents(windows, np.full(len(onsets), index)))
        other = (index + 1) % len(b.subjects)
        assert_discriminates(
            scores,
            offline.scores(offline.latents(windows, np.full(len(onsets), other))),
            SCORE_ATOL,
            "another subject's scores",
            margin=3.0,
        )
        for d, row in zip(decodes, scores, strict=True):
            assert len(d["top_k"]) == k
            assert_topk_matches(d["top_k"], row, offline.gallery_ids)
    with connect(
        url.replace("http", "ws") + "/v1/stream"
    ) as ws:  # a bad start message: an error, then closed
        ws.send(json.dumps({"subject": "nobody"}))
        assert json.loads(ws.recv(timeout=30))["error"] == "unknown_subject"


def _other_system(names: list[str]) -> list[str]:
    """The same sensors under another CTF-275's serial ("MLC11-1609" -> "MLC11-4304")."""
    from megdecode.data.sensors import sensor_name

    return [f"{sensor_name(c)}-4304" for c in names]


def _shuffled_with_extra(
    x: np.ndarray, names: list[str], seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """`x`'s rows shuffled, renamed to another system's serial, plus a sensor the model lacks."""
    perm = np.random.default_rng(seed).permutation(len(names))
    other = _other_system(names)
    extra = np.full((1, x.shape[1]), 7.0, np.float32)
    rows = np.concatenate([x[perm], extra])
    return rows, [other[i] for i in perm] + ["EEG057-4304"]


def test_named_channels_in_any_order_decode_as_the_model_order(
    served: tuple[str, object], tiny_bundle: Path, offline: OfflineDecoder
) -> None:
    """A window sent with "channels" (JSON) or X-Channels (bytes), rows shuffled under another
    system's serial and one extra sensor: the latent and ranking of the window in the model's
    order, which the shuffled rows taken as they are would not give."""
    url, _ = served
    b = load_bundle(tiny_bundle)
    subject, x = _window(tiny_bundle, seed=5)
    rows, names = _shuffled_with_extra(x, list(b.ch_names))
    k = len(offline.gallery_ids)
    z = offline.latents(x[None], np.zeros(1))
    assert_discriminates(
        z, offline.latents(rows[None, :-1], np.zeros(1)), LATENT_ATOL, "the unaligned window"
    )
    row = offline.scores(z)[0]
    as_json = requests.post(
        f"{url}/v1/decode",
        json={"subject": subject, "data": rows.tolist(), "channels": names},
        params={"top_k": k},
        timeout=30,
    )
    as_bytes = requests.post(
        f"{url}/v1/decode",
        data=rows.tobytes(),
        params={"top_k": k},
        timeout=30,
        headers={
            "content-type": "application/octet-stream",
            "x-shape": f"{rows.shape[0]},{rows.shape[1]}",
            "x-subject": subject,
            "x-channels": ",".join(names),
        },
    )
    for r in (as_json, as_bytes, _post(url, subject, x.tolist(), params={"top_k": k})):
        assert r.status_code == 200, r.text
        assert_same_decode(r.json(), z[0], row, offline.gallery_ids)


def test_a_window_missing_a_sensor_is_a_422_naming_it(
    served: tuple[str, object], tiny_bundle: Path
) -> None:
    """One sensor short (named channels): 422 channel_mismatch naming that sensor, for
    /v1/decode as JSON and bytes and for /v1/reconstruct; names that do not match the rows'
    count are a 422 invalid_shape."""
    from megdecode.data.sensors import sensor_name

    url, _ = served
    b = load_bundle(tiny_bundle)
    subject, x = _window(tiny_bundle, seed=6)
    names = _other_system(list(b.ch_names))
    lost = sensor_name(b.ch_names[3])
    keep = [i for i in range(len(names)) if i != 3]
    body = {"subject": subject, "data": x[keep].tolist(), "channels": [names[i] for i in keep]}
    answers = [
        requests.post(f"{url}/v1/decode", json=body, timeout=30),
        requests.post(
            f"{url}/v1/decode",
            data=np.ascontiguousarray(x[keep]).tobytes(),
            timeout=30,
            headers={
                "content-type": "application/octet-stream",
                "x-shape": f"{len(keep)},{x.shape[1]}",
                "x-subject": subject,
                "x-channels": ",".join(names[i] for i in keep),
            },
        ),
        requests.post(f"{url}/v1/reconstruct", json=body, params={"steps": 1}, timeout=30),
    ]
    for r in answers:
        err = _is_error(r, 422)
        assert err["error"] == "channel_mismatch" and lost in err["detail"], err
    short = {"subject": subject, "data": x.tolist(), "channels": names[:-1]}
    r = requests.post(f"{url}/v1/decode", json=short, timeout=30)
    assert _is_error(r, 422)["error"] == "invalid_shape"


def test_reconstruct_of_named_shuffled_channels_is_the_same_image(
    served: tuple[str, object], tiny_bundle: Path
) -> None:
    """/v1/reconstruct of the shuffled, renamed window with its names: the same PNG bytes."""
    url, _ = served
    b = load_bundle(tiny_bundle)
    subject, x = _window(tiny_bundle, seed=7)
    rows, names = _shuffled_with_extra(x, list(b.ch_names), seed=1)
    params = {"steps": 2, "seed": 4}
    plain = requests.post(
        f"{url}/v1/reconstruct",
        json={"subject": subject, "data": x.tolist()},
        params=params,
        timeout=120,
    )
    named = requests.post(
        f"{url}/v1/reconstruct",
        json={"subject": subject, "data": rows.tolist(), "channels": names},
        params=params,
        timeout=120,
    )
    unnamed = requests.post(
        f"{url}/v1/reconstruct",
        json={"subject": subject, "data": rows[:-1].tolist()},
        params=params,
        timeout=120,
    )
    for r in (plain, named, unnamed):
        assert r.status_code == 200, r.text
    assert named.content == plain.content
    assert unnamed.content != plain.content  # the reordering is what makes them equal


def test_stream_with_named_channels_decodes_as_the_model_order(
    served: tuple[str, object], causal_run: Path, tiny_bundle: Path, offline: OfflineDecoder
) -> None:
    """A recording streamed with "channels" in the start message (rows shuffled, another
    serial, an extra sensor): every decode scores the gallery as the model-order stream does;
    a start message lacking a sensor gets the stream's error message naming it."""
    from websockets.sync.client import connect

    from megdecode.data import bids
    from megdecode.data.meg_info import pick_meg
    from megdecode.data.sensors import sensor_name
    from megdecode.serve.stream import StreamSpec

    url, _ = served
    b = load_bundle(tiny_bundle)
    subject, k = b.subjects[0], len(offline.gallery_ids)
    spec = StreamSpec.from_bundle(b, subject)
    rec = bids.read_run(
        causal_run / "bids", bids.find_runs(causal_run / "bids", subjects=[subject])[0]
    )
    raw = rec.raw.get_data(picks=pick_meg(rec.raw.info, spec.preprocess)).astype(np.float32)
    raw = np.ascontiguousarray(raw[:, :900])
    rows, names = _shuffled_with_extra(raw, list(b.ch_names), seed=2)
    _, plain = _stream(url, subject, raw, k)
    ready, named = _stream(url, subject, rows, k, channels=names)
    assert ready["type"] == "ready", ready
    assert ready["n_channels"] == len(names) and ready["dropped_channels"] == ["EEG057-4304"]
    assert len(plain) > 5 and [d["onset_sample"] for d in named] == [
        d["onset_sample"] for d in plain
    ]
    for got, want in zip(named, plain, strict=True):
        want_scores = {h["image_id"]: h["score"] for h in want["top_k"]}
        ids = offline.gallery_ids
        assert_topk_matches(got["top_k"], np.array([want_scores[i] for i in ids]), ids)
    with connect(url.replace("http", "ws") + "/v1/stream") as ws:
        ws.send(json.dumps({"subject": subject, "channels": names[1:]}))
        err = json.loads(ws.recv(timeout=30))
    lost = sensor_name(names[0])
    assert err["type"] == "error" and err["error"] == "channel_mismatch", err
    assert lost in err["detail"], err


@pytest.mark.slow  # a redeploy (rolling replica restart) under traffic
def test_reload_swaps_models_without_dropping_requests(
    served: tuple[str, object], causal_run: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    import threading

    from ray import serve
    from serve_helpers import train_bundle

    from megdecode.serve.app import build_app

    url, cfg = served
    other = train_bundle(causal_run, tmp_path / "b1", seed=1)
    subject, x = _window(tiny_bundle)
    before = _post(url, subject, x.tolist()).json()["latent"]
    codes: list[int] = []
    errors: list[str] = []  # the error code of every answer that is not a 200
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            r = _post(url, subject, x.tolist())
            codes.append(r.status_code)
            if r.status_code != 200:
                errors.append(r.json().get("error", r.text[:200]))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        new = cfg.replace(decoder=cfg.decoder.replace(model=str(other)))
        serve.run(build_app(new, token=""), name=new.app_name, route_prefix="/")
        after = _post(url, subject, x.tolist()).json()["latent"]
    finally:
        stop.set()
        thread.join()
        serve.run(build_app(cfg, token=""), name=cfg.app_name, route_prefix="/")
    # Nothing is dropped: every answer is a decode, or, while the new replica's start takes
    # the 2 CPUs, a request shed past http.max_queue_ms (503 overloaded + Retry-After, by
    # design), never a failed or unavailable replica.
    assert codes.count(200) > 0 and set(codes) <= {200, 503}, errors
    assert set(errors) <= {"overloaded"}, errors
    assert not np.allclose(before, after)


def test_killing_the_decoder_replica_mid_traffic_leaves_no_request_hanging(
    served: tuple[str, object], tiny_bundle: Path
) -> None:
    import os
    import signal
    import threading
    import time

    from ray import serve

    url, cfg = served
    handle = serve.get_deployment_handle("BrainDecoder", cfg.app_name)
    old_pid = handle.pid.remote().result(timeout_s=30)
    subject, x = _window(tiny_bundle)
    headers = {
        "content-type": "application/octet-stream",
        "x-shape": f"{x.shape[0]},{x.shape[1]}",
        "x-subject": subject,
    }
    results: list[tuple[int, float, str, str | None]] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        session = requests.Session()
        while not stop.is_set():
            start = time.perf_counter()
            try:
                r = session.post(f"{url}/v1/decode", data=x.tobytes(), headers=headers, timeout=30)
            except (
                requests.RequestException
            ) as exc:  # a hang (client timeout) or a dropped connection
                failures.append(repr(exc))
                continue
            results.append(
                (r.status_code, time.perf_counter() - start, r.text, r.headers.get("retry-after"))
            )

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = len(results)
    os.kill(old_pid, signal.SIGKILL)  # the replica process this module's Serve started
    new_pid, deadline = old_pid, time.monotonic() + 120
    while new_pid == old_pid and time.monotonic() < deadline:
        try:
            new_pid = handle.pid.remote().result(timeout_s=10)
        except Exception:  # noqa: BLE001 - the replica is down or starting
            time.sleep(0.5)
    recovered = len(results)
    time.sleep(1.0)  # traffic on the new replica
    stop.set()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads), "a client is still waiting"
    assert new_pid != old_pid, "Serve did not replace the killed replica"
    assert not failures, failures[:3]
    assert before > 0 and len(results) > recovered, (
        "no traffic before the kill or after the restart"
    )
    for status, seconds, text, retry in results:
        assert status in (200, 503), (status, text)
        assert seconds < cfg.http.request_timeout_s + 10, seconds
        if status == 503:
            assert retry == "1"
            assert is_error_body(status, text)["error"] in (
                "decoder_unavailable",
                "timeout",
                "overloaded",
            )
    assert any(s == 200 for s, *_ in results[recovered:])
    assert _post(url, subject, x.tolist()).status_code == 200


def test_property_based_requests_from_the_openapi_schema_never_get_a_5xx(
    served: tuple[str, object], tiny_bundle: Path
) -> None:
    """Arbitrary bodies, headers and options for every operation of /openapi.json: no 5xx (503 only
    for load or readiness), every error is {error, detail}, no traceback ever reaches a client."""
    from fuzz_strategies import auth_headers, bodies, queries
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url, _ = served
    b = load_bundle(tiny_bundle)
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    ops = sorted((path, method) for path, item in schema["paths"].items() for method in item)
    assert ("/v1/decode", "post") in ops and ("/v1/reconstruct", "post") in ops
    session = requests.Session()
    allowed_503 = {
        "overloaded",
        "timeout",
        "not_ready",
        "generator_disabled",
        "insufficient_gpu_memory",
    }

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        op=st.sampled_from(ops),
        body=bodies(len(b.ch_names), b.n_times, list(b.subjects), list(b.ch_names)),
        params=queries(),
        extra=auth_headers(),
    )
    def check(
        op: tuple[str, str],
        body: tuple[bytes, dict[str, str]],
        params: dict[str, str],
        extra: dict[str, str],
    ) -> None:
        path, method = op
        data, headers = body
        params = (
            {**params, "steps": "1"}
            if path == "/v1/reconstruct" and "steps" not in params
            else params
        )
        r = session.request(
            method.upper(),
            f"{url}{path}",
            data=data if method != "get" else None,
            headers={**extra, **headers},
            params=params,
            timeout=60,
        )
        assert r.status_code < 500 or r.status_code == 503, (op, r.status_code, r.text[:300])
        if r.status_code >= 400:
            err = is_error_body(r.status_code, r.text)
            if r.status_code == 503:
                assert err["error"] in allowed_503 and r.headers.get("retry-after"), (op, r.text)
        elif r.headers.get("content-type", "").startswith("application/json"):
            assert "Traceback" not in r.text

    check()
    assert _post(url, b.subjects[0], _window(tiny_bundle)[1].tolist()).status_code == 200
