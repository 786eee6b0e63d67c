"""TryOnStore: temporary uploads, results, retention, purge, export and the content-free audit.

Metadata lives in a SQL database (``schema.py``), image bytes encrypted in a blob store
(``blobs.py``, ``crypto.py``). Every write puts the blob first (atomically), then inserts the row
in one transaction, and removes the blob if the transaction fails; a process killed in between
leaves a blob without a row, which the sweeper removes once it is older than
``orphan_grace_s``. Reads past a record's deadline answer ``not_found`` even before the sweeper
has run. Another user's id answers exactly like a missing one.

Logs carry record ids and counts only: no bytes, no user ids (a purged user must not linger in
logs the store cannot delete).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pexir_tryon.config import Settings, StoreSettings
from pexir_tryon.errors import TryOnError

from .blobs import BlobStore, blob_key
from .crypto import BlobCipher, decode_key, load_or_create_key_file
from .database import checkpoint_sqlite, make_engine
from .export import build_export_zip
from .records import PurgeReport, ResultRecord, SweepReport, UploadRecord
from .schema import AuditRow, Base, ResultRow, UploadRow

log = logging.getLogger("pexir_tryon.store")

Clock = Callable[[], datetime]

DEFAULT_ORPHAN_GRACE_S = 600.0
_SWEEP_CHUNK = 500
_MAX_TIMINGS = 64
_CONTENT_TYPE_RE = re.compile(r"^image/[a-z0-9.+-]{1,40}$")
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ID_MAX = {"user_id": 256, "request_id": 128, "backend": 32, "status": 32}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def expand_data_dir(template: str, data_dir: Path) -> str:
    return template.replace("{data_dir}", str(data_dir))


def _not_found(kind: str, record_id: str) -> TryOnError:
    shown = record_id if len(record_id) <= 64 and record_id.isprintable() else record_id[:64].encode("unicode_escape").decode()
    return TryOnError("not_found", f"{kind} {shown!r} does not exist, has expired, or belongs to another user")


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _ID_MAX[name] or not value.isprintable():
        raise TryOnError("invalid_request", f"{name} must be a non-empty printable string of at most {_ID_MAX[name]} characters")
    return value


def _check_content(data: bytes, content_type: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise TryOnError("invalid_request", "image bytes must be a non-empty bytes object")
    if not isinstance(content_type, str) or not _CONTENT_TYPE_RE.match(content_type):
        raise TryOnError("invalid_request", "content_type must be an image media type such as 'image/png'")


def _clean_timings(timings_s: dict[str, float]) -> dict[str, float]:
    """Stage name → seconds, nothing else: finite floats under short string keys."""
    out: dict[str, float] = {}
    for key, value in list((timings_s or {}).items())[:_MAX_TIMINGS]:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds):
            out[str(key)[:64]] = round(seconds, 6)
    return out


class TryOnStore:
    def __init__(
        self,
        settings: StoreSettings,
        data_dir: Path,
        clock: Clock | None = None,
        *,
        orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S,
    ):
        self.settings = settings
        self.data_dir = Path(data_dir).expanduser()
        self._clock: Clock = clock or utc_now
        self.orphan_grace_s = float(orphan_grace_s)
        self.upload_ttl = timedelta(seconds=settings.upload_ttl_s)
        self.result_ttl = timedelta(seconds=settings.result_ttl_s)

        self.database_url = expand_data_dir(settings.database_url, self.data_dir)
        self.blob_url = expand_data_dir(settings.blob_url, self.data_dir)
        if "{data_dir}" in settings.database_url or "{data_dir}" in settings.blob_url:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

        self.blobs = BlobStore(self.blob_url)
        self._cipher = BlobCipher(self._load_key())
        self.engine = make_engine(self.database_url)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        log.info("store opened", extra={"db_dialect": self.engine.dialect.name, "blob_local": self.blobs.is_local})

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None, **kwargs) -> TryOnStore:
        return cls(settings.store, settings.resolved_data_dir(), clock, **kwargs)

    # -- plumbing ---------------------------------------------------------------------------

    def _load_key(self) -> bytes:
        if self.settings.encryption_key is not None:
            return decode_key(self.settings.encryption_key.get_secret_value())
        key_file = self.settings.key_file.expanduser()
        root = self.blobs.local_root
        if root is not None:
            kf, br = key_file.resolve(), root.resolve()
            if kf == br or br in kf.parents:
                raise ValueError(f"store.key_file {key_file} is inside the blob directory {root}; keep the key apart from the blobs it protects")
        return load_or_create_key_file(key_file)

    def now(self) -> datetime:
        t = self._clock()
        if t.tzinfo is None:
            raise ValueError("the store clock must return timezone-aware datetimes")
        return t.astimezone(timezone.utc)

    def _write_then_insert(self, kind: str, record_id: str, now: datetime, data: bytes, insert: Callable[[Session, str], object]):
        key = blob_key(kind, record_id, int(now.timestamp()))
        self.blobs.put(key, self._cipher.encrypt(record_id, bytes(data)))
        try:
            with self._session.begin() as s:
                return insert(s, key)
        except BaseException:
            try:
                self.blobs.delete(key)
            except Exception:  # the sweeper removes it as an orphan later
                log.warning("blob left after failed insert", extra={"record_id": record_id}, exc_info=True)
            raise

    def _read_blob(self, kind: str, record_id: str, key: str) -> bytes:
        try:
            blob = self.blobs.get(key)
        except FileNotFoundError:  # deleted between the row read and now (purge, sweep)
            raise _not_found(kind, record_id) from None
        return self._cipher.decrypt(record_id, blob)

    def _delete_blobs(self, keys: Iterable[str]) -> tuple[int, int]:
        removed = failed = 0
        for key in keys:
            try:
                removed += self.blobs.delete(key)
            except Exception:
                failed += 1
                log.warning("blob delete failed", extra={"blob_key": key}, exc_info=True)
        return removed, failed

    @staticmethod
    def _upload_record(row: UploadRow) -> UploadRecord:
        return UploadRecord(row.id, row.user_id, row.content_type, row.size, row.created_at, row.expires_at)

    @staticmethod
    def _result_record(row: ResultRow) -> ResultRecord:
        return ResultRecord(row.id, row.user_id, row.request_id, row.content_type, row.size, row.created_at, row.expires_at, row.saved)

    @staticmethod
    def _result_visible(row: ResultRow | None, user_id: str, now: datetime) -> bool:
        return row is not None and row.user_id == user_id and (row.saved or (row.expires_at is not None and now < row.expires_at))

    @staticmethod
    def _upload_visible(row: UploadRow | None, user_id: str, now: datetime) -> bool:
        return row is not None and row.user_id == user_id and now < row.expires_at

    # -- uploads ----------------------------------------------------------------------------

    def put_upload(self, user_id: str, data: bytes, content_type: str) -> UploadRecord:
        _check_id("user_id", user_id)
        _check_content(data, content_type)
        now = self.now()
        upload_id = f"up_{secrets.token_hex(16)}"

        def insert(s: Session, key: str) -> UploadRecord:
            row = UploadRow(
                id=upload_id, user_id=user_id, content_type=content_type, size=len(data),
                blob_key=key, created_at=now, expires_at=now + self.upload_ttl,
            )
            s.add(row)
            s.flush()
            return self._upload_record(row)

        record = self._write_then_insert("uploads", upload_id, now, data, insert)
        log.info("upload stored", extra={"upload_id": upload_id, "size_bytes": len(data)})
        return record

    def get_upload(self, user_id: str, upload_id: str) -> tuple[UploadRecord, bytes]:
        now = self.now()
        with self._session.begin() as s:
            row = s.get(UploadRow, upload_id) if isinstance(upload_id, str) else None
            if not self._upload_visible(row, user_id, now):
                raise _not_found("upload", str(upload_id))
            record, key = self._upload_record(row), row.blob_key
        return record, self._read_blob("upload", upload_id, key)

    # -- request audit ----------------------------------------------------------------------

    def begin_request(self, request_id: str, user_id: str, backend: str) -> None:
        _check_id("request_id", request_id)
        _check_id("user_id", user_id)
        _check_id("backend", backend)
        try:
            with self._session.begin() as s:
                s.add(AuditRow(request_id=request_id, user_id=user_id, backend=backend, status="running", timings={}, created_at=self.now()))
        except IntegrityError:
            raise TryOnError("invalid_request", "request_id is already in use") from None
        log.debug("request audit begun", extra={"request_id": request_id, "backend": backend})

    def finish_request(self, request_id: str, *, status: str, error_code: str | None, timings_s: dict[str, float]) -> None:
        _check_id("status", status)
        if error_code is not None and not (isinstance(error_code, str) and _CODE_RE.match(error_code)):
            error_code = "internal_error"
        timings = _clean_timings(timings_s)
        with self._session.begin() as s:
            row = s.get(AuditRow, request_id)
            if row is None:  # purged while in flight: the purge wins, nothing is recreated
                log.info("request audit gone at finish", extra={"request_id": request_id})
                return
            row.status, row.error_code, row.timings, row.finished_at = status, error_code, timings, self.now()
        log.debug("request audit finished", extra={"request_id": request_id, "status": status, "error_code": error_code})

    def audit_records(self, user_id: str) -> list[dict]:
        with self._session.begin() as s:
            rows = s.scalars(select(AuditRow).where(AuditRow.user_id == user_id).order_by(AuditRow.created_at, AuditRow.request_id))
            return [r.to_json() for r in rows]

    # -- results ----------------------------------------------------------------------------

    def put_result(self, user_id: str, request_id: str, data: bytes, content_type: str, *, save: bool = False) -> ResultRecord:
        _check_id("user_id", user_id)
        _check_id("request_id", request_id)
        _check_content(data, content_type)
        now = self.now()
        result_id = f"res_{secrets.token_hex(16)}"
        expires_at = None if save else now + self.result_ttl

        def insert(s: Session, key: str) -> ResultRecord:
            # Lock the audit row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers) so
            # a purge either runs before (row gone: refused) or after (sees and removes the result).
            audit = s.get(AuditRow, request_id, with_for_update=True)
            if audit is None or audit.user_id != user_id:
                raise _not_found("request", request_id)
            row = ResultRow(
                id=result_id, user_id=user_id, request_id=request_id, content_type=content_type, size=len(data),
                blob_key=key, created_at=now, expires_at=expires_at, saved=bool(save),
            )
            s.add(row)
            audit.result_id, audit.retention_deadline, audit.deleted_at = result_id, expires_at, None
            s.flush()
            return self._result_record(row)

        record = self._write_then_insert("results", result_id, now, data, insert)
        log.info("result stored", extra={"result_id": result_id, "request_id": request_id, "saved": bool(save), "size_bytes": len(data)})
        return record

    def get_result(self, user_id: str, result_id: str) -> tuple[ResultRecord, bytes]:
        now = self.now()
        with self._session.begin() as s:
            row = s.get(ResultRow, result_id) if isinstance(result_id, str) else None
            if not self._result_visible(row, user_id, now):
                raise _not_found("result", str(result_id))
            record, key = self._result_record(row), row.blob_key
        return record, self._read_blob("result", result_id, key)

    def save_result(self, user_id: str, result_id: str) -> ResultRecord:
        now = self.now()
        with self._session.begin() as s:
            row = s.get(ResultRow, result_id) if isinstance(result_id, str) else None
            if not self._result_visible(row, user_id, now):
                raise _not_found("result", str(result_id))
            row.saved, row.expires_at = True, None
            s.execute(update(AuditRow).where(AuditRow.request_id == row.request_id, AuditRow.result_id == row.id).values(retention_deadline=None))
            record = self._result_record(row)
        log.info("result saved", extra={"result_id": result_id})
        return record

    def delete_result(self, user_id: str, result_id: str) -> None:
        now = self.now()
        with self._session.begin() as s:
            row = s.get(ResultRow, result_id) if isinstance(result_id, str) else None
            if not self._result_visible(row, user_id, now):
                raise _not_found("result", str(result_id))
            key = row.blob_key
            s.execute(update(AuditRow).where(AuditRow.request_id == row.request_id, AuditRow.result_id == row.id).values(deleted_at=now))
            s.delete(row)
        self._delete_blobs([key])
        log.info("result deleted", extra={"result_id": result_id})

    # -- purge and export -------------------------------------------------------------------

    def purge_user(self, user_id: str) -> PurgeReport:
        """Remove every row and blob of one user, requests in flight included; returns when done."""
        _check_id("user_id", user_id)
        with self._session.begin() as s:
            # Audit rows first: a put_result holding its audit row's lock finishes before this
            # statement proceeds (and its result is then seen below), or finds the row gone.
            audits = s.execute(delete(AuditRow).where(AuditRow.user_id == user_id)).rowcount or 0
            upload_keys = list(s.scalars(select(UploadRow.blob_key).where(UploadRow.user_id == user_id)))
            s.execute(delete(UploadRow).where(UploadRow.user_id == user_id))
            result_keys = list(s.scalars(select(ResultRow.blob_key).where(ResultRow.user_id == user_id)))
            s.execute(delete(ResultRow).where(ResultRow.user_id == user_id))
        removed, failed = self._delete_blobs(upload_keys + result_keys)
        try:
            checkpoint_sqlite(self.engine)
        except Exception:
            log.warning("sqlite checkpoint after purge failed", exc_info=True)
        report = PurgeReport(uploads=len(upload_keys), results=len(result_keys), audit_records=audits, blobs=removed)
        log.info("user purged", extra=report.to_json())
        if failed:
            raise TryOnError("internal_error", f"purge removed every record but {failed} blob(s) could not be deleted yet; run the purge again (the sweeper also removes them)")
        return report

    def export_user(self, user_id: str) -> bytes:
        """A zip of the user's saved and unexpired results and unexpired uploads, plus records.json."""
        now = self.now()
        with self._session.begin() as s:
            uploads = [r for r in s.scalars(select(UploadRow).where(UploadRow.user_id == user_id).order_by(UploadRow.created_at)) if self._upload_visible(r, user_id, now)]
            results = [r for r in s.scalars(select(ResultRow).where(ResultRow.user_id == user_id).order_by(ResultRow.created_at)) if self._result_visible(r, user_id, now)]
            upload_items = [(self._upload_record(r), r.blob_key) for r in uploads]
            result_items = [(self._result_record(r), r.blob_key) for r in results]
            audit = [r.to_json() for r in s.scalars(select(AuditRow).where(AuditRow.user_id == user_id).order_by(AuditRow.created_at, AuditRow.request_id))]

        def contents(items):
            for record, key in items:
                try:
                    yield record, self._read_blob("record", record.id, key)
                except TryOnError as e:
                    if e.code != "not_found":
                        raise
                    # removed while exporting (sweep/delete): it is no longer held, so not exported

        data = build_export_zip(user_id, now, contents(upload_items), contents(result_items), audit)
        log.info("user exported", extra={"uploads": len(upload_items), "results": len(result_items), "audit_records": len(audit)})
        return data

    # -- retention --------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Delete expired uploads and unsaved results with their blobs, and orphan blobs."""
        now = self.now()
        uploads = results = marked = blobs_removed = 0
        while True:
            with self._session.begin() as s:
                rows = s.execute(select(UploadRow.id, UploadRow.blob_key).where(UploadRow.expires_at <= now).limit(_SWEEP_CHUNK)).all()
                if rows:
                    s.execute(delete(UploadRow).where(UploadRow.id.in_([r.id for r in rows])))
            blobs_removed += self._delete_blobs(r.blob_key for r in rows)[0]
            uploads += len(rows)
            if len(rows) < _SWEEP_CHUNK:
                break
        while True:
            with self._session.begin() as s:
                rows = s.execute(
                    select(ResultRow.id, ResultRow.request_id, ResultRow.blob_key)
                    .where(ResultRow.saved.is_(False), ResultRow.expires_at <= now)
                    .limit(_SWEEP_CHUNK)
                ).all()
                if rows:
                    s.execute(delete(ResultRow).where(ResultRow.id.in_([r.id for r in rows])))
                    marked += s.execute(
                        update(AuditRow)
                        .where(AuditRow.result_id.in_([r.id for r in rows]), AuditRow.deleted_at.is_(None))
                        .values(deleted_at=now)
                    ).rowcount or 0
            blobs_removed += self._delete_blobs(r.blob_key for r in rows)[0]
            results += len(rows)
            if len(rows) < _SWEEP_CHUNK:
                break
        orphans = self._sweep_orphans(now)
        report = SweepReport(uploads=uploads, results=results, blobs=blobs_removed, orphan_blobs=orphans, audit_marked=marked)
        if report.total:
            log.info("sweep deleted expired content", extra=report.to_json())
        return report

    def _sweep_orphans(self, now: datetime) -> int:
        cutoff = now.timestamp() - self.orphan_grace_s
        candidates = [e for e in self.blobs.list() if e.created_epoch_s is not None and e.created_epoch_s <= cutoff]
        if not candidates:
            return 0
        with self._session.begin() as s:
            known = set(s.scalars(select(UploadRow.blob_key))) | set(s.scalars(select(ResultRow.blob_key)))
        return self._delete_blobs(e.key for e in candidates if e.is_temp or e.key not in known)[0]

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TryOnStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
