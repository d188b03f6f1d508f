"""The queue-time budget without Serve: which requests of a batch are shed, and the 503 they get."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.bundles import BUNDLE_C, BUNDLE_T, tiny_bundle
from megdecode.config import ConfigError
from megdecode.serve.admission import Admission
from megdecode.serve.config import HttpConfig, ServeConfig
from megdecode.serve.decoder import DecoderCore
from megdecode.serve.errors import ApiError
from megdecode.serve.queue_budget import Deadline, Shed, split_expired


def test_a_batch_splits_into_expired_and_live_by_age() -> None:
    now = 1000.0
    deadlines = [
        Deadline(now - 0.050, 100.0),  # 50 ms old: live
        Deadline(now - 0.150, 100.0),  # 150 ms old: expired
        None,  # no deadline: always computed
        Deadline(now - 5.0, 0.0),  # no budget: never expires, however old
        Deadline(now - 0.1005, 100.0),  # just past the budget
    ]
    assert split_expired(deadlines, now) == ([1, 4], [0, 2, 3])
    assert Deadline(now - 5.0, 0.0).age_ms(now) == pytest.approx(5000.0)


def test_the_budget_is_checked_in_the_config() -> None:
    assert HttpConfig().max_queue_ms > 0  # on by default
    assert HttpConfig(max_queue_ms=0).max_queue_ms == 0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="max_queue_ms"):
            HttpConfig(max_queue_ms=bad)


def test_the_ingress_sheds_a_late_request_with_retry_after() -> None:
    gate = Admission(ServeConfig(http=HttpConfig(max_queue_ms=100, retry_after_s=3)))
    gate.check_deadline(gate.deadline())  # fresh: let through
    with pytest.raises(ApiError) as err:
        gate.check_deadline(Deadline(time.time() - 0.5, 100.0))
    e = err.value
    assert (e.status, e.error, e.headers) == (503, "overloaded", {"Retry-After": "3"})
    assert "http.max_queue_ms" in e.detail
    gate.check_deadline(Deadline(time.time() - 5.0, 0.0))  # no budget: never shed


def test_a_503_from_a_deployment_gets_the_ingress_retry_after() -> None:
    gate = Admission(ServeConfig(http=HttpConfig(retry_after_s=2)))

    async def shed() -> dict[str, object]:
        return {"status": 503, "error": "overloaded", "detail": "waited", "headers": {}}

    with pytest.raises(ApiError) as err:
        asyncio.run(gate.call(shed(), "decoder"))
    assert (err.value.status, err.value.headers) == (503, {"Retry-After": "2"})


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> DecoderCore:
    from megdecode.bundle_io import save_bundle

    path = save_bundle(tiny_bundle(), Path(tmp_path_factory.mktemp("qb")) / "b")
    c = DecoderCore({"max_batch_size": 8})
    c.reconfigure({"model": str(path)})
    assert c.state is not None, c.load_error
    return c


def test_the_batch_handler_computes_the_live_and_sheds_the_expired(core: DecoderCore) -> None:
    """One batch of three: the expired one gets a Shed marker, the others a latent and their
    queue time, from the same forward (a batch of two)."""
    state, now = core.state, time.time()
    x = np.zeros((BUNDLE_C, BUNDLE_T), np.float32)
    items = [
        (state, x, 0, Deadline(now - 0.01, 100.0)),
        (state, x, 1, Deadline(now - 1.0, 100.0)),
        (state, x, 0, None),
    ]
    handler = DecoderCore._batched.__wrapped__  # type: ignore[attr-defined]  # the undecorated batch function
    out = asyncio.run(handler(core, items))
    assert isinstance(out[1], Shed) and out[1].waited_ms >= 1000 and out[1].budget_ms == 100
    for row in (out[0], out[2]):
        assert not isinstance(row, Shed)
        clip, _forward_ms, batch, _ = row
        assert clip.shape == (tiny_bundle().latent_mean.shape[0],) and batch == 2
    assert 10 <= out[0][3] < 1000 and out[2][3] is None


def test_decode_sheds_a_request_already_late_before_it_queues(core: DecoderCore) -> None:
    """(The computed path goes through @serve.batch, which needs a replica: the Serve tests.)"""
    x = np.zeros((BUNDLE_C, BUNDLE_T), np.float32)
    late = asyncio.run(core.decode(x, "BIGMEG1", 2, deadline=Deadline(time.time() - 1.0, 100.0)))
    assert (late["status"], late["error"]) == (503, "overloaded"), late
    assert "http.max_queue_ms" in late["detail"] and "before the decoder" in late["detail"]
