"""Atomic writes, ownership, in-flight purge, the content-free audit and what the store logs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from pexir_tryon.config import StoreSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.store import TryOnStore
from pexir_tryon.store.schema import AuditRow, ResultRow, UploadRow
from fakes.store_files import blob_files, png


def count(store: TryOnStore, model) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.fixture
def store(tmp_path, data_dir, clock):
    s = TryOnStore(StoreSettings(key_file=tmp_path / "keys" / "blob.key", result_ttl_s=600), data_dir, clock)
    yield s
    s.close()


@pytest.fixture
def failing_insert():
    """Make the row insert of a model fail after its blob was written."""
    installed = []

    def install(model):
        def boom(*_args):
            raise RuntimeError("database went away")

        event.listen(model, "before_insert", boom)
        installed.append((model, boom))

    yield install
    for model, fn in installed:
        event.remove(model, "before_insert", fn)


def test_failed_upload_insert_leaves_neither_blob_nor_row(store, data_dir, failing_insert):
    failing_insert(UploadRow)
    with pytest.raises(RuntimeError, match="went away"):
        store.put_upload("user-a", png(1), "image/png")
    assert blob_files(data_dir) == []
    assert count(store, UploadRow) == 0


def test_failed_result_insert_leaves_neither_blob_nor_row(store, data_dir, failing_insert):
    store.begin_request("req-1", "user-a", "local")
    failing_insert(ResultRow)
    with pytest.raises(RuntimeError):
        store.put_result("user-a", "req-1", png(1), "image/png")
    assert blob_files(data_dir) == []
    assert count(store, ResultRow) == 0
    (audit,) = store.audit_records("user-a")
    assert audit["result_id"] is None and audit["retention_deadline"] is None


def test_put_result_after_purge_of_in_flight_request_is_refused(store, data_dir):
    store.begin_request("req-1", "user-a", "local")
    store.purge_user("user-a")  # the user is deleted while the try-on runs
    with pytest.raises(TryOnError) as e:
        store.put_result("user-a", "req-1", png(1), "image/png")
    assert e.value.code == "not_found"
    assert blob_files(data_dir) == []
    assert count(store, ResultRow) == 0
    store.finish_request("req-1", status="ok", error_code=None, timings_s={"total": 1.0})
    assert store.audit_records("user-a") == []  # finishing does not bring the record back


def test_put_result_for_another_users_request_is_refused(store, data_dir):
    store.begin_request("req-1", "user-a", "local")
    with pytest.raises(TryOnError) as e:
        store.put_result("user-b", "req-1", png(1), "image/png")
    assert e.value.code == "not_found"
    assert blob_files(data_dir) == []


def test_another_users_id_answers_not_found_like_a_missing_one(store):
    up = store.put_upload("user-a", png(1), "image/png")
    store.begin_request("req-1", "user-a", "local")
    res = store.put_result("user-a", "req-1", png(2), "image/png")
    calls = [
        lambda u, i: store.get_upload(u, i),
        lambda u, i: store.get_result(u, i),
        lambda u, i: store.save_result(u, i),
        lambda u, i: store.delete_result(u, i),
    ]
    for call, real_id in zip(calls, [up.id, res.id, res.id, res.id]):
        with pytest.raises(TryOnError) as foreign:
            call("user-b", real_id)
        with pytest.raises(TryOnError) as missing:
            call("user-b", real_id[:-1] + ("0" if real_id[-1] != "0" else "1"))
        assert foreign.value.code == missing.value.code == "not_found"
        assert foreign.value.http_status == 404
        assert "user-a" not in foreign.value.message
    # and the owner still has everything
    assert store.get_upload("user-a", up.id)[1] == png(1)
    assert store.get_result("user-a", res.id)[1] == png(2)


def test_delete_result_removes_blob_and_confirms_in_audit(store, data_dir, clock):
    store.begin_request("req-1", "user-a", "local")
    res = store.put_result("user-a", "req-1", png(1), "image/png", save=True)
    clock.advance(5)
    store.delete_result("user-a", res.id)
    assert blob_files(data_dir) == []
    with pytest.raises(TryOnError):
        store.get_result("user-a", res.id)
    (audit,) = store.audit_records("user-a")
    assert audit["deleted_at"] == clock().isoformat()


def test_audit_record_has_the_fields_and_no_content(store, clock):
    img = png(3)
    store.begin_request("req-1", "user-a", "alibaba")
    res = store.put_result("user-a", "req-1", img, "image/png")
    store.finish_request(
        "req-1",
        status="ok",
        error_code=None,
        timings_s={"geometry": 0.12, "warp": 0.3, "refine": 2, "bad": float("nan"), "worse": "x"},
    )
    store.begin_request("req-2", "user-a", "local")
    store.finish_request("req-2", status="error", error_code="no_person_detected", timings_s={"geometry": 0.05})
    first, second = store.audit_records("user-a")
    assert set(first) >= {"request_id", "user_id", "backend", "status", "error_code", "timings", "created_at", "retention_deadline", "deleted_at"}
    assert first["backend"] == "alibaba" and first["status"] == "ok" and first["error_code"] is None
    assert first["timings"] == {"geometry": 0.12, "warp": 0.3, "refine": 2.0}
    assert first["retention_deadline"] == res.expires_at.isoformat()
    assert second["error_code"] == "no_person_detected" and second["retention_deadline"] is None
    for rec in (first, second):
        for value in rec.values():
            assert not isinstance(value, (bytes, bytearray, list))
        assert "PNG" not in repr(rec)


def test_audit_table_has_no_column_that_could_hold_content():
    columns = {c.name for c in AuditRow.__table__.columns}
    assert columns == {
        "request_id", "user_id", "backend", "status", "error_code", "timings",
        "created_at", "finished_at", "result_id", "retention_deadline", "deleted_at",
    }


def test_duplicate_request_id_is_refused(store):
    store.begin_request("req-1", "user-a", "local")
    with pytest.raises(TryOnError) as e:
        store.begin_request("req-1", "user-b", "local")
    assert e.value.code == "invalid_request"


def test_naive_clock_is_refused(tmp_path):
    from datetime import datetime

    s = TryOnStore(StoreSettings(key_file=tmp_path / "k"), tmp_path / "d", clock=lambda: datetime(2030, 1, 1))
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            s.put_upload("user-a", png(1), "image/png")
    finally:
        s.close()


def test_concurrent_writers_from_threads(store, data_dir):
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def work(n: int):
        try:
            for i in range(8):
                rec = store.put_upload(f"user-{n}", png(n * 100 + i), "image/png")
                assert store.get_upload(f"user-{n}", rec.id)[1] == png(n * 100 + i)
                with lock:
                    ids.append(rec.id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 32 and len(blob_files(data_dir)) == 32
    assert store.purge_user("user-2").uploads == 8
    assert len(blob_files(data_dir)) == 24


def test_logs_carry_ids_and_counts_never_bytes_or_user_ids(store, caplog, clock):
    caplog.set_level(logging.DEBUG, logger="pexir_tryon.store")
    img = png(4)
    store.put_upload("user-secret-42", img, "image/png")
    store.begin_request("req-1", "user-secret-42", "local")
    store.put_result("user-secret-42", "req-1", img, "image/png")
    store.finish_request("req-1", status="ok", error_code=None, timings_s={"t": 1})
    store.export_user("user-secret-42")
    clock.advance(10**5)
    store.sweep()
    store.purge_user("user-secret-42")
    assert caplog.records
    standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
    for rec in caplog.records:
        extras = {k: v for k, v in rec.__dict__.items() if k not in standard}
        text = rec.getMessage() + repr(extras)
        assert "user-secret-42" not in text
        assert not any(isinstance(v, (bytes, bytearray, memoryview)) for v in extras.values())
        assert "PNG" not in text
