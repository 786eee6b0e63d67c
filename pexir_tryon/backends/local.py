"""The local backend: the three-stage pipeline, wherever its stages run."""

from __future__ import annotations

from ..pipeline import Stages, run_tryon
from .base import TryOnJob, TryOnResult


class LocalBackend:
    """Runs `pipeline.run_tryon` over the given stages (in-process objects or Serve handles)."""

    name = "local"

    def __init__(self, stages: Stages):
        self.stages = stages

    async def try_on(self, job: TryOnJob) -> TryOnResult:
        return await run_tryon(job, self.stages, backend_name=self.name)

    async def purge_user(self, user_id: str) -> int:
        return 0  # nothing of the user is kept outside this service

    async def close(self) -> None:
        return None
