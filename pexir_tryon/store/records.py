"""What the store hands out: plain, immutable records that carry ids and deadlines, never bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime


@dataclass(frozen=True)
class UploadRecord:
    """A person photo kept for reuse until ``expires_at``."""

    id: str
    user_id: str
    content_type: str
    size: int
    created_at: datetime
    expires_at: datetime

    def to_json(self) -> dict:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class ResultRecord:
    """A try-on result; ``expires_at`` is None once saved (kept until its owner deletes it)."""

    id: str
    user_id: str
    request_id: str
    content_type: str
    size: int
    created_at: datetime
    expires_at: datetime | None
    saved: bool

    def to_json(self) -> dict:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class PurgeReport:
    """What ``purge_user`` removed."""

    uploads: int = 0
    results: int = 0
    audit_records: int = 0
    blobs: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SweepReport:
    """What one sweep removed: expired uploads and unsaved results, their blobs, and orphan blobs."""

    uploads: int = 0
    results: int = 0
    blobs: int = 0
    orphan_blobs: int = 0
    audit_marked: int = 0

    @property
    def total(self) -> int:
        return self.uploads + self.results + self.blobs + self.orphan_blobs

    def to_json(self) -> dict:
        return asdict(self)


def _jsonable(d: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}
