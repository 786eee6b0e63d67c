"""The same behaviour on SQLite (always) and PostgreSQL (when PEXIR_TEST_POSTGRES_URL names an
empty scratch database, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/pexir_store_test)."""

from __future__ import annotations

import os
import threading

import pytest

from pexir_tryon.config import StoreSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.store import TryOnStore
from pexir_tryon.store.schema import Base
from pexir_tryon.store.testing import FakeClock
from fakes.store_files import png

POSTGRES_URL = os.environ.get("PEXIR_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "postgresql":
        if not POSTGRES_URL:
            pytest.skip("set PEXIR_TEST_POSTGRES_URL to a scratch PostgreSQL database to run this")
        url = POSTGRES_URL
    else:
        url = "sqlite:///{data_dir}/pexir.db"
    clock = FakeClock()
    s = TryOnStore(StoreSettings(database_url=url, key_file=tmp_path / "k.key", result_ttl_s=60, upload_ttl_s=60), tmp_path / "d", clock)
    Base.metadata.drop_all(s.engine)  # a scratch database: start empty
    Base.metadata.create_all(s.engine)
    s.test_clock = clock
    yield s
    if request.param == "postgresql":
        Base.metadata.drop_all(s.engine)
    s.close()


def test_lifecycle_round_trip(store):
    clock = store.test_clock
    up = store.put_upload("user-a", png(1), "image/png")
    store.begin_request("req-1", "user-a", "local")
    res = store.put_result("user-a", "req-1", png(2), "image/png")
    store.finish_request("req-1", status="ok", error_code=None, timings_s={"refine": 1.5})
    assert store.get_upload("user-a", up.id)[0].expires_at == up.expires_at
    assert store.get_result("user-a", res.id)[0].created_at == res.created_at
    (audit,) = store.audit_records("user-a")
    assert audit["timings"] == {"refine": 1.5} and audit["retention_deadline"] == res.expires_at.isoformat()
    clock.advance(61)
    report = store.sweep()
    assert (report.uploads, report.results, report.audit_marked) == (1, 1, 1)
    assert store.audit_records("user-a")[0]["deleted_at"] == clock().isoformat()


def test_purge_wins_over_results_racing_it(store):
    """Results written while the user is purged are either refused or removed by the purge."""
    n = 12
    for i in range(n):
        store.begin_request(f"req-{i}", "user-a", "local")
    store.begin_request("req-b", "user-b", "local")
    kept = store.put_result("user-b", "req-b", png(99), "image/png")
    start = threading.Barrier(n + 1)
    refused: list[int] = []
    errors: list[BaseException] = []

    def writer(i: int):
        start.wait()
        try:
            store.put_result("user-a", f"req-{i}", png(i), "image/png")
        except TryOnError as e:
            assert e.code == "not_found"
            refused.append(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    store.purge_user("user-a")
    for t in threads:
        t.join()
    assert errors == []
    # whatever slipped in before the purge's audit delete was removed with it: nothing is left
    assert store.audit_records("user-a") == []
    assert store.export_user("user-a") and store.purge_user("user-a").results == 0
    keys = {e.key for e in store.blobs.list()}
    assert len(keys) == 1 and store.get_result("user-b", kept.id)[1] == png(99)
