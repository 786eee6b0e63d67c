"""The same store on other backends: an fsspec blob URL and an in-memory SQLite URL."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from pexir_tryon.config import StoreSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.store import TryOnStore
from pexir_tryon.store.blobs import parse_key
from pexir_tryon.store.testing import FakeClock
from fakes.store_files import png


@pytest.fixture
def memory_store(tmp_path):
    bucket = f"memory://pexir-{uuid.uuid4().hex}/blobs"
    clock = FakeClock()
    store = TryOnStore(
        StoreSettings(database_url="sqlite://", blob_url=bucket, key_file=tmp_path / "k.key", upload_ttl_s=60),
        tmp_path / "unused-data-dir",
        clock,
    )
    fs, root = fsspec.core.url_to_fs(bucket)
    yield store, clock, fs, root
    store.close()
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_fsspec_blob_url_round_trip_expiry_and_orphans(memory_store, tmp_path):
    store, clock, fs, root = memory_store
    rec = store.put_upload("user-a", png(1), "image/png")
    assert store.get_upload("user-a", rec.id)[1] == png(1)
    (path,) = fs.find(root)
    assert b"PNG" not in fs.cat_file(path)
    assert not (tmp_path / "unused-data-dir").exists()  # nothing written to the local data dir

    fs.pipe_file(f"{root}/uploads/{int(clock().timestamp())}-up_orphan.blob", b"x")
    clock.advance(61)
    with pytest.raises(TryOnError):
        store.get_upload("user-a", rec.id)
    report = store.sweep()
    assert report.uploads == 1 and report.blobs == 1
    assert report.orphan_blobs == 0  # still within its grace period
    clock.advance(store.orphan_grace_s)
    assert store.sweep().orphan_blobs == 1
    assert fs.find(root) == []


def test_blob_names_carry_no_user_id(tmp_path):
    store = TryOnStore(StoreSettings(key_file=tmp_path / "k"), tmp_path / "d", FakeClock())
    try:
        rec = store.put_upload("user-named-in-path", png(2), "image/png")
        (entry,) = store.blobs.list()
        assert "user-named" not in entry.key and rec.id in entry.key
        assert entry.created_epoch_s == int(rec.created_at.timestamp()) and not entry.is_temp
    finally:
        store.close()
    assert parse_key("uploads/.tmp-17-up_x.blob.ab12").is_temp
    assert parse_key("uploads/readme.txt").created_epoch_s is None
