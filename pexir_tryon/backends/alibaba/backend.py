"""AlibabaCloudBackend: a try-on through OutfitAnyone (`aitryon` / `aitryon-plus`, optional refiner).

One job: fit both images inside the provider's limits → wait for an account-wide task slot →
upload both → submit → poll with backoff until a final state → download the result at once →
optionally refine → map the result back to the person photo's size. Whatever happens (success,
failure, our deadline, the caller giving up, a purge of the user), the task is cancelled if it
may still be pending and the uploaded objects are deleted, in a cleanup that a second
cancellation cannot interrupt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from PIL import Image

from pexir_tryon.backends.base import TryOnJob, TryOnResult
from pexir_tryon.config import AlibabaSettings
from pexir_tryon.errors import TryOnError

from .client import FINAL_STATES, AttemptGuard, DashScopeClient, DeadlineReached, RetryPolicy
from .limiter import AccountLimiter, default_limiter
from .logfilter import install_signed_url_filter
from .prepare import PreparedImage, prepare_for_provider, restore_result
from .provider_errors import map_provider_error, safe_code, scrub
from .secrets import resolve_api_key, secret_values
from .uploaders import DashScopeTempUploader, InputUploader, OssUploader, UploadedInput

if TYPE_CHECKING:
    from pexir_tryon.config import Settings

log = logging.getLogger("pexir_tryon.backends.alibaba")

REFINER_MODEL = "aitryon-refiner"
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(eq=False)
class _Inflight:
    """One job in flight, tracked per user so a purge can cancel it and delete its inputs."""

    request_id: str
    user_id: str
    task: asyncio.Task | None = None
    cleanup: asyncio.Task | None = None
    uploads: list[UploadedInput] = field(default_factory=list)
    task_ids: dict[str, str | None] = field(default_factory=dict)  # provider task id -> last status
    purged: bool = False
    deleted: int = 0

    def __repr__(self) -> str:
        return f"_Inflight(request_id={self.request_id!r}, tasks={list(self.task_ids)}, uploads={len(self.uploads)})"


class _Abandoned(Exception):
    """Internal: the refiner pass failed; the coarse result is used instead."""


def make_uploader(settings: AlibabaSettings) -> InputUploader:
    """The operator's OSS bucket when configured; else DashScope temp storage if opted in."""
    if settings.oss_bucket:
        return OssUploader(settings)
    if settings.allow_dashscope_temp_storage_kept_48h:
        return DashScopeTempUploader(settings)
    raise TryOnError(
        "backend_misconfigured",
        "The Alibaba backend has nowhere to upload images; operators: set PEXIR_ALIBABA__OSS_BUCKET (and OSS credentials).",
    )


