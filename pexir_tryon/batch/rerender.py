"""`pexir-tryon rerender MANIFEST --out DIR`: a resumable batch re-render on Ray Data.

1. Read the manifest in the driver (ids and locations only) and stop before any work on a
   manifest-level problem (duplicate ids, missing columns) or, for `--backend alibaba`, on a
   backend that is not configured (no API key, no upload target).
2. Read `results.jsonl` in `--out`: a row already `done` from the same inputs, seed and backend
   whose `<id>.png` is still there is skipped; every other row (new, failed, changed, output
   gone) is rendered.
3. `map_batches` over the rows with a fixed pool of `RerenderWorker` actors (one GPU each when
   the cluster has GPUs and the local backend runs, else CPUs), which read the images, render,
   and write `<id>.png` themselves.
4. The driver appends each finished batch's records to `results.jsonl` as it arrives, then
   compacts the file to one line per id, and prints `done=… skipped=… failed=…`.

On a multi-node cluster (`--address`), `--out` and the images must be reachable from every node
(a shared filesystem or an fsspec URL such as s3://...), since actors read and write them. One
job at a time per output folder: two runs into the same `--out` would both render pending rows.

Exit codes: 0 every row is done (now or before), 1 some rows failed (see results.jsonl),
2 (from the CLI) the manifest was refused, 130 interrupted (finished rows are kept).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

from .manifest import ManifestRow, read_manifest
from .results import RESULTS_NAME, ResultsLog

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4
MAX_BLOCKS = 10_000
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # rows and records only: pixels never enter the object store


@dataclass
class RerenderSummary:
    rows: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    results: str = ""
    interrupted: bool = False
    failed_codes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = f", {self.done / self.seconds:.2f} rows/s" if self.seconds > 0 and self.done else ""
        codes = ""
        if self.failed_codes:
            codes = " (" + ", ".join(f"{code} {n}" for code, n in sorted(self.failed_codes.items())) + ")"
        state = "interrupted: " if self.interrupted else ""
        return (f"rerender: {state}done={self.done} skipped={self.skipped} failed={self.failed}{codes} "
                f"of {self.rows} rows in {self.seconds:.1f} s{rate}; results: {self.results}")


@dataclass(frozen=True)
class PoolPlan:
    actors: int
    num_cpus: float
    num_gpus: float
    device: str | None


def plan_pool(cluster: dict, *, backend: str, concurrency: int | None, device_setting: str) -> PoolPlan:
    """Actors and resources per actor: a GPU each when there are GPUs (local backend), else CPUs."""
    cpus = float(cluster.get("CPU", 1.0)) or 1.0
    gpus = int(cluster.get("GPU", 0) or 0)
    if backend == "alibaba":  # network-bound: one actor runs many rows at once
        actors = concurrency or 1
        return PoolPlan(actors, min(1.0, cpus / actors), 0.0, "cpu")
    use_gpu = gpus > 0 and device_setting != "cpu"
    if use_gpu:
        # One GPU per actor; more actors than GPUs share them (MediaPipe's CPU work then overlaps
        # another actor's GPU work). Ray exposes each actor's GPU(s) as device 0.
        actors = concurrency or gpus
        per_gpu = 1.0 if actors <= gpus else round(gpus / actors, 4)
        per_cpu = float(max(1, min(4, math.floor(cpus / actors)))) if cpus >= actors else cpus / actors
        return PoolPlan(actors, per_cpu, per_gpu, "cuda")
    actors = concurrency or max(1, int(cpus // 2))
    if cpus >= 2 * actors:
        per_actor = 2.0
    elif cpus >= actors:
        per_actor = float(math.floor(cpus / actors))
    else:
        per_actor = cpus / actors
    return PoolPlan(actors, per_actor, 0.0, "cpu" if device_setting == "auto" else device_setting)


def plan_rows(rows: list[ManifestRow], previous: dict[str, dict], outputs: set[str]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """(to render, skipped): skipped rows are done, from the same inputs, with their output present."""
    todo, skipped = [], []
    for row in rows:
        before = previous.get(row.id)
        if before and before.get("status") == "done" and before.get("fingerprint") == row.fingerprint and row.id in outputs:
            skipped.append(row)
        else:
            todo.append(row)
    return todo, skipped


def check_alibaba_settings(settings) -> None:
    """Build (and close) the Alibaba backend once in the driver, so a missing API key or upload
    target is one TryOnError("backend_misconfigured") before Ray starts, not a failure in every actor."""
    import asyncio

    from ..backends.alibaba import AlibabaCloudBackend

    async def build_and_close() -> None:
        backend = AlibabaCloudBackend.from_settings(settings)  # its constructor is the configuration check
        await backend.close()

    asyncio.run(build_and_close())


def _ensure_ray(address: str | None, settings) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", settings.serve.ray_auth_mode)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    system_config = {} if settings.serve.object_spilling else {"automatic_object_spilling_enabled": False}
    ray.init(include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, _system_config=system_config)
    return True


def run_rerender(
    manifest: str,
    out: str,
    *,
    backend: str = "local",
    concurrency: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings=None,
    address: str | None = None,
    progress: bool = True,
    echo=None,
) -> RerenderSummary:
    """Run (or resume) a re-render job; returns the counts. Raises TryOnError on a refused manifest."""
    from ..config import get_settings

    if backend not in ("local", "alibaba"):
        from ..errors import TryOnError

        raise TryOnError("invalid_request", f"Unknown backend {backend!r}; use local or alibaba.")
    if concurrency is not None and concurrency < 1:
        from ..errors import TryOnError

        raise TryOnError("invalid_request", "--concurrency must be at least 1.")
    settings = settings or get_settings()
    if backend == "alibaba":
        check_alibaba_settings(settings)
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()

    rows = read_manifest(manifest, backend=backend)  # refuses a bad manifest before any work
    results = ResultsLog(out)
    # Actors get the resolved location: their working directory is not the driver's.
    out = results.root if results.local else results.fs.unstrip_protocol(results.root)
    results.remove_stale_temp_files()
    todo, skipped = plan_rows(rows, results.load(), results.existing_outputs())
    summary = RerenderSummary(rows=len(rows), skipped=len(skipped), results=f"{out.rstrip('/')}/{RESULTS_NAME}")
    echo(f"rerender: {len(rows)} rows: {len(todo)} to render, {len(skipped)} already done")

    started_ray = False
    try:
        if todo:
            started_ray = _ensure_ray(address, settings)
            _run_pool(todo, results, summary, settings=settings, backend=backend, out=out,
                      concurrency=concurrency, batch_size=batch_size, progress=progress, echo=echo)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        try:
            results.compact(order=[row.id for row in rows])
        except Exception:  # noqa: BLE001 - the appended log is still complete; the next run compacts
            log.warning("rerender: could not compact results", extra={"event": "rerender_compact_failed"}, exc_info=True)
        if started_ray:
            import ray

            ray.shutdown()
        summary.seconds = time.perf_counter() - started
    return summary


def _run_pool(todo, results: ResultsLog, summary: RerenderSummary, *, settings, backend, out, concurrency, batch_size, progress, echo) -> None:
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    from .worker import RerenderWorker

    pool = plan_pool(ray.cluster_resources(), backend=backend, concurrency=concurrency, device_setting=settings.device)
    actors = min(pool.actors, len(todo))
    # One block = one batch = one task, so results come back (and are recorded) batch by batch;
    # small jobs get smaller batches so that every actor has work.
    batch_size = max(1, min(batch_size, math.ceil(len(todo) / actors)))
    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(todo) / batch_size)))
    echo(f"rerender: {actors} {backend} actor(s), {pool.num_cpus:g} CPU and {pool.num_gpus:g} GPU each, batches of {batch_size}")

    context = DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        dataset = ray.data.from_items([row.as_dict() for row in todo], override_num_blocks=blocks)
        rendered = dataset.map_batches(
            RerenderWorker,
            fn_constructor_kwargs={
                "settings": settings, "backend": backend, "out": out, "device": pool.device,
                "row_concurrency": settings.alibaba.max_concurrent_tasks if backend == "alibaba" else 1,
            },
            compute=ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus or None,
            udf_modifying_row_count=False,
        )
        import json

        for batch in rendered.iter_batches(batch_size=None, batch_format="numpy"):
            records = [json.loads(text) for text in batch["record"]]
            results.append(records)  # durable before the next batch is taken
            for record in records:
                if record["status"] == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    code = record.get("error_code") or "internal_error"
                    summary.failed_codes[code] = summary.failed_codes.get(code, 0) + 1
    finally:
        context.enable_progress_bars = saved


def rerender_command(args) -> int:
    """The CLI's `rerender` subcommand (args: manifest, out, address, backend, concurrency)."""
    summary = run_rerender(
        args.manifest,
        args.out,
        backend=getattr(args, "backend", "local") or "local",
        concurrency=getattr(args, "concurrency", None),
        batch_size=getattr(args, "batch_size", None) or DEFAULT_BATCH_SIZE,
        address=getattr(args, "address", None),
    )
    print(summary.line(), flush=True)
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0
