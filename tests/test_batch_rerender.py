"""Batch re-render on a real (local, 2-CPU) Ray with the real local pipeline.

One manifest of real person photos x drawn garments, plus a row whose "photo" is a text file, a
row asking for trousers on a waist-up photo, and a row whose photo does not exist. Ray starts
once for this file; each run starts its own actor pool (the pipeline loads once per actor).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from unittest import mock

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest
from PIL import Image

from pexir_tryon.batch.rerender import rerender_command
from pexir_tryon.cli import build_parser
from pexir_tryon.samples import garment_sample, person_sample

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

DONE = {"a1": (512, 512), "a2": (512, 600), "a3": (512, 512), "a4": (512, 512)}  # id -> (width, height) of the person photo
FAILED = {"broken": "invalid_image", "waist_up_trousers": "body_region_not_visible", "missing": "invalid_request"}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A CSV manifest next to its images: persons as files and a file:// URL, garments by relative path."""
    folder = tmp_path_factory.mktemp("rerender")
    (folder / "garments").mkdir()
    for name in ("tshirt", "dress", "longsleeve", "trousers"):
        Image.fromarray(garment_sample(name)).save(folder / "garments" / f"{name}.png")
    Image.fromarray(person_sample("astronaut")).save(folder / "astronaut.jpg", quality=95)
    Image.fromarray(person_sample("grace_hopper")).save(folder / "grace_hopper.png")
    Image.fromarray(person_sample("camera")).save(folder / "camera.png")
    (folder / "broken.jpg").write_text("this is a text file, not a photo\n")
    lines = [
        "id,person,garment,category,seed",
        "a1,astronaut.jpg,garments/tshirt.png,upper,1",
        f"a2,file://{folder}/grace_hopper.png,garments/dress.png,dress,2",
        "a3,camera.png,garments/longsleeve.png,,",
        "a4,camera.png,garments/trousers.png,lower,7",
        "broken,broken.jpg,garments/tshirt.png,upper,0",
        "waist_up_trousers,astronaut.jpg,garments/trousers.png,lower,0",
        "missing,nobody.jpg,garments/tshirt.png,upper,0",
    ]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def cli_args(job, out, concurrency: int):
    return build_parser().parse_args(["rerender", str(job / "manifest.csv"), "--out", str(out), "--concurrency", str(concurrency)])


def run(job, capsys, out) -> tuple[int, str]:
    """A rerun, with one actor: one pipeline load on the 2 shared cores (and a different pool than the first run's)."""
    code = rerender_command(cli_args(job, out, 1))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rerender: ")]
    return code, lines[-1]


def results(out) -> dict[str, dict]:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == len({r["id"] for r in records}), "one line per id after a run"
    return {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def first_run(ray_session, job, tmp_path_factory):
    from pexir_tryon.batch.results import ResultsLog

    out = tmp_path_factory.mktemp("out")
    appended: list[list[str]] = []  # ids per append, and how many result lines were on disk before it
    original = ResultsLog.append

    def recording_append(self, records):
        on_disk = len((out / "results.jsonl").read_text().splitlines()) if (out / "results.jsonl").exists() else 0
        appended.append((on_disk, [r["id"] for r in records]))
        return original(self, records)

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), mock.patch.object(ResultsLog, "append", recording_append):
        code = rerender_command(cli_args(job, out, 2))
    summary = [line for line in buffer.getvalue().splitlines() if line.startswith("rerender: ")][-1]
    snapshot = {row_id: (out / f"{row_id}.png").read_bytes() for row_id in DONE}
    return out, code, summary, snapshot, appended


def test_first_run_writes_outputs_and_a_results_row_per_manifest_row(first_run):
    out, code, summary, _, _ = first_run
    assert code == 1  # some rows failed
    assert "done=4 skipped=0 failed=3" in summary
    records = results(out)
    assert list(records) == [*DONE, *FAILED]  # manifest order
    for row_id, size in DONE.items():
        record = records[row_id]
        assert record["status"] == "done" and record["error_code"] is None and record["error_message"] is None
        assert record["output"] == str(out / f"{row_id}.png")
        with Image.open(out / f"{row_id}.png") as image:
            assert image.format == "PNG" and image.size == size
        assert {"read", "geometry", "warp", "write", "total"} <= set(record["timings"])
        assert all(isinstance(v, float) and v >= 0 for v in record["timings"].values())
    for row_id, code_ in FAILED.items():
        record = records[row_id]
        assert (record["status"], record["error_code"], record["output"]) == ("failed", code_, None), record
        assert record["error_message"] and not (out / f"{row_id}.png").exists()
    assert "does not exist" in records["missing"]["error_message"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{i}.png" for i in DONE), "results.jsonl"])


def test_results_are_recorded_batch_by_batch_as_they_finish(first_run):
    appended = first_run[4]
    assert len(appended) >= 2, appended  # 7 rows over 2 actors: at least two batches
    assert sorted(i for _, ids in appended for i in ids) == sorted([*DONE, *FAILED])
    assert [before for before, _ in appended] == [sum(len(ids) for _, ids in appended[:k]) for k in range(len(appended))]


def test_second_run_does_no_work_for_done_rows_and_retries_failed_ones(first_run, job, capsys):
    out = first_run[0]
    before = {row_id: (out / f"{row_id}.png").stat().st_mtime_ns for row_id in DONE}
    finished_before = {row_id: rec["finished_at"] for row_id, rec in results(out).items()}
    code, summary = run(job, capsys, out)
    assert code == 1 and "done=0 skipped=4 failed=3" in summary
    assert {row_id: (out / f"{row_id}.png").stat().st_mtime_ns for row_id in DONE} == before
    records = results(out)
    assert {row_id: records[row_id]["finished_at"] for row_id in DONE} == {row_id: finished_before[row_id] for row_id in DONE}
    assert {row_id: records[row_id]["error_code"] for row_id in FAILED} == FAILED
    assert actor_processes_left() == [], "the job's actor processes must exit when it ends"


def actor_processes_left(wait_s: float = 90.0) -> list[int]:
    """Pids of RerenderWorker actor processes still alive after `wait_s` (a worker that blocks on
    exit, e.g. closing MediaPipe graphs in __del__, stays forever and holds its memory)."""
    import time
    from pathlib import Path

    if not Path("/proc/self/cmdline").exists():
        return []  # not Linux: nothing to look at
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if b"RerenderWorker" in cmdline.read_bytes():
                    left.append(int(cmdline.parent.name))
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def test_after_a_crash_only_unrecorded_rows_are_redone_and_they_come_out_byte_identical(first_run, job, capsys):
    out, _, _, snapshot, _ = first_run
    # Simulate a crash: only a1's result line made it to disk, the next line was torn mid-write,
    # and a3's output file never got written.
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:25])
    (out / "a3.png").unlink()
    (out / ".tmp-a4.png.dead").write_bytes(b"half a png")
    a1_mtime = (out / "a1.png").stat().st_mtime_ns

    code, summary = run(job, capsys, out)

    assert code == 1 and "done=3 skipped=1 failed=3" in summary
    assert (out / "a1.png").stat().st_mtime_ns == a1_mtime
    for row_id in DONE:  # re-rendered in a fresh actor of another pool size: same row + seed, same bytes
        assert (out / f"{row_id}.png").read_bytes() == snapshot[row_id], row_id
    assert not (out / ".tmp-a4.png.dead").exists()
    records = results(out)
    assert [r["status"] for r in records.values()] == ["done"] * 4 + ["failed"] * 3
