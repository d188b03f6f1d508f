"""The ingress' admission without Serve: the token check, the decode bound and the 503 mapping."""

from __future__ import annotations

import asyncio

import pytest

from megdecode.serve.admission import Admission, token_digest
from megdecode.serve.config import HttpConfig, ServeConfig
from megdecode.serve.errors import ApiError


def _admission(**http: int) -> Admission:
    return Admission(ServeConfig(http=HttpConfig(**http)))


def test_the_token_is_checked_only_when_the_app_has_one() -> None:
    gate = _admission()
    gate.authorize({})  # no token configured: everyone gets in
    gate.token_sha256 = token_digest("s3cret")
    gate.authorize({"authorization": "Bearer s3cret"})
    gate.authorize({"x-api-token": "s3cret"})
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-token": ""}):
        with pytest.raises(ApiError) as err:
            gate.authorize(headers)
        assert err.value.status == 401 and err.value.headers == {"WWW-Authenticate": "Bearer"}


def test_decodes_beyond_the_bound_are_shed_with_a_503_and_the_slot_is_given_back() -> None:
    gate = _admission(max_decodes_in_flight=1)
    with gate.decode_slot():
        with pytest.raises(ApiError) as err, gate.decode_slot():
            pass
        assert err.value.status == 503 and "Retry-After" in err.value.headers
    assert gate.decodes_inflight == 0
    with gate.decode_slot():
        assert gate.decodes_inflight == 1


def test_a_failed_or_slow_deployment_call_becomes_a_503() -> None:
    gate = _admission()

    async def boom() -> None:
        raise RuntimeError("replica died")

    async def slow() -> None:
        await asyncio.sleep(1)

    async def error_dict() -> dict[str, object]:
        return {"status": 422, "error": "invalid_window", "detail": "C differs"}

    with pytest.raises(ApiError, match="decoder_unavailable"):
        asyncio.run(gate.call(boom(), "decoder"))
    with pytest.raises(ApiError, match="timeout"):
        asyncio.run(gate.call(slow(), "decoder", timeout=0.01))
    with pytest.raises(ApiError) as err:
        asyncio.run(gate.call(error_dict(), "decoder"))
    assert (err.value.status, err.value.error) == (422, "invalid_window")