class AlibabaCloudBackend:
    """The `alibaba` backend (see module docstring). Needs no GPU."""

    name = "alibaba"

    def __init__(
        self,
        settings: AlibabaSettings,
        *,
        uploader: InputUploader | None = None,
        limiter: AccountLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        retry_base_s: float = 1.0,
        retry_max_s: float = 10.0,
        cancel_timeout_s: float = 5.0,
        purge_wait_s: float = 10.0,
        lease_margin_s: float = 60.0,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ):
        """
        Args:
            settings: the `alibaba` section of the settings (key, URLs, model, intervals, limits).
            uploader: how inputs reach the provider; default `make_uploader(settings)`.
            limiter: account-wide limits; default `default_limiter(...)` (Ray actor under Ray).
            clock, sleep, rng: injectable time and randomness (tests).
            retry_base_s, retry_max_s: jittered backoff for 429/5xx/network errors.
            cancel_timeout_s: how long one cancel call may take during cleanup.
            purge_wait_s: how long purge_user/close wait for a job's cleanup.
            lease_margin_s: a task slot's lease outlives the deadline by this much.
            http_transport: an httpx transport for the provider calls (tests, proxies).
        Raises:
            TryOnError("backend_misconfigured") when the key, the upload target or the refiner
            gender is missing (the message names the setting, never a value).
        """
        if settings.use_refiner and settings.refiner_gender is None:
            raise TryOnError(
                "backend_misconfigured",
                "aitryon-refiner needs a gender parameter; operators: set PEXIR_ALIBABA__REFINER_GENDER or turn use_refiner off.",
            )
        self.settings = settings
        api_key = resolve_api_key(settings)
        self._secrets = secret_values(settings, api_key)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._cancel_timeout_s = cancel_timeout_s
        self._purge_wait_s = purge_wait_s
        self._lease_margin_s = lease_margin_s
        self.uploader = uploader if uploader is not None else make_uploader(settings)
        self.client = DashScopeClient(
            settings.base_url,
            api_key,
            http_timeout_s=settings.http_timeout_s,
            retry=RetryPolicy(base_s=retry_base_s, max_s=retry_max_s),
            clock=clock,
            sleep=sleep,
            rng=self._rng,
            secrets=self._secrets,
            transport=http_transport,
        )
        self.limiter = limiter if limiter is not None else default_limiter(settings.max_submits_per_s, settings.max_concurrent_tasks)
        self._inflight: dict[str, set[_Inflight]] = {}
        self._background: set[asyncio.Task] = set()
        self._closing = False
        install_signed_url_filter()

    @classmethod
    def from_settings(cls, settings: "Settings", **kwargs) -> "AlibabaCloudBackend":
        """Build from the application's `Settings` (its `alibaba` section).

        The uploader is the operator's OSS bucket (or DashScope temp storage when opted in and
        no bucket is set); the limiter is the shared Ray actor when Ray is initialised in this
        process (a Serve replica), else in-process. `kwargs` go to the constructor.
        """
        section = settings.alibaba
        knobs = dict(
            retry_base_s=section.retry_base_s,
            retry_max_s=section.retry_max_s,
            cancel_timeout_s=section.cancel_timeout_s,
            purge_wait_s=section.purge_wait_s,
        )
        return cls(section, **{**knobs, **kwargs})

    def __repr__(self) -> str:
        return f"AlibabaCloudBackend(model={self.settings.model!r}, base_url={self.settings.base_url!r}, uploader={self.uploader!r})"

    # -- the Backend protocol ---------------------------------------------------------------

    async def try_on(self, job: TryOnJob) -> TryOnResult:
        if self._closing:
            raise TryOnError("stage_unavailable", "The Alibaba Cloud backend is shutting down; retry.")
        rec = _Inflight(job.request_id, job.user_id)
        self._inflight.setdefault(job.user_id, set()).add(rec)
        # The work runs in a task of its own so that purge_user can stop it without cancelling
        # the caller; cancelling the caller cancels it (awaiting a task forwards cancellation).
        rec.task = asyncio.ensure_future(self._run(job, rec))
        try:
            return await rec.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            caller_cancelled = current is not None and getattr(current, "cancelling", lambda: 1)() > 0
            if rec.purged and not caller_cancelled:
                raise TryOnError("not_found", "The user's data was deleted while this try-on was running.") from None
            if self._closing and not caller_cancelled:
                raise TryOnError("stage_unavailable", "The Alibaba Cloud backend is shutting down; retry.") from None
            raise
        finally:
            users = self._inflight.get(job.user_id)
            if users is not None:
                users.discard(rec)
                if not users:
                    self._inflight.pop(job.user_id, None)

    async def purge_user(self, user_id: str) -> int:
        """Cancel the user's jobs (and their provider tasks) and delete their uploaded inputs."""
        records = list(self._inflight.get(user_id, ()))
        for rec in records:
            rec.purged = True
            if rec.task is not None and not rec.task.done():
                rec.task.cancel()
        count = 0
        for rec in records:
            waits = [t for t in (rec.task, rec.cleanup) if t is not None]
            if waits:
                await asyncio.wait(waits, timeout=self._purge_wait_s)
            if rec.cleanup is not None and not rec.cleanup.done():
                await asyncio.wait({rec.cleanup}, timeout=self._purge_wait_s)
            # Belt and braces: whatever the job's own cleanup did not get to.
            for item in rec.uploads:
                if not item.deleted and self.uploader.can_delete and await self.uploader.delete(item):
                    rec.deleted += 1
            count += 1 + rec.deleted
        if records:
            log.info("alibaba: purged a user's jobs", extra={"event": "alibaba_user_purged", "jobs": len(records)})
        return count

    async def close(self) -> None:
        """Cancel in-flight jobs (their tasks are cancelled and inputs deleted), then close clients."""
        self._closing = True
        pending = [t for recs in self._inflight.values() for rec in recs for t in (rec.task,) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=self._purge_wait_s)
        if self._background:
            await asyncio.wait(list(self._background), timeout=self._purge_wait_s)
        await self.client.close()
        await self.uploader.close()

    # -- one job ----------------------------------------------------------------------------

    async def _run(self, job: TryOnJob, rec: _Inflight) -> TryOnResult:
        s = self.settings
        t0 = self._clock()
        deadline = t0 + s.deadline_s
        timings: dict[str, float] = {}
        person = await self._prepare(job.person, "person")
        garment = await self._prepare(job.garment, "garment")
        timings["prepare_s"] = self._clock() - t0
        slot_token = uuid.uuid4().hex
        slot_key = s.model
        try:
            t = self._clock()
            try:
                await self.limiter.acquire_task(
                    slot_key, slot_token, timeout_s=max(0.0, deadline - t), lease_s=max(1.0, deadline - t) + self._lease_margin_s
                )
            except TimeoutError:
                raise self._deadline_error("waiting for a provider slot") from None
            timings["queue_s"] = self._clock() - t

            t = self._clock()
            person_up = await self._upload(rec, person, "person.jpg", s.model)
            garment_up = await self._upload(rec, garment, "garment.jpg", s.model)
            timings["upload_s"] = self._clock() - t

            garment_field = "bottom_garment_url" if job.category == "lower" else "top_garment_url"
            body = {
                "model": s.model,
                "input": {"person_image_url": person_up.url, garment_field: garment_up.url},
                "parameters": {"resolution": -1, "restore_face": True},
            }
            t = self._clock()
            coarse_url, coarse_bytes = await self._run_task(rec, body, deadline, job)
            timings["provider_s"] = self._clock() - t
            image = await self._restore(coarse_bytes, person, job)
            refined = False
            if s.use_refiner:
                t = self._clock()
                try:
                    image = await self._refine(rec, job, person, garment, person_up, garment_up, garment_field, coarse_url, deadline)
                    refined = True
                except _Abandoned:
                    pass
                timings["refine_s"] = self._clock() - t
            timings["total_s"] = self._clock() - t0
            return TryOnResult(image=image, category=job.category, backend=self.name, timings_s=timings, refined=refined)
        finally:
            rec.cleanup = asyncio.ensure_future(self._cleanup(rec, slot_key, slot_token))
            self._background.add(rec.cleanup)
            rec.cleanup.add_done_callback(self._background.discard)
            # Shielded: a second cancellation stops our waiting, not the cleanup.
            await asyncio.shield(rec.cleanup)

    @staticmethod
    async def _prepare(image, what: str) -> PreparedImage:
        try:
            return await asyncio.to_thread(prepare_for_provider, image)
        except ValueError as exc:
            raise TryOnError("invalid_image", f"The {what} image cannot be sent to the provider ({exc}).") from None

    @staticmethod
    async def _restore(data: bytes, person: PreparedImage, job: TryOnJob):
        try:
            return await asyncio.to_thread(restore_result, data, person, (job.person.shape[1], job.person.shape[0]))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.error("alibaba: provider result unreadable", extra={"event": "alibaba_result_unreadable", "error_type": type(exc).__name__, "request_id": job.request_id})
            raise TryOnError("provider_error", "The provider's result is not a readable image; retry the try-on.", retry_after_s=1) from None

    async def _upload(self, rec: _Inflight, prepared: PreparedImage, name: str, model: str) -> UploadedInput:
        item = await self.uploader.upload(prepared.data, name=name, content_type="image/jpeg", model=model)
        rec.uploads.append(item)
        return item

    async def _refine(self, rec, job, person, garment, person_up, garment_up, garment_field, coarse_url, deadline):
        """The refiner pass; any failure of it raises _Abandoned (the coarse result stands)."""
        try:
            if self.uploader.bound_to_model:  # temp storage: a file serves only the model it was uploaded for
                person_up = await self._upload(rec, person, "person.jpg", REFINER_MODEL)
                garment_up = await self._upload(rec, garment, "garment.jpg", REFINER_MODEL)
            body = {
                "model": REFINER_MODEL,
                # The refiner documents top_garment_url as required; a bottoms-only outfit sends
                # the bottom only (unverified upstream): if refused, the coarse result is used.
                "input": {"person_image_url": person_up.url, garment_field: garment_up.url, "coarse_image_url": coarse_url},
                "parameters": {"gender": self.settings.refiner_gender},
            }
            _, refined_bytes = await self._run_task(rec, body, deadline, job)
            return await self._restore(refined_bytes, person, job)
        except TryOnError as exc:
            log.warning("alibaba: refiner pass failed; using the unrefined result", extra={"event": "alibaba_refiner_failed", "code": exc.code, "request_id": job.request_id})
            raise _Abandoned() from None

    async def _run_task(self, rec: _Inflight, body: dict, deadline: float, job: TryOnJob) -> tuple[str, bytes]:
        """Submit, poll to a final state, download. Returns (result URL, result bytes)."""
        model = body["model"]
        oss_resolve = self.uploader.needs_oss_resolve

        async def rate_token(deadline_: float) -> None:
            try:
                await self.limiter.acquire_submit(model, timeout_s=max(0.0, deadline_ - self._clock()))
            except TimeoutError:
                raise DeadlineReached("submit rate limit") from None

        guard = AttemptGuard()
        submit = asyncio.ensure_future(
            self.client.submit(body, deadline=deadline, oss_resolve=oss_resolve, before_attempt=rate_token, guard=guard)
        )
        try:
            task_id = await asyncio.shield(submit)
        except DeadlineReached:
            raise self._deadline_error("submitting the task") from None
        except asyncio.CancelledError:
            # Giving up mid-submit: if a request is on the wire, its answer may name a task the
            # provider already queued. Learn the id so the cleanup cancels that task.
            guard.give_up = True
            try:
                if guard.in_attempt:
                    await asyncio.wait({submit}, timeout=self.settings.http_timeout_s)
                if submit.done() and not submit.cancelled() and submit.exception() is None:
                    rec.task_ids[submit.result()] = "PENDING"
            finally:
                if not submit.done():
                    submit.cancel()
            raise
        rec.task_ids[task_id] = "PENDING"
        log.info("alibaba: submitted", extra={"event": "alibaba_submitted", "model": model, "task_id": task_id, "request_id": job.request_id})

        interval = self.settings.poll_interval_s
        status = "PENDING"
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._deadline_error(f"the task was still {status}")
            await self._sleep(min(interval * self._rng.uniform(0.8, 1.2), remaining))
            try:
                output = await self.client.get_task(task_id, deadline=deadline)
            except DeadlineReached:
                raise self._deadline_error(f"the task was still {status}") from None
            new_status = str(output.get("task_status"))
            if new_status != status:
                log.info("alibaba: task status changed", extra={"event": "alibaba_task_status", "task_id": task_id, "from_status": status, "status": new_status})
            status = new_status
            rec.task_ids[task_id] = status
            if status in FINAL_STATES:
                break
            interval = min(interval * 1.5, self.settings.poll_max_interval_s)

        if status == "SUCCEEDED":
            url = output.get("image_url")
            if isinstance(url, list):
                url = url[0] if url else None
            if not isinstance(url, str) or not url:
                log.error("alibaba: task succeeded without an image_url", extra={"event": "alibaba_no_result_url", "task_id": task_id})
                raise TryOnError("provider_error", "The provider finished without a result image; retry the try-on.", retry_after_s=1)
            try:
                return url, await self.client.download(url, deadline=deadline)
            except DeadlineReached:
                raise self._deadline_error("downloading the result") from None
        if status == "FAILED":
            code, message = output.get("code"), output.get("message")
            log.warning("alibaba: task failed", extra={"event": "alibaba_task_failed", "task_id": task_id, "provider_code": safe_code(code), "provider_message": scrub(message, self._secrets)})
            raise map_provider_error(code, message)
        if status == "CANCELED":
            raise TryOnError("provider_error", "The provider cancelled the task; retry the try-on.", retry_after_s=1)
        # UNKNOWN or HTTP 404: the provider no longer knows the task.
        log.error("alibaba: task unknown to the provider", extra={"event": "alibaba_task_unknown", "task_id": task_id, "provider_status": str(output.get("http_status", "UNKNOWN"))})
        raise TryOnError("provider_error", "The provider lost track of the task; retry the try-on.", retry_after_s=1)

    def _deadline_error(self, where: str) -> TryOnError:
        return TryOnError("deadline_exceeded", f"The Alibaba Cloud try-on did not finish within {self.settings.deadline_s:g} s ({where}).")

    async def _cleanup(self, rec: _Inflight, slot_key: str, slot_token: str) -> None:
        """Cancel what may still be pending, delete every upload, give the slot back. Never raises."""
        try:
            for task_id, status in list(rec.task_ids.items()):
                if status not in FINAL_STATES:
                    # Only a PENDING task can be cancelled; for a running one the provider says no
                    # and the task ends by itself (its inputs are deleted below either way).
                    if await self.client.cancel(task_id, timeout_s=self._cancel_timeout_s):
                        rec.task_ids[task_id] = "CANCELED"
            for item in rec.uploads:
                if not item.deleted and self.uploader.can_delete and await self.uploader.delete(item):
                    rec.deleted += 1
        except Exception as exc:  # pragma: no cover - cleanup must not mask the job's outcome
            log.error("alibaba: cleanup failed", extra={"event": "alibaba_cleanup_failed", "error_type": type(exc).__name__, "request_id": rec.request_id})
        finally:
            try:  # idempotent, and also withdraws a still-waiting acquire
                await self.limiter.release_task(slot_key, slot_token)
            except Exception as exc:  # pragma: no cover
                log.error("alibaba: could not release a task slot; its lease will expire", extra={"event": "alibaba_slot_release_failed", "error_type": type(exc).__name__})
