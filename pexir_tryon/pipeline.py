"""The stage order, written once: geometry → garment warp → (optional) diffusion refine.

`run_tryon` is used by everything that runs a try-on: the library and CLI call it with the stage
objects in-process (`InProcessStages`), Ray Serve calls it with deployment handles, the batch job
with its actors' stages. Each stage is an async batch-of-one call, so the same code drives local
objects and remote deployments that batch requests on their side.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import numpy as np

from .backends.base import TryOnJob, TryOnResult
from .errors import TryOnError
from .garment import GarmentWarper, WarpRequest, WarpResult
from .geometry import PersonGeometry

log = logging.getLogger(__name__)


class Stages(Protocol):
    """The three stages as async calls. `refine` is None when no refiner is configured."""

    detect: Callable[[np.ndarray, np.ndarray], Awaitable[PersonGeometry]]  # (person, garment)
    warp: Callable[[WarpRequest], Awaitable[WarpResult]]
    refine: Callable[..., Awaitable[np.ndarray]] | None


async def run_tryon(job: TryOnJob, stages: Stages, *, backend_name: str = "local") -> TryOnResult:
    """One try-on through the stages, in order. Raises TryOnError with the first stage's rejection."""
    timings: dict[str, float] = {}

    start = time.perf_counter()
    geometry = await stages.detect(job.person, job.garment)
    timings["geometry"] = time.perf_counter() - start

    start = time.perf_counter()
    warped = await stages.warp(WarpRequest(person=job.person, garment=job.garment, geometry=geometry, category=job.category))
    timings["warp"] = time.perf_counter() - start
    del geometry  # privacy rule 1: geometry is not kept past the stage that needs it

    image, refined = warped.composite, False
    if stages.refine is not None:
        from .refine import RefineRequest

        start = time.perf_counter()
        image = await stages.refine(RefineRequest(image=warped.composite, mask=warped.refine_mask, seed=job.seed, steps=job.steps))
        timings["refine"] = time.perf_counter() - start
        refined = True
    return TryOnResult(image=image, category=warped.category, backend=backend_name, timings_s=timings, refined=refined)


def _first(results: list):
    result = results[0]
    if isinstance(result, BaseException):
        raise result
    return result


@dataclass
class InProcessStages:
    """The stage objects called directly in this process (library, CLI, batch actors)."""

    detector: object
    warper: GarmentWarper
    refiner: object | None = None

    @property
    def refine(self) -> Callable[..., Awaitable[np.ndarray]] | None:
        return self._refine if self.refiner is not None else None

    async def detect(self, person: np.ndarray, garment: np.ndarray) -> PersonGeometry:
        return _first(self.detector.detect_batch([(person, garment)]))

    async def warp(self, request: WarpRequest) -> WarpResult:
        return _first(self.warper.warp_batch([request]))

    async def _refine(self, request) -> np.ndarray:
        return _first(self.refiner.refine_batch([request]))


class TryOnPipeline:
    """The local pipeline as a library object: load the stages once, then call `__call__` or `run_batch`.

    >>> pipeline = TryOnPipeline.from_settings(get_settings())
    >>> result = pipeline(person_rgb, garment_rgb, category="upper")
    """

    def __init__(self, stages: InProcessStages):
        self.stages = stages

    @classmethod
    def from_settings(cls, settings, *, device: str | None = None) -> "TryOnPipeline":
        from .config import resolve_device
        from .geometry import GeometryDetector

        device = resolve_device(device or settings.device)
        detector = GeometryDetector(settings.geometry, settings.images)
        warper = GarmentWarper(settings.garment, settings.images, device=device)
        refiner = None
        if settings.refiner.model_dir is not None:
            from .refine import DiffusionRefiner, load_refiner_model

            refiner = DiffusionRefiner(load_refiner_model(settings.refiner.model_dir, device, settings.refiner), settings.refiner)
        else:
            log.info("no refiner configured: running without stage 3", extra={"event": "refiner_disabled"})
        return cls(InProcessStages(detector=detector, warper=warper, refiner=refiner))

    def close(self) -> None:
        """Release the MediaPipe graphs (the other stages hold nothing that needs closing)."""
        self.stages.detector.close()

    def __call__(self, person: np.ndarray, garment: np.ndarray, *, category: str = "auto", seed: int = 0,
                 steps: int | None = None, request_id: str = "local", user_id: str = "local") -> TryOnResult:
        import asyncio

        job = TryOnJob(request_id=request_id, user_id=user_id, person=person, garment=garment, category=category, seed=seed, steps=steps)
        return asyncio.run(run_tryon(job, self.stages))

    def run_batch(self, jobs: list[TryOnJob]) -> list[TryOnResult | TryOnError]:
        """Per-row results: a job that fails is a TryOnError in its slot; the others go on."""
        import asyncio

        async def run_all():
            out: list[TryOnResult | TryOnError] = []
            for job in jobs:
                try:
                    out.append(await run_tryon(job, self.stages))
                except TryOnError as error:
                    out.append(error)
            return out

        return asyncio.run(run_all())
