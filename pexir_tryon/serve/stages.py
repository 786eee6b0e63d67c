"""Deployment handles as pipeline stages, with Ray's failure modes mapped to our error codes."""

from __future__ import annotations

import asyncio

from ..backends.base import TryOnJob, TryOnResult
from ..errors import TryOnError


async def call_stage(method, argument, *, stage: str, timeout_s: float):
    """Call one deployment method; a rejection comes back as a TryOnError value and is raised here."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError

    response = method.remote(argument)
    try:
        result = await asyncio.wait_for(response, timeout_s)
    except BackPressureError:
        raise TryOnError("overloaded", f"The {stage} stage is at capacity; retry shortly.", retry_after_s=2) from None
    except asyncio.TimeoutError:
        response.cancel()
        raise TryOnError("stage_unavailable", f"The {stage} stage did not answer within {timeout_s:g} s; retry shortly.", retry_after_s=5) from None
    except RayActorError:
        raise TryOnError("stage_unavailable", f"The {stage} stage's replica stopped while working on this request; retry.", retry_after_s=2) from None
    except TryOnError:
        raise
    except asyncio.CancelledError:
        response.cancel()
        raise
    except Exception as exc:  # noqa: BLE001 - anything else from Ray is a stage failure, not the caller's fault
        from ray.exceptions import RayTaskError

        if isinstance(exc, RayTaskError) and isinstance(exc.cause, TryOnError):
            raise exc.cause from None
        raise TryOnError("stage_unavailable", f"The {stage} stage failed ({type(exc).__name__}); retry.", retry_after_s=2) from None
    if isinstance(result, TryOnError):
        raise result
    return result


class ServeStages:
    """The pipeline's three stages as Serve deployment handles."""

    def __init__(self, detector, warper, refiner=None, *, timeout_s: float = 60.0):
        self._detector, self._warper, self._refiner = detector, warper, refiner
        self.timeout_s = timeout_s
        self.refine = self._refine if refiner is not None else None

    async def detect(self, person, garment):
        return await call_stage(self._detector.detect, (person, garment), stage="geometry", timeout_s=self.timeout_s)

    async def warp(self, request):
        return await call_stage(self._warper.warp, request, stage="warp", timeout_s=self.timeout_s)

    async def _refine(self, request):
        return await call_stage(self._refiner.refine, request, stage="refine", timeout_s=self.timeout_s)


class AlibabaHandleBackend:
    """The Alibaba backend deployment seen from the ingress."""

    name = "alibaba"

    def __init__(self, handle, *, timeout_s: float):
        self.handle = handle
        self.timeout_s = timeout_s

    async def try_on(self, job: TryOnJob) -> TryOnResult:
        return await call_stage(self.handle.try_on, job, stage="alibaba", timeout_s=self.timeout_s)

    async def purge_user(self, user_id: str) -> int:
        return await call_stage(self.handle.purge_user, user_id, stage="alibaba", timeout_s=self.timeout_s)

    async def close(self) -> None:
        return None
