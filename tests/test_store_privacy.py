"""Privacy promises: purge removes one user entirely, export is exactly theirs, blobs are encrypted."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, inspect, text

from pexir_tryon.config import Settings, StoreSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.store import BlobDecryptError, TryOnStore, purge_user_command
from fakes.store_files import png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALICE = "user-alice-7f3a9c"
BOB = "user-bob-11d0e2"


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in all_files(root) if needle in p.read_bytes()]


def db_cells_containing(store: TryOnStore, needle: str) -> list[tuple[str, str]]:
    """Every (table, column) of every table in the database whose value mentions needle."""
    hits = []
    with store.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            result = conn.execute(text(f'SELECT * FROM "{table}"'))
            for row in result.mappings():
                hits += [(table, col) for col, v in row.items() if v is not None and needle in str(v)]
    return hits


@pytest.fixture
def settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(key_file=tmp_path / "keys" / "blob.key", upload_ttl_s=3600, result_ttl_s=3600)


@pytest.fixture
def store(settings, data_dir, clock):
    s = TryOnStore(settings, data_dir, clock)
    yield s
    s.close()


def fill_user(store: TryOnStore, user: str, seed: int) -> dict:
    """Two uploads, a saved and an unsaved result, and an in-flight request."""
    items = {"uploads": {}, "results": {}}
    for i in range(2):
        data = png(seed + i)
        items["uploads"][store.put_upload(user, data, "image/png").id] = data
    for i, save in enumerate((False, True)):
        req = f"req-{user}-{i}"
        store.begin_request(req, user, "local")
        data = png(seed + 10 + i)
        rec = store.put_result(user, req, data, "image/png")
        if save:
            store.save_result(user, rec.id)
        store.finish_request(req, status="ok", error_code=None, timings_s={"geometry": 0.01, "refine": 0.5})
        items["results"][rec.id] = data
    store.begin_request(f"req-{user}-running", user, "alibaba")
    return items


def test_purge_removes_every_byte_of_one_user_and_nothing_of_another(store, data_dir):
    alice = fill_user(store, ALICE, 100)
    bob = fill_user(store, BOB, 200)
    assert db_cells_containing(store, ALICE) and files_containing(data_dir, ALICE.encode())

    report = store.purge_user(ALICE)
    assert (report.uploads, report.results, report.audit_records, report.blobs) == (2, 2, 3, 4)

    # Nothing of Alice anywhere: no table cell, no file (database, WAL, blobs), no raw image bytes.
    assert db_cells_containing(store, ALICE) == []
    assert files_containing(data_dir, ALICE.encode()) == []
    for data in [*alice["uploads"].values(), *alice["results"].values()]:
        assert files_containing(data_dir, data) == []
    for record_id in [*alice["uploads"], *alice["results"]]:
        assert files_containing(data_dir, record_id.encode()) == []
    assert store.audit_records(ALICE) == []
    with pytest.raises(TryOnError):
        store.get_upload(ALICE, next(iter(alice["uploads"])))

    # Everything of Bob is still there and readable.
    assert len(list((data_dir / "blobs").rglob("*.blob"))) == 4
    for upload_id, data in bob["uploads"].items():
        assert store.get_upload(BOB, upload_id)[1] == data
    for result_id, data in bob["results"].items():
        assert store.get_result(BOB, result_id)[1] == data
    assert len(store.audit_records(BOB)) == 3


def test_purge_of_unknown_user_is_an_empty_report(store):
    report = store.purge_user("nobody")
    assert (report.uploads, report.results, report.audit_records, report.blobs) == (0, 0, 0, 0)


def test_purge_user_command_uses_the_configured_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PEXIR_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("PEXIR_STORE__KEY_FILE", str(tmp_path / "k.key"))
    s = TryOnStore.from_settings(Settings())
    s.put_upload(ALICE, png(1), "image/png")
    s.close()
    report = purge_user_command(Settings(), ALICE)
    assert report.uploads == 1 and report.blobs == 1
    assert list((tmp_path / "d" / "blobs").rglob("*.blob")) == []


def test_export_contains_exactly_that_users_items(store, clock):
    # an unsaved result that expired (not yet swept) is no longer held, so it is not exported
    store.begin_request("req-old", ALICE, "local")
    old = store.put_result(ALICE, "req-old", png(999), "image/png")
    clock.advance(3601)
    alice = fill_user(store, ALICE, 300)
    fill_user(store, BOB, 400)
    expected = {**alice["uploads"], **alice["results"]}

    archive = zipfile.ZipFile(io.BytesIO(store.export_user(ALICE)))
    images = {n: archive.read(n) for n in archive.namelist() if n != "records.json"}
    assert {Path(n).stem: data for n, data in images.items()} == expected
    assert old.id not in archive.namelist()
    assert all(n.endswith(".png") for n in images)

    records = json.loads(archive.read("records.json"))
    assert records["user_id"] == ALICE
    assert {r["id"] for r in records["uploads"] + records["results"]} == set(expected)
    assert {a["request_id"] for a in records["audit"]} == {f"req-{ALICE}-0", f"req-{ALICE}-1", f"req-{ALICE}-running", "req-old"}
    assert all(a["user_id"] == ALICE for a in records["audit"])
    whole = b"".join(archive.read(n) for n in archive.namelist())
    assert BOB.encode() not in whole


def test_blobs_on_disk_are_encrypted(store, data_dir):
    images = [png(i, size=32) for i in range(3)]
    store.put_upload(ALICE, images[0], "image/png")
    store.begin_request("r", ALICE, "local")
    store.put_result(ALICE, "r", images[1], "image/png")
    store.put_result(ALICE, "r", images[2], "image/png", save=True)
    blobs = list((data_dir / "blobs").rglob("*.blob"))
    assert len(blobs) == 3
    for path in all_files(data_dir):
        content = path.read_bytes()
        assert PNG_SIGNATURE not in content
        assert b"IHDR" not in content
        for img in images:
            assert img not in content and img[16:48] not in content
    for blob in blobs:
        assert stat.S_IMODE(blob.stat().st_mode) == 0o600


def test_a_wrong_key_cannot_read(tmp_path, data_dir, clock):
    key_a, key_b = (SecretStr(base64.b64encode(os.urandom(32)).decode()) for _ in range(2))
    s1 = TryOnStore(StoreSettings(encryption_key=key_a, key_file=tmp_path / "unused.key"), data_dir, clock)
    rec = s1.put_upload(ALICE, png(1), "image/png")
    s1.close()
    s2 = TryOnStore(StoreSettings(encryption_key=key_b, key_file=tmp_path / "unused.key"), data_dir, clock)
    try:
        with pytest.raises(BlobDecryptError) as e:
            s2.get_upload(ALICE, rec.id)
        assert e.value.code == "internal_error"
        assert b"\x89PNG" not in str(e.value).encode()
    finally:
        s2.close()
    s3 = TryOnStore(StoreSettings(encryption_key=key_a, key_file=tmp_path / "unused.key"), data_dir, clock)
    try:
        assert s3.get_upload(ALICE, rec.id)[1] == png(1)
    finally:
        s3.close()
    assert not (tmp_path / "unused.key").exists()


def test_a_blob_moved_under_another_record_id_does_not_decrypt(store, data_dir):
    a = store.put_upload(ALICE, png(1), "image/png")
    b = store.put_upload(BOB, png(2), "image/png")
    path_a = next((data_dir / "blobs").rglob(f"*{a.id}.blob"))
    path_b = next((data_dir / "blobs").rglob(f"*{b.id}.blob"))
    path_b.write_bytes(path_a.read_bytes())  # swap Alice's ciphertext in for Bob's
    with pytest.raises(BlobDecryptError):
        store.get_upload(BOB, b.id)


def test_generated_key_file_is_private_outside_the_blobs_and_reused(tmp_path, data_dir, clock, settings):
    s1 = TryOnStore(settings, data_dir, clock)
    rec = s1.put_upload(ALICE, png(1), "image/png")
    s1.close()
    key_file = settings.key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert data_dir not in key_file.parents
    s2 = TryOnStore(settings, data_dir, clock)
    try:
        assert s2.get_upload(ALICE, rec.id)[1] == png(1)
    finally:
        s2.close()


def test_key_file_inside_blob_dir_or_bad_key_is_refused(tmp_path, clock):
    with pytest.raises(ValueError, match="inside the blob directory"):
        TryOnStore(StoreSettings(key_file=tmp_path / "d" / "blobs" / "k.key"), tmp_path / "d", clock)
    with pytest.raises(ValueError, match="32 bytes"):
        TryOnStore(StoreSettings(encryption_key=SecretStr("c2hvcnQ="), key_file=tmp_path / "k"), tmp_path / "d", clock)


def test_database_holds_no_image_bytes(store, tmp_path):
    img = png(7)
    store.put_upload(ALICE, img, "image/png")
    store.begin_request("r", ALICE, "local")
    store.put_result(ALICE, "r", img, "image/png")
    db = (tmp_path / "data" / "pexir.db")
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                    for v in row:
                        assert not isinstance(v, (bytes, memoryview)), table
                        assert "IHDR" not in str(v)
    finally:
        engine.dispose()
