"""The Ray Data actor of a re-render job: loads the backend once, then renders batches of rows.

Each row's images are read here, inside the actor, through fsspec (the driver only ever holds
ids and locations), and each result is written here as `<out>/<id>.png`, atomically. Pixels and
geometry never enter Ray's object store: what goes back to the driver is one small JSON record
per row. Every failure of a row, expected (`TryOnError`) or not, becomes a `failed` record; the
actor itself never raises out of `__call__` for a row's sake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np

from ..backends.base import TryOnJob, check_job_options
from ..errors import TryOnError
from ..images import read_image
from ..atomic import write_atomically
from .results import out_location, output_path, utc_now

log = logging.getLogger(__name__)

BATCH_USER = "batch"


def parse_options(row: dict, default_seed: int) -> tuple[str, int]:
    """A row's (category, seed), checked by the same rule as the HTTP API and the CLI."""
    category = (row.get("category") or "auto").strip()
    text = (row.get("seed") or "").strip()
    seed = default_seed
    if text:
        try:
            seed = int(text)
        except ValueError:
            raise TryOnError("invalid_request", f"The seed {text[:40]!r} is not a whole number.") from None
    check_job_options(category=category, seed=seed)  # manifests have no steps column
    return category, seed


class RerenderWorker:
    """Callable class for `Dataset.map_batches`: one per actor, the backend loaded once.

    Input batch columns: id, person, garment, category, seed, fingerprint (strings).
    Output: one column `record`, a JSON string per row (see results.py for the fields).
    """

    def __init__(self, *, settings, backend: str, out: str, device: str | None = None, row_concurrency: int = 1):
        import os

        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.settings = settings
        self.backend_name = backend
        self.fs, self.root = out_location(out)
        self._loop = asyncio.new_event_loop()
        if backend == "local":
            from ..backends.local import LocalBackend
            from ..pipeline import TryOnPipeline

            _deterministic_torch()
            self._pipeline = TryOnPipeline.from_settings(settings, device=device)
            self.backend = LocalBackend(self._pipeline.stages)
            row_concurrency = 1  # CPU/GPU bound, and MediaPipe graphs take one call at a time
        elif backend == "alibaba":
            from ..backends.alibaba import AlibabaCloudBackend

            self.backend = AlibabaCloudBackend.from_settings(settings)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        self._rows = asyncio.Semaphore(max(1, row_concurrency))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = list(batch)
        rows = [{c: (None if v is None else str(v)) for c, v in zip(columns, values)} for values in zip(*(batch[c] for c in columns))]
        records = self._loop.run_until_complete(self.render_rows(rows))
        return {"record": np.array([json.dumps(r, separators=(",", ":")) for r in records], dtype=object)}

    async def render_rows(self, rows: list[dict]) -> list[dict]:
        return list(await asyncio.gather(*(self._guarded(row) for row in rows)))

    async def _guarded(self, row: dict) -> dict:
        async with self._rows:
            return await self.render_row(row)

    async def render_row(self, row: dict) -> dict:
        """Render one row; never raises (except cancellation)."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        record = {"id": row["id"], "fingerprint": row.get("fingerprint"), "backend": self.backend_name}
        try:
            category, seed = parse_options(row, self.settings.default_seed)
            t = time.perf_counter()
            person = await asyncio.to_thread(read_image, row["person"] or "", self.settings.images, what="person", keep_alpha=False)
            garment = await asyncio.to_thread(read_image, row["garment"] or "", self.settings.images, what="garment", keep_alpha=True)
            timings["read"] = time.perf_counter() - t
            job = TryOnJob(request_id=f"batch-{row['id']}", user_id=BATCH_USER, person=person, garment=garment, category=category, seed=seed)
            del person, garment
            result = await self.backend.try_on(job)
            del job
            timings.update(result.timings_s)
            t = time.perf_counter()
            path = output_path(self.root, row["id"])
            await asyncio.to_thread(self._write, path, result.image)
            timings["write"] = time.perf_counter() - t
            record.update(status="done", output=path if self._local() else self.fs.unstrip_protocol(path), error_code=None, error_message=None)
        except TryOnError as error:
            record.update(status="failed", output=None, error_code=error.code, error_message=error.message)
        except Exception as exc:  # noqa: BLE001 - one bad row must not stop the job
            log.error("rerender: row failed unexpectedly", extra={"event": "rerender_row_error", "row_id": row["id"], "error_type": type(exc).__name__})
            record.update(status="failed", output=None, error_code="internal_error",
                          error_message=f"Unexpected {type(exc).__name__} while rendering this row; see the worker log.")
        timings["total"] = time.perf_counter() - started
        record["timings"] = {k: round(v, 4) for k, v in timings.items()}
        record["finished_at"] = utc_now()
        return record

    def _local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def _write(self, path: str, image: np.ndarray) -> None:
        from ..images import encode_png

        write_atomically(self.fs, path, encode_png(np.ascontiguousarray(image[..., :3])))

    def close(self) -> None:
        """Release the backend (tests and in-process use). Deliberately not a `__del__`: Ray Data
        calls that while the actor process exits, and closing MediaPipe graphs there blocks
        forever, leaving the actor process (and its memory) behind. Nothing needs closing at
        exit: every row finishes (uploads deleted, files written) before `__call__` returns."""
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        try:
            if hasattr(self, "backend"):
                loop.run_until_complete(self.backend.close())
            if getattr(self, "_pipeline", None) is not None:
                self._pipeline.close()
        finally:
            loop.close()


def _deterministic_torch() -> None:
    """Same row + seed → same bytes: no autotuned (run-to-run varying) kernels."""
    try:
        import torch

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    except Exception:  # noqa: BLE001 - torch missing or odd build: nothing to pin
        pass
