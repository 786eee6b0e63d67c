"""Benchmark the batch re-render job: rows/s of the Ray Data job against a plain sequential loop.

    python benchmarks/bench_batch.py --quick          # 12 rows, 1 and 2 actors, 2 repeats (CPU)
    python benchmarks/bench_batch.py --device cuda    # 48 rows, more actor counts, 3 repeats

Both sides do the same work per row: read the two image files, decode them, run the local
pipeline (`TryOnPipeline.run_batch` in the loop; the same stages inside `RerenderWorker` actors
in the job), encode the PNG and write it. Rows are real person photos x drawn garments (written
to a temp folder first), all of them renderable.

- sequential: one process, pipeline loaded once; `wall_s` includes that load (the imports are
  already done: the benchmark process has imported everything before the clock starts).
- ray_data: `run_rerender` on an already started local Ray (its start-up is not counted); `wall_s`
  includes reading the manifest, starting the actor pool (each actor is a fresh process that
  imports torch/MediaPipe and loads the pipeline), rendering, and recording results.

`steady_rows_per_s` for the loop leaves the load out; for the job it is estimated from the rows'
own `timings.total` (rows x actors / summed row seconds), i.e. what the pool sustains once
loaded, without scheduling gaps. Writes ``benchmarks/results/batch_<device>.json`` (machine,
versions, config, raw samples, medians) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, machine, setup_environment, versions  # noqa: E402

setup_environment()

from pexir_tryon.backends.base import TryOnJob  # noqa: E402
from pexir_tryon.config import get_settings, resolve_device  # noqa: E402
from pexir_tryon.errors import TryOnError  # noqa: E402
from pexir_tryon.images import encode_png  # noqa: E402

PERSONS = ("astronaut", "grace_hopper", "camera")
GARMENTS = (("tshirt", "upper"), ("longsleeve", "upper"), ("dress", "dress"), ("tshirt_striped", "upper"), ("dress_checked", "dress"))


def make_inputs(folder: Path, rows: int) -> Path:
    """Person and garment files plus a CSV manifest of `rows` renderable rows; returns the manifest."""
    from PIL import Image

    from pexir_tryon.samples import garment_sample, person_sample

    for name in PERSONS:
        Image.fromarray(person_sample(name)).save(folder / f"{name}.png")
    for name, _ in GARMENTS:
        Image.fromarray(garment_sample(name)).save(folder / f"{name}.png")
    combos = [(p, g, c) for p in PERSONS for g, c in GARMENTS]
    lines = ["id,person,garment,category,seed"]
    for index in range(rows):
        person, garment, category = combos[index % len(combos)]
        lines.append(f"row{index:04d},{person}.png,{garment}.png,{category},{index}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def sequential(manifest: Path, out: Path, settings, device: str, batch_size: int) -> dict:
    """The plain loop: read, `run_batch`, write; one process."""
    from pexir_tryon.batch.manifest import read_manifest
    from pexir_tryon.batch.worker import parse_options
    from pexir_tryon.images import read_image
    from pexir_tryon.pipeline import TryOnPipeline

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipeline = TryOnPipeline.from_settings(settings, device=device)
    loaded = time.perf_counter()
    rows = read_manifest(str(manifest))
    done = failed = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        jobs = []
        for row in chunk:
            category, seed = parse_options(row.as_dict(), settings.default_seed)
            person = read_image(row.person, settings.images, what="person", keep_alpha=False)
            garment = read_image(row.garment, settings.images, what="garment", keep_alpha=True)
            jobs.append(TryOnJob(request_id=row.id, user_id="bench", person=person, garment=garment, category=category, seed=seed))
        for row, result in zip(chunk, pipeline.run_batch(jobs)):
            if isinstance(result, TryOnError):
                failed += 1
                continue
            (out / f"{row.id}.png").write_bytes(encode_png(result.image))
            done += 1
    finished = time.perf_counter()
    detector = getattr(pipeline.stages, "detector", None)
    if hasattr(detector, "close"):
        detector.close()
    return {
        "wall_s": finished - started,
        "load_s": loaded - started,
        "done": done,
        "failed": failed,
        "rows_per_s": done / (finished - started),
        "steady_rows_per_s": done / (finished - loaded),
    }


def ray_job(manifest: Path, out: Path, settings, actors: int, batch_size: int) -> dict:
    from pexir_tryon.batch.rerender import run_rerender

    started = time.perf_counter()
    summary = run_rerender(str(manifest), str(out), concurrency=actors, batch_size=batch_size, settings=settings, progress=False, echo=lambda _: None)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    row_seconds = [r["timings"]["total"] for r in records if r["status"] == "done"]
    return {
        "wall_s": wall,
        "done": summary.done,
        "failed": summary.failed,
        "rows_per_s": summary.done / wall,
        "steady_rows_per_s": (len(row_seconds) * actors / sum(row_seconds)) if row_seconds else None,
        "median_row_s": statistics.median(row_seconds) if row_seconds else None,
    }


def run(args) -> dict:
    import ray

    settings = get_settings()
    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    device = resolve_device(settings.device)
    cpus = os.cpu_count() or 1
    if args.quick:
        rows, repeats, actor_counts = 12, 2, [1, 2]
    else:
        rows, repeats, actor_counts = 48, 3, sorted({1, 2, max(1, cpus // 2)})
    if device.startswith("cuda"):
        import torch

        actor_counts = sorted({1, torch.cuda.device_count()})
    rows = args.rows or rows
    repeats = args.repeats or repeats
    actor_counts = args.actors or actor_counts
    batch_size = args.batch_size

    work = Path(tempfile.mkdtemp(prefix="pexir-bench-batch-"))
    samples: list[dict] = []
    try:
        manifest = make_inputs(work, rows)
        ray_started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False,
                 _system_config={"automatic_object_spilling_enabled": False})
        ray_start_s = time.perf_counter() - ray_started
        print(f"{rows} rows, {repeats} repeats, device {device}, Ray started in {ray_start_s:.1f} s (not counted)")
        print(f"{'mode':>10} {'actors':>6} {'rep':>3} {'wall s':>8} {'rows/s':>8} {'steady rows/s':>14} {'failed':>6}")
        for repeat in range(repeats):  # interleaved, so a busy spell on a shared machine hits every mode
            configs = [("sequential", 1)] + [("ray_data", n) for n in actor_counts]
            for mode, actors in configs:
                out = work / f"out-{mode}-{actors}-{repeat}"
                if mode == "sequential":
                    sample = sequential(manifest, out, settings, device, batch_size)
                else:
                    sample = ray_job(manifest, out, settings, actors, batch_size)
                sample.update(mode=mode, actors=actors, repeat=repeat, rows=rows)
                samples.append(sample)
                shutil.rmtree(out, ignore_errors=True)
                steady = sample["steady_rows_per_s"]
                print(f"{mode:>10} {actors:>6} {repeat:>3} {sample['wall_s']:>8.2f} {sample['rows_per_s']:>8.3f} "
                      f"{(steady or 0):>14.3f} {sample['failed']:>6}", flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = []
    for mode, actors in [("sequential", 1)] + [("ray_data", n) for n in actor_counts]:
        group = [s for s in samples if s["mode"] == mode and s["actors"] == actors]
        entry = {
            "mode": mode,
            "actors": actors,
            "wall_s": round(statistics.median(s["wall_s"] for s in group), 3),
            "rows_per_s": round(statistics.median(s["rows_per_s"] for s in group), 4),
            "steady_rows_per_s": round(statistics.median(s["steady_rows_per_s"] for s in group if s["steady_rows_per_s"]), 4),
        }
        if mode == "sequential":
            entry["load_s"] = round(statistics.median(s["load_s"] for s in group), 3)
        medians.append(entry)
    base = medians[0]["rows_per_s"]
    for entry in medians:
        entry["speedup_vs_sequential"] = round(entry["rows_per_s"] / base, 3)

    print("\nmedians")
    print(f"{'mode':>10} {'actors':>6} {'wall s':>8} {'rows/s':>8} {'steady rows/s':>14} {'x sequential':>12}")
    for entry in medians:
        print(f"{entry['mode']:>10} {entry['actors']:>6} {entry['wall_s']:>8.2f} {entry['rows_per_s']:>8.3f} "
              f"{entry['steady_rows_per_s']:>14.3f} {entry['speedup_vs_sequential']:>12.2f}")

    return {
        "benchmark": "batch",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(device),
        "versions": versions("ray", "torch", "mediapipe", "numpy", "pyarrow", "fsspec", "opencv-contrib-python", "pexir-tryon"),
        "config": {
            "device": device,
            "quick": args.quick,
            "rows": rows,
            "repeats": repeats,
            "actor_counts": actor_counts,
            "batch_size": batch_size,
            "refiner": str(settings.refiner.model_dir) if settings.refiner.model_dir else None,
            "ray_start_s_not_counted": round(ray_start_s, 3),
            "inputs": {"persons": list(PERSONS), "garments": [g for g, _ in GARMENTS]},
            "notes": "wall_s includes pipeline load (sequential) and actor-pool start-up (ray_data); see the module docstring.",
        },
        "samples": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()} for s in samples],
        "medians": medians,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 rows, 1 and 2 actors, 2 repeats")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default from config)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--actors", type=int, nargs="+", default=None, help="actor counts to try")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for batch_<device>.json")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"batch_{'cuda' if report['config']['device'].startswith('cuda') else 'cpu'}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
