"""Request and response models: the OpenAPI schema clients (and schemathesis) read.

Bodies of /v1/decode and /v1/reconstruct are parsed by `megdecode.serve.validate` (JSON or
raw float32 bytes, with errors of our own shape), so `DecodeRequest` documents the JSON
form rather than being FastAPI's parser: a 272 x 181 window through pydantic costs more
than the model's forward pass.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DecodeRequest(BaseModel):
    """One MEG window: C channels x T samples, preprocessed as the model's training data."""

    subject: str | int = Field(description="subject label (as in the bundle) or its index")
    data: list[list[float]] = Field(
        description="C x T window; rows in the model's channel order unless `channels` names them"
    )
    channels: list[str] | None = Field(
        default=None,
        description=(
            "optional: the channel name of each data row (C names). Rows are matched to the "
            "model's channels by sensor, ignoring the CTF serial suffix ('MLC11-4304' is the "
            "model's 'MLC11-1609'), in any order; sensors the model does not use are dropped, "
            "a sensor it needs and the list lacks is a 422 'channel_mismatch' naming it. "
            "Absent: the rows must be the model's channels in its order (shape check only)"
        ),
    )


class ImageHit(BaseModel):
    image_id: int
    category: str
    score: float = Field(
        description="cosine similarity of the predicted latent to the image's latent"
    )


class ModelRef(BaseModel):
    name: str
    version: int | None


class DecodeResponse(BaseModel):
    latent: list[float] = Field(description="the CLIP-head latent (F,) the retrieval used")
    top_k: list[ImageHit]
    model: ModelRef
    timing: dict[str, float]


class ReconstructJSON(BaseModel):
    images: list[str] = Field(description="base64 PNGs")
    top_k: list[ImageHit] = []
    model: ModelRef
    timing: dict[str, float]


class ErrorBody(BaseModel):
    error: str
    detail: str


class ModelCard(BaseModel):
    name: str
    version: int | None
    alias: str | None = None
    run_id: str | None
    source: str
    latent_name: str
    latent_dim: int
    window: dict[str, float]
    channels: dict[str, Any]
    subjects: list[str]
    metrics: dict[str, float]
    git_commit: str
    gallery_size: int
    precision: str = "float32"
    streaming: dict[str, Any]
    prediction_stats: dict[str, Any] | None = (
        None  # {reference, n}; None: /v1/reconstruct scales nothing
    )
    warnings: list[str] = []


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "malformed body"),
        (401, "missing or invalid token"),
        (413, "body over the size limit"),
        (415, "unsupported content type or dtype"),
        (422, "a request the model cannot take"),
        (503, "overloaded, timed out or not ready (see Retry-After)"),
    )
}


def window_body(description: str) -> dict[str, Any]:
    """openapi_extra of a route whose body is a window as JSON or raw float32 bytes (the
    X-Channels header is the raw form's `DecodeRequest.channels`; FastAPI appends it to the
    route's own parameters)."""
    return {
        "parameters": [
            {
                "name": "X-Channels",
                "in": "header",
                "required": False,
                "description": "raw bytes only: the rows' channel names, comma-separated "
                "(as `channels` of the JSON form)",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": DecodeRequest.model_json_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    }
