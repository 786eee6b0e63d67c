"""Stage 3: batched diffusion refinement of the warped composite inside the refine mask.

``DiffusionRefiner.refine_batch`` takes any number of requests (each any size and aspect),
plans a crop per request (``crop.py``), groups requests whose working shape and sampling
parameters match, and denoises each group, up to ``max_batch_size`` at a time, in one diffusers
inpainting call. Every request has its own ``torch.Generator`` (on the CPU, so the same seed gives
the same noise on any device) and its noise is drawn separately, so a request's result does not
depend on what else is in the batch. The result is pasted back only inside the mask: pixels where
the mask is 0 (face, hands, background) come back bit-identical, and inside it the garment's
colour is locked to the composite's (``colour.py``). A request that fails (bad
input, or a failure that persists when its batch is split) gets a TryOnError in its slot; the
others still run.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pexir_tryon.config import RefinerSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.refine.colour import lock_colours
from pexir_tryon.refine.crop import MASK_THRESHOLD, CropPlan, cut, paste, plan_crop
from pexir_tryon.refine.model import RefinerModel

log = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 8
MAX_GUIDANCE_SCALE = 30.0


@dataclass
class RefineRequest:
    image: np.ndarray  # HxWx3 uint8 RGB composite at the person photo's size (any size/aspect)
    mask: np.ndarray  # HxW uint8, 255 = repaint (values above 127 are repainted); 0 = keep exactly
    seed: int
    steps: int | None = None  # None → settings.steps
    strength: float | None = None  # None → settings.strength
    guidance_scale: float | None = None  # None → settings.guidance_scale


@dataclass(frozen=True)
class _Job:
    index: int
    image: np.ndarray
    repaint: np.ndarray  # HxW bool
    plan: CropPlan
    work_image: np.ndarray
    work_mask: np.ndarray
    seed: int
    steps: int
    strength: float
    guidance_scale: float

    @property
    def group_key(self) -> tuple:
        return (self.plan.work, self.steps, self.strength, self.guidance_scale)


class DiffusionRefiner:
    """Refines composites with a loaded ``RefinerModel``; knows nothing of Ray."""

    def __init__(self, model: RefinerModel, settings: RefinerSettings):
        if settings.prompt != model.prompt:
            raise ValueError("settings.prompt differs from the prompt the refiner model was loaded with; load it with these settings")
        self.model = model
        self.settings = settings

    # -- public ------------------------------------------------------------------------------

    def refine(self, request: RefineRequest) -> np.ndarray:
        """One request; raises its TryOnError."""
        result = self.refine_batch([request])[0]
        if isinstance(result, TryOnError):
            raise result
        return result

    def refine_batch(self, requests: list[RefineRequest]) -> list[np.ndarray | TryOnError]:
        """One output per request, in order: the refined image (input's size) or a TryOnError."""
        results: list[np.ndarray | TryOnError | None] = [None] * len(requests)
        groups: dict[tuple, list[_Job]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                job = self._prepare(index, request)
            except TryOnError as exc:
                results[index] = exc
                continue
            except Exception as exc:  # noqa: BLE001 — one bad request must not fail the batch
                log.exception("refine request could not be prepared", extra={"slot": index})
                results[index] = TryOnError("internal_error", f"refine request {index} could not be prepared ({type(exc).__name__})")
                continue
            if job is None:  # empty mask: nothing to repaint
                results[index] = np.array(request.image, copy=True)
            else:
                groups[job.group_key].append(job)
        size = self.settings.max_batch_size
        for jobs in groups.values():
            for start in range(0, len(jobs), size):
                self._run(jobs[start : start + size], results)
        return results  # type: ignore[return-value]

    # -- request preparation -------------------------------------------------------------------

    def _prepare(self, index: int, request: RefineRequest) -> _Job | None:
        def bad(message: str) -> TryOnError:
            return TryOnError("invalid_request", f"refine request {index}: {message}")

        if not isinstance(request, RefineRequest):
            raise bad(f"expected a RefineRequest, got {type(request).__name__}")
        image, mask = request.image, request.mask
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise bad(f"image must be an HxWx3 uint8 array, got {_describe(image)}")
        if min(image.shape[:2]) < MIN_IMAGE_SIDE:
            raise bad(f"image is {image.shape[1]}x{image.shape[0]}, smaller than {MIN_IMAGE_SIDE} px on a side")
        if isinstance(mask, np.ndarray) and mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype not in (np.uint8, np.bool_):
            raise bad(f"mask must be an HxW uint8 array, got {_describe(mask)}")
        if mask.shape != image.shape[:2]:
            raise bad(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}")

        seed = request.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
            raise bad("seed must be an integer in [0, 2**64)")
        steps = self.settings.steps if request.steps is None else request.steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.settings.max_steps:
            raise bad(f"steps must be an integer from 1 to {self.settings.max_steps}")
        strength = self.settings.strength if request.strength is None else request.strength
        if not isinstance(strength, (int, float, np.floating)) or not 0 < float(strength) <= 1:
            raise bad("strength must be in (0, 1]")
        guidance = self.settings.guidance_scale if request.guidance_scale is None else request.guidance_scale
        if not isinstance(guidance, (int, float, np.floating)) or not 0 <= float(guidance) <= MAX_GUIDANCE_SCALE:
            raise bad(f"guidance_scale must be in [0, {MAX_GUIDANCE_SCALE:g}]")
        if int(int(steps) * float(strength)) < 1:
            raise bad(f"steps x strength is below 1 ({int(steps)} x {float(strength):g}): no denoising step would run")

        repaint = mask > MASK_THRESHOLD if mask.dtype == np.uint8 else mask.copy()
        plan = plan_crop(image.shape[:2], repaint, self.settings.resolution)
        if plan is None:
            return None
        work_image, work_mask = cut(image, repaint, plan)
        return _Job(
            index=index,
            image=image,
            repaint=repaint,
            plan=plan,
            work_image=work_image,
            work_mask=work_mask,
            seed=int(seed),
            steps=int(steps),
            strength=float(strength),
            guidance_scale=float(guidance),
        )

    # -- denoising -----------------------------------------------------------------------------

    def _run(self, jobs: list[_Job], results: list) -> None:
        """Denoise ``jobs`` together; on failure split the batch so one bad job fails alone."""
        import torch

        started = time.perf_counter()
        try:
            outputs = self._denoise(jobs)
        except Exception as exc:  # noqa: BLE001
            out_of_memory = isinstance(exc, torch.cuda.OutOfMemoryError)
            if out_of_memory and self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(jobs) > 1:
                log.warning("refiner batch failed, retrying in halves", extra={"batch": len(jobs), "error": type(exc).__name__})
                half = len(jobs) // 2
                self._run(jobs[:half], results)
                self._run(jobs[half:], results)
                return
            log.exception("refiner failed", extra={"slot": jobs[0].index})
            what = "out of GPU memory" if out_of_memory else type(exc).__name__
            for job in jobs:
                results[job.index] = TryOnError("internal_error", f"the refiner failed ({what})")
            return
        for job, refined in zip(jobs, outputs):
            try:
                refined = lock_colours(refined, job.work_image, job.work_mask > 0.5, self.settings.colour_lock)
                results[job.index] = paste(job.image, job.repaint, refined, job.plan)
            except Exception as exc:  # noqa: BLE001
                log.exception("refiner paste failed", extra={"slot": job.index})
                results[job.index] = TryOnError("internal_error", f"the refiner failed ({type(exc).__name__})")
        log.debug(
            "refiner batch",
            extra={"batch": len(jobs), "work": jobs[0].plan.work, "steps": jobs[0].steps, "seconds": round(time.perf_counter() - started, 4)},
        )

    def _denoise(self, jobs: list[_Job]) -> list[np.ndarray]:
        """The working canvases of ``jobs`` (same shape and parameters) refined, as uint8 HxWx3."""
        import torch

        first = jobs[0]
        work_w, work_h = first.plan.work
        image = torch.from_numpy(np.stack([job.work_image for job in jobs])).permute(0, 3, 1, 2).float().div_(255.0)
        mask = torch.from_numpy(np.stack([job.work_mask for job in jobs]))[:, None]
        # one generator per request, on the CPU: same seed → same noise, whatever the batch or device
        generators = [torch.Generator(device="cpu").manual_seed(job.seed) for job in jobs]
        with self.model.lock, torch.no_grad():  # the pipeline's scheduler is stateful
            output = self.model.pipe(
                image=image,
                mask_image=mask,
                height=work_h,
                width=work_w,
                strength=first.strength,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                output_type="pt",
                **self.model.conditioning_for(len(jobs)),
            )
            if not torch.isfinite(output.images).all():  # e.g. fp16 overflow in the VAE
                raise FloatingPointError("the refiner produced non-finite pixels")
            pixels = output.images.float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
            arrays = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        del output, pixels
        return [arrays[i] for i in range(len(jobs))]


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def steps_run(steps: int, strength: float) -> int:
    """How many denoising steps a request actually runs (diffusers skips the first 1-strength part)."""
    return min(int(steps * strength), steps) if math.isfinite(strength) else 0


def refiner_from_settings(settings: RefinerSettings, device: str) -> DiffusionRefiner | None:
    """The refiner the settings configure, loaded once; None (said once, here) when none is configured.

    Call at start-up. Raises TryOnError("model_not_available") when the configured directory is
    missing, incomplete or corrupt: a configured refiner that cannot load is an error, not a skip.
    """
    from pexir_tryon.refine.model import load_refiner_model

    if settings.model_dir is None:
        log.warning("no refiner configured (refiner.model_dir is unset): the pipeline runs without stage 3")
        return None
    return DiffusionRefiner(load_refiner_model(settings.model_dir, device, settings), settings)
