"""Error bodies: every failure is ``{"error": code, "detail": text}`` with a 4xx/503 status.

Why one exception type and handlers on the FastAPI app: a route raises `ApiError` where
it knows what went wrong; anything else (a validation error of FastAPI, a 404, a bug) is
mapped to the same shape here, and the catch-all never puts a traceback or an exception
message in the response: the log gets it, the client gets a request id to quote.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request failure with its HTTP status, a stable machine code and a human detail."""

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, error, detail, headers)
        self.status, self.error, self.detail, self.headers = (
            status,
            error,
            detail,
            dict(headers or {}),
        )

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail, self.headers)


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def unavailable(error: str, detail: str, retry_after_s: int = 1) -> ApiError:
    """A 503 that tells the client when to try again."""
    return ApiError(503, error, detail, {"Retry-After": str(max(1, int(retry_after_s)))})


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def _short(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one line: 'body.steps: ...; query.seed: ...'."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to the {error, detail} body."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _short(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code if 400 <= exc.status_code < 500 or exc.status_code == 503 else 400
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(
            status, _STATUS_CODES.get(status, "bad_request"), detail, getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        logger.error(
            "unhandled error (ref %s) on %s %s", ref, request.method, request.url.path, exc_info=exc
        )
        return error_response(
            503,
            "internal",
            f"the server could not handle this request (ref {ref})",
            {"Retry-After": "1"},
        )
