"""The pipeline stages as small Ray Serve deployments: each wraps one stage class and batches.

Each deployment builds its stage once from the settings it is handed, and answers one item per
call; `@serve.batch` gathers concurrent calls into the stage's batch method. A rejected item
comes back as a `TryOnError` value (not raised), so one bad request never fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from ..config import Settings, resolve_device
from ..errors import TryOnError

log = logging.getLogger(__name__)


def _settings(overrides: dict) -> Settings:
    from ..logs import configure_logging

    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    return settings


@serve.deployment(ray_actor_options={"num_cpus": 1})
class GeometryDetector:
    """Stage 1 on the CPU: MediaPipe pose, face placement and person mask."""

    def __init__(self, settings: dict):
        from ..geometry import GeometryDetector as Detector

        self.settings = _settings(settings)
        self.detector = Detector(self.settings.geometry, self.settings.images)
        self.detect.set_max_batch_size(self.settings.serve.geometry_batch_size)
        self.detect.set_batch_wait_timeout_s(self.settings.serve.batch_wait_timeout_s)

    @serve.batch
    async def detect(self, images: list) -> list:
        return await asyncio.to_thread(self.detector.detect_batch, images)

    async def ready(self) -> str:
        return "geometry"


@serve.deployment(ray_actor_options={"num_cpus": 1})
class GarmentWarper:
    """Stage 2: garment mask, anchors, batched TPS warp and composite (GPU when placed on one)."""

    def __init__(self, settings: dict):
        from ..garment import GarmentWarper as Warper

        self.settings = _settings(settings)
        self.device = resolve_device(self.settings.device)
        self.warper = Warper(self.settings.garment, self.settings.images, device=self.device)
        self.warp.set_max_batch_size(self.settings.serve.warp_batch_size)
        self.warp.set_batch_wait_timeout_s(self.settings.serve.batch_wait_timeout_s)
        log.info("warp stage ready", extra={"event": "stage_ready", "stage": "warp", "device": self.device})

    @serve.batch
    async def warp(self, requests: list) -> list:
        return await asyncio.to_thread(self.warper.warp_batch, requests)

    async def ready(self) -> str:
        return f"warp on {self.device}"


@serve.deployment(ray_actor_options={"num_cpus": 1})
class DiffusionRefiner:
    """Stage 3: the diffusion refiner, one copy of the weights per replica, batched denoising."""

    def __init__(self, settings: dict):
        from ..refine import DiffusionRefiner as Refiner
        from ..refine import load_refiner_model

        self.settings = _settings(settings)
        self.device = resolve_device(self.settings.device)
        model = load_refiner_model(self.settings.refiner.model_dir, self.device, self.settings.refiner)
        self.refiner = Refiner(model, self.settings.refiner)
        self.refine.set_max_batch_size(self.settings.refiner.max_batch_size)
        self.refine.set_batch_wait_timeout_s(self.settings.refiner.batch_wait_timeout_s)
        log.info("refine stage ready", extra={"event": "stage_ready", "stage": "refine", "device": self.device})

    @serve.batch
    async def refine(self, requests: list) -> list:
        return await asyncio.to_thread(self.refiner.refine_batch, requests)

    async def ready(self) -> str:
        return f"refine on {self.device}"


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class AlibabaBackend:
    """The Alibaba Cloud OutfitAnyone backend: HTTP to the provider, no GPU."""

    def __init__(self, settings: dict):
        from ..backends.alibaba import AlibabaCloudBackend

        self.settings = _settings(settings)
        self.backend = AlibabaCloudBackend.from_settings(self.settings)

    async def try_on(self, job):
        try:
            return await self.backend.try_on(job)
        except TryOnError as error:
            return error

    async def purge_user(self, user_id: str) -> int:
        return await self.backend.purge_user(user_id)

    async def ready(self) -> str:
        return "alibaba"
