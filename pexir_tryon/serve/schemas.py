"""Typed request and response bodies of the HTTP API (the OpenAPI page is built from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code; see the error table in docs/errors.md.")
    message: str = Field(description="What went wrong and what to do about it.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class TryOnResponse(BaseModel):
    """The JSON form of a try-on (send `Accept: application/json`)."""

    request_id: str
    result_id: str
    expires_at: datetime | None = Field(description="When the result is deleted; null when saved.")
    saved: bool
    category: Literal["upper", "lower", "dress"] | str
    backend: Literal["local", "alibaba"]
    refined: bool = Field(description="Whether the diffusion refiner ran.")
    timings_ms: dict[str, float] = Field(description="Milliseconds per stage.")
    width: int
    height: int
    content_type: Literal["image/png", "image/jpeg"]
    image_base64: str


class UploadResponse(BaseModel):
    upload_id: str
    expires_at: datetime


class ResultInfo(BaseModel):
    result_id: str
    request_id: str
    saved: bool
    expires_at: datetime | None
    created_at: datetime


class ResultDownload(ResultInfo):
    """GET /v1/results/{id} with `Accept: application/json`."""

    content_type: str
    image_base64: str = Field(description="The result image, base64-encoded.")


class PurgeResponse(BaseModel):
    user_id: str
    cancelled_requests: int
    provider_items_deleted: int
    uploads: int
    results: int
    audit_records: int
    blobs: int


class Health(BaseModel):
    status: Literal["ok", "ready"]
    stages: dict[str, str] = Field(default_factory=dict)
