"""Batch re-render, the parts that need no Ray: manifests, the results log, the resume plan, the worker, pool sizing."""

from __future__ import annotations

import json
import logging

import pytest

from pexir_tryon.batch.manifest import ManifestRow, fingerprint, read_manifest
from pexir_tryon.batch.rerender import plan_pool, plan_rows
from pexir_tryon.atomic import write_atomically
from pexir_tryon.batch.results import RESULTS_NAME, ResultsLog
from pexir_tryon.batch.worker import parse_options
from pexir_tryon.images import read_image
from pexir_tryon.config import ImageSettings
from pexir_tryon.errors import TryOnError

ROWS = [
    {"id": "r1", "person": "people/p.jpg", "garment": "/abs/g.png", "category": "upper", "seed": 3},
    {"id": "r2", "person": "file:///data/p2.jpg", "garment": "sample:tshirt", "category": "", "seed": None},
]


def write_manifest(folder, kind: str, rows=ROWS) -> str:
    path = folder / f"manifest.{kind}"
    if kind == "csv":
        lines = ["id,person,garment,category,seed"]
        lines += [f"{r['id']},{r['person']},{r['garment']},{r['category']},{'' if r['seed'] is None else r['seed']}" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_each_format_gives_the_same_rows_with_paths_resolved_against_the_manifest_folder(tmp_path, kind):
    rows = read_manifest(write_manifest(tmp_path, kind))
    assert [r.id for r in rows] == ["r1", "r2"]
    assert rows[0].person == str(tmp_path / "people" / "p.jpg")
    assert rows[0].garment == "/abs/g.png"
    assert (rows[0].category, rows[0].seed) == ("upper", "3")
    assert rows[1].person == "file:///data/p2.jpg" and rows[1].garment == "sample:tshirt"
    assert (rows[1].category, rows[1].seed) == ("auto", "")
    assert rows[0].fingerprint != rows[1].fingerprint and len(rows[0].fingerprint) == 16


def test_a_manifest_given_as_a_url_resolves_relative_paths_to_urls(tmp_path):
    import fsspec

    assert read_manifest("file://" + write_manifest(tmp_path, "jsonl"))[0].person == str(tmp_path / "people" / "p.jpg")
    memory = fsspec.filesystem("memory")
    try:
        memory.pipe_file("/pexir-manifest-test/jobs/m.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())
        rows = read_manifest("memory://pexir-manifest-test/jobs/m.jsonl")
    finally:
        memory.rm("/pexir-manifest-test", recursive=True)
    assert rows[0].person.replace(":///", "://") == "memory://pexir-manifest-test/jobs/people/p.jpg"
    assert rows[1].person == "file:///data/p2.jpg"


def test_duplicate_ids_are_refused_naming_them(tmp_path):
    rows = ROWS + [dict(ROWS[0], person="other.jpg"), dict(ROWS[1], id="R2")]
    with pytest.raises(TryOnError) as caught:
        read_manifest(write_manifest(tmp_path, "jsonl", rows))
    assert caught.value.code == "invalid_request"
    assert "duplicate ids" in caught.value.message and "'r1'" in caught.value.message and "r2/R2" in caught.value.message


def test_duplicate_ids_stop_the_cli_before_any_work(tmp_path, capsys):
    from pexir_tryon.cli import main

    manifest = write_manifest(tmp_path, "csv", ROWS + [ROWS[0]])
    out = tmp_path / "out"
    logger = logging.getLogger("pexir_tryon")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        code = main(["--native-logs", "rerender", manifest, "--out", str(out)])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert code == 2
    assert "error[invalid_request]: The manifest has duplicate ids" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("bad_id", ["", "a/b", "..", ".hidden", "x" * 201])
def test_ids_that_cannot_name_a_file_are_refused(tmp_path, bad_id):
    with pytest.raises(TryOnError, match="the id"):
        read_manifest(write_manifest(tmp_path, "jsonl", [dict(ROWS[0], id=bad_id)]))


def test_missing_columns_missing_manifest_and_unknown_format_are_invalid_request(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,person\na,b.jpg\n")
    with pytest.raises(TryOnError, match="garment"):
        read_manifest(str(path))
    with pytest.raises(TryOnError, match="does not exist"):
        read_manifest(str(tmp_path / "none.csv"))
    with pytest.raises(TryOnError, match=r"\.csv, \.jsonl or \.parquet"):
        read_manifest(str(tmp_path / "m.xlsx"))


def test_row_options_are_checked_per_row():
    assert parse_options({"category": "", "seed": ""}, 7) == ("auto", 7)
    assert parse_options({"category": "dress", "seed": "42"}, 0) == ("dress", 42)
    with pytest.raises(TryOnError) as caught:
        parse_options({"category": "hat", "seed": "1"}, 0)
    assert caught.value.code == "unsupported_category"
    for seed in ("x", "-1", "1.5"):
        with pytest.raises(TryOnError) as caught:
            parse_options({"category": "upper", "seed": seed}, 0)
        assert caught.value.code == "invalid_request"


def test_unreadable_inputs_are_typed_errors_without_url_credentials(tmp_path):
    limits = ImageSettings()
    with pytest.raises(TryOnError) as caught:
        read_image(f"file://{tmp_path}/nope.jpg?X-Amz-Signature=secret", limits, what="person", keep_alpha=False)
    assert caught.value.code == "invalid_request" and "does not exist" in caught.value.message
    assert "secret" not in caught.value.message
    (tmp_path / "text.jpg").write_text("<html>not a photo</html>")
    with pytest.raises(TryOnError) as caught:
        read_image(str(tmp_path / "text.jpg"), limits, what="person", keep_alpha=False)
    assert caught.value.code == "invalid_image"
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * 2000)
    with pytest.raises(TryOnError) as caught:
        read_image(str(big), limits.model_copy(update={"max_upload_bytes": 1000}), what="garment", keep_alpha=True)
    assert caught.value.code == "image_too_large"


def _row(row_id: str, seed: str = "0") -> ManifestRow:
    return ManifestRow(row_id, "p.jpg", "g.png", "auto", seed, fingerprint("p.jpg", "g.png", "auto", seed, "local"))


def test_resume_plan_skips_only_done_rows_from_the_same_inputs_whose_output_is_present():
    rows = [_row("done"), _row("failed"), _row("gone"), _row("changed", seed="9"), _row("new")]
    previous = {
        "done": {"status": "done", "fingerprint": rows[0].fingerprint},
        "failed": {"status": "failed", "fingerprint": rows[1].fingerprint},
        "gone": {"status": "done", "fingerprint": rows[2].fingerprint},
        "changed": {"status": "done", "fingerprint": _row("changed", seed="1").fingerprint},
    }
    todo, skipped = plan_rows(rows, previous, outputs={"done", "failed", "changed"})
    assert [r.id for r in skipped] == ["done"]
    assert [r.id for r in todo] == ["failed", "gone", "changed", "new"]


def _record(row_id: str, status: str) -> dict:
    return {"id": row_id, "status": status, "output": None, "error_code": None, "error_message": None, "timings": {"total": 1.0}}


def test_results_log_appends_survives_a_torn_line_and_compacts_to_one_line_per_id(tmp_path):
    log = ResultsLog(str(tmp_path))
    log.append([_record("a", "failed"), _record("b", "done")])
    with open(tmp_path / RESULTS_NAME, "ab") as handle:
        handle.write(b'{"id":"c","sta')  # a crash mid-line
    log = ResultsLog(str(tmp_path))
    assert set(log.load()) == {"a", "b"}
    log.append([_record("a", "done")])
    assert log.load()["a"]["status"] == "done"
    assert log.compact(order=["b", "a"]) == 2
    lines = [json.loads(line) for line in (tmp_path / RESULTS_NAME).read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in lines] == [("b", "done"), ("a", "done")]
    assert list(lines[0]) == ["id", "status", "output", "error_code", "error_message", "timings", "fingerprint", "backend", "finished_at"]


def test_results_on_an_object_store_are_written_as_parts_then_folded_in(tmp_path):
    import fsspec

    url = "memory://pexir-batch-test/out"
    try:
        log = ResultsLog(url)
        log.append([_record("a", "failed")])
        log.append([_record("b", "done")])
        assert len(log._part_files()) == 2 and not log.fs.exists(log.path)
        assert set(ResultsLog(url).load()) == {"a", "b"}  # a crashed run's parts are read back
        log.append([_record("a", "done")])
        log.compact()
        assert log._part_files() == []
        text = log.fs.cat_file(log.path).decode()
        assert [json.loads(line)["status"] for line in text.splitlines()] == ["done", "done"]
        write_atomically(log.fs, f"{log.root}/a.png", b"png")
        assert ResultsLog(url).existing_outputs() == {"a"}
    finally:
        fsspec.filesystem("memory").rm("/pexir-batch-test", recursive=True)


def test_local_outputs_are_written_atomically_and_temp_files_are_cleaned(tmp_path):
    write_atomically(ResultsLog(str(tmp_path)).fs, str(tmp_path / "x.png"), b"data")
    assert (tmp_path / "x.png").read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    (tmp_path / ".tmp-y.png.abcd").write_bytes(b"half")
    log = ResultsLog(str(tmp_path))
    assert log.existing_outputs() == {"x"}
    assert log.remove_stale_temp_files() == 1 and not (tmp_path / ".tmp-y.png.abcd").exists()


def test_pool_uses_one_gpu_per_actor_when_the_cluster_has_gpus_else_cpus():
    gpu = plan_pool({"CPU": 16.0, "GPU": 4.0}, backend="local", concurrency=None, device_setting="auto")
    assert (gpu.actors, gpu.num_gpus, gpu.num_cpus, gpu.device) == (4, 1.0, 4.0, "cuda")
    shared = plan_pool({"CPU": 16.0, "GPU": 1.0}, backend="local", concurrency=4, device_setting="cuda:1")
    assert (shared.actors, shared.num_gpus, shared.device) == (4, 0.25, "cuda")
    cpu = plan_pool({"CPU": 8.0}, backend="local", concurrency=None, device_setting="auto")
    assert (cpu.actors, cpu.num_gpus, cpu.num_cpus, cpu.device) == (4, 0.0, 2.0, "cpu")
    squeezed = plan_pool({"CPU": 2.0}, backend="local", concurrency=4, device_setting="auto")
    assert squeezed.actors == 4 and squeezed.num_cpus == 0.5
    forced_cpu = plan_pool({"CPU": 8.0, "GPU": 2.0}, backend="local", concurrency=None, device_setting="cpu")
    assert forced_cpu.num_gpus == 0.0
    cloud = plan_pool({"CPU": 8.0, "GPU": 2.0}, backend="alibaba", concurrency=None, device_setting="auto")
    assert (cloud.actors, cloud.num_gpus) == (1, 0.0)


class _FakeBackend:
    name = "fake"

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.jobs = []

    async def try_on(self, job):
        import numpy as np

        from pexir_tryon.backends.base import TryOnResult

        self.jobs.append((job.request_id, job.category, job.seed, job.person.shape, job.garment.shape))
        if self.fail is not None:
            raise self.fail
        return TryOnResult(image=np.full(job.person.shape, job.seed % 256, dtype=np.uint8), category="upper", backend="fake", timings_s={"stage": 0.5})

    async def close(self):
        pass


def _worker(tmp_path, backend):
    import asyncio

    from pexir_tryon.batch.results import out_location
    from pexir_tryon.batch.worker import RerenderWorker
    from pexir_tryon.config import Settings

    worker = RerenderWorker.__new__(RerenderWorker)  # the real __init__ loads a pipeline; the rest is what runs
    worker.settings, worker.backend_name, worker.backend = Settings(), "fake", backend
    worker.fs, worker.root = out_location(str(tmp_path))
    worker._loop = asyncio.new_event_loop()
    worker._rows = asyncio.Semaphore(1)
    return worker


def test_worker_writes_each_output_and_turns_every_row_failure_into_a_record(tmp_path):
    import numpy as np

    backend = _FakeBackend()
    worker = _worker(tmp_path, backend)
    rows = {
        "id": np.array(["ok", "hat", "gone"], dtype=object),
        "person": np.array(["sample:astronaut", "sample:astronaut", str(tmp_path / "none.jpg")], dtype=object),
        "garment": np.array(["sample:tshirt"] * 3, dtype=object),
        "category": np.array(["upper", "hat", "upper"], dtype=object),
        "seed": np.array(["5", "", ""], dtype=object),
        "fingerprint": np.array(["f1", "f2", "f3"], dtype=object),
    }
    records = [json.loads(text) for text in worker(rows)["record"]]
    worker.close()
    assert [(r["id"], r["status"], r["error_code"]) for r in records] == [
        ("ok", "done", None), ("hat", "failed", "unsupported_category"), ("gone", "failed", "invalid_request")]
    assert backend.jobs == [("batch-ok", "upper", 5, (512, 512, 3), (700, 600, 3))]
    assert records[0]["output"] == str(tmp_path / "ok.png") and records[0]["fingerprint"] == "f1"
    assert set(records[0]["timings"]) == {"read", "stage", "write", "total"}
    from PIL import Image

    with Image.open(tmp_path / "ok.png") as image:
        assert image.size == (512, 512) and image.getpixel((0, 0)) == (5, 5, 5)


def test_an_unexpected_exception_is_a_failed_row_not_a_dead_actor(tmp_path):
    worker = _worker(tmp_path, _FakeBackend(fail=RuntimeError("boom /private/path secret")))
    row = {"id": "x", "person": "sample:grace_hopper", "garment": "sample:dress", "category": "dress", "seed": "1", "fingerprint": "f"}
    record = worker._loop.run_until_complete(worker.render_row(row))
    worker.close()
    assert (record["status"], record["error_code"], record["output"]) == ("failed", "internal_error", None)
    assert "RuntimeError" in record["error_message"] and "secret" not in record["error_message"]
    assert not (tmp_path / "x.png").exists()


def test_a_row_seed_follows_the_same_range_as_http_and_the_cli():
    from pexir_tryon.backends.base import MAX_SEED

    assert parse_options({"category": "upper", "seed": str(MAX_SEED)}, 0) == ("upper", MAX_SEED)
    with pytest.raises(TryOnError, match=f"from 0 to {MAX_SEED}"):
        parse_options({"category": "upper", "seed": str(MAX_SEED + 1)}, 0)


def test_an_unknown_sample_in_a_row_is_named_as_the_image_it_stands_for(tmp_path):
    worker = _worker(tmp_path, _FakeBackend())
    rows = [{"id": "p", "person": "sample:nobody", "garment": "sample:tshirt", "category": "", "seed": "", "fingerprint": "f"},
            {"id": "g", "person": "sample:astronaut", "garment": "sample:nothing", "category": "", "seed": "", "fingerprint": "f"}]
    person, garment = worker._loop.run_until_complete(worker.render_rows(rows))
    worker.close()
    assert person["error_code"] == "invalid_request" and "person sample 'nobody'" in person["error_message"]
    assert "astronaut" in person["error_message"] and "tshirt" not in person["error_message"]
    assert "garment sample 'nothing'" in garment["error_message"] and "tshirt" in garment["error_message"]
