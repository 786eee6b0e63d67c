"""The store's tables. Metadata only: ids, owners, content types, sizes, deadlines and timings.

No column holds pixels, landmarks, masks or coordinates; image bytes live encrypted in the blob
store, and the audit table has no column that could carry content.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python, naive UTC in the database (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("store datetimes must be timezone-aware")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class UploadRow(Base):
    __tablename__ = "pexir_uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(256), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ResultRow(Base):
    __tablename__ = "pexir_results"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(256), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    saved: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_pexir_results_expiry", "saved", "expires_at"),)


class AuditRow(Base):
    __tablename__ = "pexir_audit"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    backend: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    result_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    retention_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_json(self) -> dict:
        def iso(v):
            return v.isoformat() if v is not None else None

        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "backend": self.backend,
            "status": self.status,
            "error_code": self.error_code,
            "timings": dict(self.timings or {}),
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
            "result_id": self.result_id,
            "retention_deadline": iso(self.retention_deadline),
            "deleted_at": iso(self.deleted_at),
        }
