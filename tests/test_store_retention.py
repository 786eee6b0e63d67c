"""Retention: deadlines, the sweeper, saved results, orphan blobs and the 24 h cap."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from pexir_tryon.config import DAY_S, Settings, StoreSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.store import TryOnStore, run_sweeper
from pexir_tryon.store.testing import FakeClock
from fakes.store_files import blob_files, png


@pytest.fixture
def make_store(tmp_path: Path, data_dir: Path, clock: FakeClock):
    opened: list[TryOnStore] = []

    def make(**overrides) -> TryOnStore:
        settings = StoreSettings(key_file=tmp_path / "keys" / "blob.key", **overrides)
        store = TryOnStore(settings, data_dir, clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_upload_is_unreadable_just_after_deadline_and_gone_from_disk_after_sweep(make_store, clock, data_dir):
    store = make_store(upload_ttl_s=60)
    rec = store.put_upload("user-a", png(1), "image/png")
    assert rec.expires_at == clock() + timedelta(seconds=60)
    clock.advance(59.999)
    assert store.get_upload("user-a", rec.id)[1] == png(1)
    assert len(blob_files(data_dir)) == 1

    clock.advance(0.002)  # just past the deadline, before any sweep
    with pytest.raises(TryOnError) as e:
        store.get_upload("user-a", rec.id)
    assert e.value.code == "not_found"
    assert len(blob_files(data_dir)) == 1  # still on disk: only the sweep deletes

    report = store.sweep()
    assert (report.uploads, report.blobs) == (1, 1)
    assert blob_files(data_dir) == []


def test_unsaved_result_expires_but_saved_result_survives_the_sweep(make_store, clock, data_dir):
    store = make_store(result_ttl_s=120)
    store.begin_request("req-1", "user-a", "local")
    store.begin_request("req-2", "user-a", "local")
    unsaved = store.put_result("user-a", "req-1", png(2), "image/png")
    kept = store.put_result("user-a", "req-2", png(3), "image/png")
    saved = store.save_result("user-a", kept.id)
    assert saved.saved and saved.expires_at is None

    clock.advance(DAY_S * 30)
    report = store.sweep()
    assert report.results == 1
    with pytest.raises(TryOnError, match="does not exist"):
        store.get_result("user-a", unsaved.id)
    record, data = store.get_result("user-a", kept.id)
    assert data == png(3) and record.saved
    assert len(blob_files(data_dir)) == 1


def test_put_result_with_save_never_expires(make_store, clock):
    store = make_store(result_ttl_s=10)
    store.begin_request("req-1", "user-a", "local")
    rec = store.put_result("user-a", "req-1", png(4), "image/png", save=True)
    assert rec.expires_at is None and rec.saved
    clock.advance(DAY_S * 2)
    assert store.sweep().results == 0
    assert store.get_result("user-a", rec.id)[1] == png(4)


def test_sweep_marks_audit_record_with_deletion_time(make_store, clock):
    store = make_store(result_ttl_s=30)
    store.begin_request("req-1", "user-a", "local")
    rec = store.put_result("user-a", "req-1", png(5), "image/png")
    store.finish_request("req-1", status="ok", error_code=None, timings_s={"geometry": 0.1})
    (audit,) = store.audit_records("user-a")
    assert audit["retention_deadline"] == rec.expires_at.isoformat()
    assert audit["deleted_at"] is None

    clock.advance(31)
    swept_at = clock()
    assert store.sweep().audit_marked == 1
    (audit,) = store.audit_records("user-a")
    assert audit["deleted_at"] == swept_at.isoformat()


def test_saving_an_expired_result_is_refused(make_store, clock):
    store = make_store(result_ttl_s=30)
    store.begin_request("req-1", "user-a", "local")
    rec = store.put_result("user-a", "req-1", png(6), "image/png")
    clock.advance(30)
    with pytest.raises(TryOnError) as e:
        store.save_result("user-a", rec.id)
    assert e.value.code == "not_found"


def test_orphan_blob_from_a_crash_is_swept_only_after_the_grace_period(make_store, clock, data_dir, monkeypatch):
    store = make_store()
    # A crash after the blob write and before the row: the insert fails and the cleanup never runs.
    from pexir_tryon.store import store as store_module

    def crash(*_a, **_k):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(store.blobs, "delete", lambda key: False)
    monkeypatch.setattr(store_module.UploadRow, "__init__", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put_upload("user-a", png(7), "image/png")
    monkeypatch.undo()
    # and a temp file a killed writer left behind
    (orphan,) = blob_files(data_dir)
    leftover = orphan.parent / (".tmp-" + orphan.name + ".dead")
    leftover.write_bytes(b"partial")

    kept = store.put_upload("user-a", png(8), "image/png")
    assert store.sweep().orphan_blobs == 0  # young orphans may be writes still in progress
    assert len(blob_files(data_dir)) == 3

    clock.advance(store.orphan_grace_s + 1)
    assert store.sweep().orphan_blobs == 2
    assert len(blob_files(data_dir)) == 1
    assert store.get_upload("user-a", kept.id)[1] == png(8)


def test_ttl_over_24_hours_is_rejected_by_the_settings(monkeypatch):
    with pytest.raises(ValidationError):
        StoreSettings(upload_ttl_s=DAY_S + 1)
    with pytest.raises(ValidationError):
        StoreSettings(result_ttl_s=DAY_S + 1)
    monkeypatch.setenv("PEXIR_STORE__RESULT_TTL_S", str(DAY_S + 1))
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("PEXIR_STORE__RESULT_TTL_S", "600")
    assert Settings().store.result_ttl_s == 600


def test_ttl_from_environment_sets_the_deadline(monkeypatch, tmp_path, clock):
    monkeypatch.setenv("PEXIR_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("PEXIR_STORE__UPLOAD_TTL_S", "5")
    monkeypatch.setenv("PEXIR_STORE__KEY_FILE", str(tmp_path / "env.key"))
    store = TryOnStore.from_settings(Settings(), clock=clock)
    try:
        rec = store.put_upload("user-a", png(9), "image/png")
        assert (rec.expires_at - rec.created_at).total_seconds() == 5
        assert (tmp_path / "env-data" / "pexir.db").exists()
        assert any((tmp_path / "env-data" / "blobs").rglob("*.blob"))
    finally:
        store.close()


def test_background_sweeper_deletes_expired_content_and_stops(make_store, clock, data_dir, caplog):
    caplog.set_level(logging.INFO, logger="pexir_tryon.store")
    store = make_store(upload_ttl_s=1)
    store.put_upload("user-a", png(10), "image/png")
    clock.advance(2)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(run_sweeper(store, 0.01, stop))
        for _ in range(200):
            if not blob_files(data_dir):
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    assert blob_files(data_dir) == []
    assert any(getattr(r, "sweep_uploads", 0) == 1 for r in caplog.records)  # it says what it deleted
