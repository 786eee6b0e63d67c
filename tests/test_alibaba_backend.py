"""AlibabaCloudBackend against the loopback fake of DashScope + OSS (tests/fakes/dashscope.py).

Every scenario ends by checking that nothing the backend uploaded is left in the fake bucket.
All intervals are tiny; nothing here contacts a real Alibaba host.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from pexir_tryon.backends.alibaba import (
    AlibabaCloudBackend,
    DashScopeTempUploader,
    InProcessAccountLimiter,
    OssUploader,
)
from pexir_tryon.backends.base import Backend, TryOnJob
from pexir_tryon.config import AlibabaSettings, Settings
from pexir_tryon.errors import TryOnError
from pexir_tryon.logs import JsonFormatter

try:
    from tests.fakes.dashscope import fake_dashscope  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover - when tests/ itself is on sys.path
    from fakes.dashscope import fake_dashscope  # noqa: F401


# -- helpers ----------------------------------------------------------------------------------


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (survives resizing and JPEG well, so round trips can be compared)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / max(w, 1) * 3.0 + seed)
    g = 128 + 100 * np.cos(yy / max(h, 1) * 2.0 + seed)
    b = 128 + 60 * np.sin((xx + yy) / max(h + w, 1) * 4.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


PERSON = smooth_image(300, 200)
GARMENT = smooth_image(180, 160, seed=2)


def job(request_id: str = "req-1", user_id: str = "user-1", *, person=PERSON, garment=GARMENT, category="auto") -> TryOnJob:
    return TryOnJob(request_id=request_id, user_id=user_id, person=person, garment=garment, category=category)


def settings_for(fake, **overrides) -> AlibabaSettings:
    values = dict(
        api_key=SecretStr(fake.api_key),
        base_url=fake.base_url,
        oss_endpoint=fake.oss_endpoint,
        oss_bucket=fake.bucket,
        oss_access_key_id=SecretStr(fake.oss_access_key_id),
        oss_access_key_secret=SecretStr(fake.oss_access_key_secret),
        poll_interval_s=0.005,
        poll_max_interval_s=0.02,
        deadline_s=5.0,
        http_timeout_s=5.0,
    )
    values.update(overrides)
    return AlibabaSettings(**values)


def make_backend(fake, *, limiter=None, uploader=None, http_transport=None, **overrides) -> AlibabaCloudBackend:
    return AlibabaCloudBackend(
        settings_for(fake, **overrides),
        uploader=uploader,
        limiter=limiter,
        retry_base_s=0.005,
        retry_max_s=0.02,
        cancel_timeout_s=2.0,
        purge_wait_s=5.0,
        http_transport=http_transport,
    )


def run_jobs(fake, jobs, **kwargs):
    """Run jobs concurrently on one backend; returns results or exceptions, in order."""

    async def go():
        backend = make_backend(fake, **kwargs)
        try:
            return await asyncio.gather(*(backend.try_on(j) for j in jobs), return_exceptions=True)
        finally:
            await backend.close()

    return asyncio.run(go())


def run_one(fake, the_job=None, **kwargs):
    (outcome,) = run_jobs(fake, [the_job or job()], **kwargs)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def assert_bucket_clean(fake, *, uploaded: bool = True) -> None:
    assert fake.bucket_objects() == [], "uploaded inputs were left in the bucket"
    puts = [p for m, p in fake.oss.requests if m == "PUT" and p.startswith(f"/{fake.bucket}/")]
    deletes = [p for m, p in fake.oss.requests if m == "DELETE" and p.startswith(f"/{fake.bucket}/")]
    if uploaded:
        assert len(puts) >= 2, "the scenario never uploaded anything"
        assert set(puts) <= set(deletes), "an upload was not deleted explicitly"
    else:
        assert puts == []


def close_to(a: np.ndarray, b: np.ndarray, tol: float = 6.0) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()) < tol


class FlakyTransport(httpx.AsyncBaseTransport):
    """Raises a network error for the first `n` requests whose path contains `path_part`."""

    def __init__(self, path_part: str, n: int):
        self.inner = httpx.AsyncHTTPTransport()
        self.path_part = path_part
        self.n = n
        self.raised = 0

    async def handle_async_request(self, request):
        if self.path_part in request.url.path and self.raised < self.n:
            self.raised += 1
            raise httpx.ConnectError("connection refused (test)", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


# -- life cycle -------------------------------------------------------------------------------


def test_backend_satisfies_protocol(fake_dashscope):
    backend = make_backend(fake_dashscope)
    assert isinstance(backend, Backend)
    assert backend.name == "alibaba"
    asyncio.run(backend.close())


def test_task_life_cycle_through_every_state(fake_dashscope):
    fake = fake_dashscope
    result = run_one(fake)
    (task,) = fake.task_list()
    assert task.served == ["PENDING", "PRE-PROCESSING", "RUNNING", "POST-PROCESSING", "SUCCEEDED"]
    assert result.backend == "alibaba" and result.refined is False
    assert result.image.dtype == np.uint8 and result.image.shape == PERSON.shape
    # The fake's "try-on" returns the person image it downloaded: what we get back is the
    # person photo at its own size, so scaling/padding was undone exactly.
    assert close_to(result.image, PERSON)
    (submit,) = fake.submits
    assert submit["model"] == "aitryon-plus"
    assert set(submit["input"]) == {"person_image_url", "top_garment_url"}
    assert submit["parameters"] == {"resolution": -1, "restore_face": True}
    assert submit["oss_resolve"] is False
    assert set(task.inputs) == {"person_image_url", "top_garment_url"}  # the fake fetched and validated both
    assert {"prepare_s", "queue_s", "upload_s", "provider_s", "total_s"} <= set(result.timings_s)
    assert_bucket_clean(fake)


def test_time_based_states_and_basic_model(fake_dashscope):
    fake = fake_dashscope
    fake.polls_per_state = {s: 0 for s in fake.polls_per_state}
    fake.seconds_per_state = {"PENDING": 0.05, "RUNNING": 0.05}
    result = run_one(fake, model="aitryon")
    assert fake.submits[0]["model"] == "aitryon"
    assert "RUNNING" in fake.task_list()[0].served and result.image.shape == PERSON.shape
    assert_bucket_clean(fake)


@pytest.mark.parametrize(
    "category, field", [("upper", "top_garment_url"), ("dress", "top_garment_url"), ("auto", "top_garment_url"), ("lower", "bottom_garment_url")]
)
def test_garment_field_by_category(fake_dashscope, category, field):
    fake = fake_dashscope
    result = run_one(fake, job(category=category))
    assert set(fake.submits[0]["input"]) == {"person_image_url", field}
    assert result.category == category
    assert_bucket_clean(fake)


def test_images_brought_inside_provider_limits(fake_dashscope):
    """Tiny, huge, extreme-aspect, flat and RGBA inputs all pass the fake's real §9 checks."""
    fake = fake_dashscope
    tiny_person = smooth_image(120, 90)  # below 150 px: upsampled
    flat_rgba = np.zeros((60, 4500, 4), np.uint8)  # flat, over 4096 wide, 60 high: scaled + padded
    flat_rgba[..., :3] = 180
    flat_rgba[:, 1000:3000, 3] = 255
    results = run_jobs(fake, [job("a", person=tiny_person, garment=flat_rgba)])
    assert not isinstance(results[0], BaseException), results[0]
    assert results[0].image.shape == tiny_person.shape
    assert close_to(results[0].image, tiny_person, tol=8.0)
    (task,) = fake.task_list()
    for w, h, size in task.inputs.values():
        assert 150 < w < 4096 and 150 < h < 4096 and 5 * 1024 <= size <= 5_000_000
    assert_bucket_clean(fake)


def test_extreme_aspect_person_is_padded_not_cropped(fake_dashscope):
    fake = fake_dashscope
    thin = smooth_image(4200, 100)  # long side over 4096, short side far under 150 after scaling
    result = run_one(fake, job(person=thin))
    (task,) = fake.task_list()
    w, h, _ = task.inputs["person_image_url"]
    assert h <= 4096 and w >= 150  # padded to the minimum width
    assert result.image.shape == thin.shape
    assert close_to(result.image, thin, tol=10.0)
    assert_bucket_clean(fake)


def test_image_url_as_one_element_list(fake_dashscope):
    fake = fake_dashscope
    fake.result_url_as_list = True
    assert run_one(fake).image.shape == PERSON.shape
    assert_bucket_clean(fake)


# -- retries ----------------------------------------------------------------------------------


def test_throttling_and_5xx_are_retried(fake_dashscope):
    fake = fake_dashscope
    fake.fail_next("submit", 429, count=2)
    fake.fail_next("submit", 500, count=1)
    fake.fail_next("poll", 500, count=1)
    fake.fail_next("poll", 503, count=2)
    result = run_one(fake)
    assert result.image.shape == PERSON.shape
    assert fake.calls["submit"] == 4
    assert len(fake.task_list()) == 1
    assert_bucket_clean(fake)


def test_network_errors_are_retried(fake_dashscope):
    fake = fake_dashscope
    flaky = FlakyTransport("/tasks/", 3)
    result = run_one(fake, http_transport=flaky)
    assert flaky.raised == 3 and result.image.shape == PERSON.shape
    assert_bucket_clean(fake)


def test_throttling_until_the_deadline_is_provider_error(fake_dashscope):
    fake = fake_dashscope
    fake.fail_next("submit", 429, count=10**6)
    t0 = time.monotonic()
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=0.4)
    assert info.value.code == "provider_error" and info.value.retry_after_s
    assert time.monotonic() - t0 < 3
    assert fake.task_list() == []
    assert_bucket_clean(fake)


def test_5xx_on_poll_until_the_deadline_cancels_the_pending_task(fake_dashscope):
    fake = fake_dashscope
    fake.fail_next("poll", 503, count=10**6)
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=0.4)
    assert info.value.code == "provider_error"
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


# -- final states -----------------------------------------------------------------------------


def test_unknown_is_final(fake_dashscope):
    fake = fake_dashscope
    fake.force_unknown = True
    t0 = time.monotonic()
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=30)
    assert info.value.code == "provider_error"
    assert time.monotonic() - t0 < 5  # did not wait for the deadline
    assert fake.calls["poll"] == 1
    assert_bucket_clean(fake)


def test_poll_404_is_final(fake_dashscope):
    fake = fake_dashscope
    fake.fail_next("poll", 404, count=1)
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=30)
    assert info.value.code == "provider_error"
    assert fake.calls["poll"] == 1
    assert_bucket_clean(fake)


@pytest.mark.parametrize(
    "code, message, expected",
    [
        ("InvalidPerson", "The input image has no human body, please upload another image.", "no_person_detected"),
        ("InvalidPerson", "The input image has multi human bodies, please upload another image.", "multiple_people"),
        ("InvalidPerson", "The input image has no human body or multi human bodies, please upload other image.", "no_person_detected"),
        ("InvalidGarment", "Missing clothing image.Please input at least one top garment or bottom garment image.", "garment_not_found"),
        ("InvalidInputLength", "The image resolution is invalid, please make sure that the largest length of image is smaller than 4096", "invalid_image"),
        ("InvalidURL", "The request URL is invalid, please check the request URL is available", "invalid_image"),
        ("DataInspectionFailed", "Input or output data may contain inappropriate content.", "content_rejected"),
        ("InvalidParameter", "Download the media resource timed out during the data inspection process.", "provider_error"),
        ("InternalError.Algo", "Algorithm error", "provider_error"),
    ],
)
def test_failed_task_is_final_and_mapped(fake_dashscope, code, message, expected):
    fake = fake_dashscope
    fake.task_failure = (code, message)
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == expected
    assert fake.statuses() == ["FAILED"]
    assert "http" not in info.value.message.lower()
    assert_bucket_clean(fake)


def test_cancelled_by_someone_else_is_final(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "PENDING"

    async def go():
        backend = make_backend(fake)
        task = asyncio.ensure_future(backend.try_on(job()))
        await asyncio.to_thread(fake.wait_for, lambda f: f.tasks)
        (tid,) = list(fake.tasks)
        async with httpx.AsyncClient() as client:  # another key holder of the account cancels it
            resp = await client.post(f"{fake.base_url}/tasks/{tid}/cancel", headers={"Authorization": f"Bearer {fake.api_key}"})
            assert resp.status_code == 200
        try:
            return await asyncio.gather(task, return_exceptions=True)
        finally:
            await backend.close()

    (outcome,) = asyncio.run(go())
    assert isinstance(outcome, TryOnError) and outcome.code == "provider_error"
    assert_bucket_clean(fake)


# -- validation errors: at submit and as FAILED tasks -------------------------------------------


@pytest.mark.parametrize(
    "status, code, expected",
    [
        (400, "DataInspectionFailed", "content_rejected"),
        (400, "InvalidPerson", "no_person_detected"),
        (400, "Arrearage", "backend_misconfigured"),
        (403, "AllocationQuota.FreeTierOnly", "backend_misconfigured"),
        (400, "InvalidParameter", "provider_error"),
    ],
)
def test_submit_time_errors_are_mapped(fake_dashscope, status, code, expected):
    fake = fake_dashscope
    fake.submit_failure = (status, code, "rejected by the fake")
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == expected
    assert fake.task_list() == []
    assert_bucket_clean(fake)


class TamperingUploader(OssUploader):
    """Uploads something else than what the backend prepared (to trigger real validation)."""

    def __init__(self, settings, replacement: bytes):
        super().__init__(settings)
        self.replacement = replacement

    async def upload(self, data, *, name, content_type, model):
        return await super().upload(self.replacement if name == "person.jpg" else data, name=name, content_type=content_type, model=model)


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("stage", ["submit", "task"])
def test_real_input_validation_at_submit_or_as_failed_task(fake_dashscope, stage):
    fake = fake_dashscope
    fake.validate_inputs_at = stage
    uploader = TamperingUploader(settings_for(fake), _tiny_png())
    with pytest.raises(TryOnError) as info:
        run_one(fake, uploader=uploader)
    assert info.value.code == "invalid_image"  # InvalidInputLength with the all-limits message
    if stage == "task":
        assert fake.statuses() == ["FAILED"]
    else:
        assert fake.task_list() == []
    assert_bucket_clean(fake)


@pytest.mark.parametrize("stage", ["submit", "task"])
def test_expired_input_urls(fake_dashscope, stage):
    fake = fake_dashscope
    fake.validate_inputs_at = stage
    fake.oss.expire_presigned = True
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == "provider_error"
    assert_bucket_clean(fake)


def test_invalid_api_key_is_backend_misconfigured(fake_dashscope):
    fake = fake_dashscope
    with pytest.raises(TryOnError) as info:
        run_one(fake, api_key=SecretStr("sk-wrong-key"))
    assert info.value.code == "backend_misconfigured" and info.value.http_status == 503
    assert_bucket_clean(fake)


@pytest.mark.parametrize("status", [401, 403])
def test_forced_auth_errors(fake_dashscope, status):
    fake = fake_dashscope
    fake.fail_next("submit", status)
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == "backend_misconfigured"
    assert_bucket_clean(fake)


# -- result URLs ------------------------------------------------------------------------------


def test_expired_result_url(fake_dashscope):
    fake = fake_dashscope
    fake.result_url_expired = True
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == "provider_error"
    assert fake.statuses() == ["SUCCEEDED"]
    assert_bucket_clean(fake)


def test_missing_result_url(fake_dashscope):
    fake = fake_dashscope
    fake.result_url_missing = True
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == "provider_error"
    assert_bucket_clean(fake)


# -- deadline and giving up -------------------------------------------------------------------


def test_slow_provider_running_hits_our_deadline(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "RUNNING"
    t0 = time.monotonic()
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=0.5)
    assert info.value.code == "deadline_exceeded" and info.value.http_status == 504
    assert time.monotonic() - t0 < 4
    assert fake.statuses() == ["RUNNING"]  # a running task cannot be cancelled; it was tried
    assert fake.cancel_calls
    assert_bucket_clean(fake)


def test_slow_provider_pending_is_cancelled_at_our_deadline(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "PENDING"
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=0.4)
    assert info.value.code == "deadline_exceeded"
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
def test_caller_gives_up_task_cancelled_at_fake(fake_dashscope, how):
    fake = fake_dashscope
    fake.stall_in = "PENDING"

    async def go():
        backend = make_backend(fake, deadline_s=30)
        try:
            if how == "cancel":
                task = asyncio.ensure_future(backend.try_on(job()))
                assert await asyncio.to_thread(fake.wait_for, lambda f: any(t.served for t in f.tasks.values()))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(backend.try_on(job()), timeout=0.4)
        finally:
            await backend.close()

    asyncio.run(go())
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


def test_caller_gives_up_while_queued_uploads_nothing(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "PENDING"
    limiter = InProcessAccountLimiter(100, 1)

    async def go():
        backend = make_backend(fake, limiter=limiter, deadline_s=30)
        first = asyncio.ensure_future(backend.try_on(job("first")))
        assert await asyncio.to_thread(fake.wait_for, lambda f: f.tasks)
        second = asyncio.ensure_future(backend.try_on(job("second")))
        await asyncio.sleep(0.05)
        assert limiter.waiting("aitryon-plus") == 1
        second.cancel()
        first.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        assert limiter.running("aitryon-plus") == 0 and limiter.waiting("aitryon-plus") == 0
        await backend.close()

    asyncio.run(go())
    assert len(fake.submits) == 1
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


def test_purge_user_cancels_their_tasks_and_deletes_their_objects(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "PENDING"

    async def go():
        backend = make_backend(fake, deadline_s=30)
        a1 = asyncio.ensure_future(backend.try_on(job("a1", "alice")))
        a2 = asyncio.ensure_future(backend.try_on(job("a2", "alice")))
        b1 = asyncio.ensure_future(backend.try_on(job("b1", "bob")))
        assert await asyncio.to_thread(fake.wait_for, lambda f: len(f.tasks) == 3)
        count = await backend.purge_user("alice")
        outcomes = await asyncio.gather(a1, a2, return_exceptions=True)
        assert len(fake.bucket_objects()) == 2  # bob's person + garment only
        assert await backend.purge_user("nobody") == 0
        fake.stall_in = None
        bob = await b1
        await backend.close()
        return count, outcomes, bob

    count, outcomes, bob = asyncio.run(go())
    assert count == 2 + 4  # two jobs cancelled, four objects deleted
    for outcome in outcomes:
        assert isinstance(outcome, TryOnError) and outcome.code == "not_found"
    assert sorted(fake.statuses()) == ["CANCELED", "CANCELED", "SUCCEEDED"]
    assert bob.image.shape == PERSON.shape
    assert_bucket_clean(fake)


# -- account limits ---------------------------------------------------------------------------


def test_limiter_queues_six_jobs_never_more_than_five_running(fake_dashscope):
    fake = fake_dashscope
    fake.seconds_per_state = {"RUNNING": 0.25}
    limiter = InProcessAccountLimiter(10, 5)
    results = run_jobs(fake, [job(f"r{i}", f"u{i}") for i in range(6)], limiter=limiter)
    for result in results:
        assert not isinstance(result, BaseException), result
    assert fake.max_active_seen <= 5 and fake.max_running_seen <= 5
    assert fake.max_active_seen == 5  # they did run side by side
    assert max(r.timings_s["queue_s"] for r in results) > 0.1  # the sixth waited for a slot
    assert len(fake.task_list()) == 6
    assert_bucket_clean(fake)


def test_over_concurrency_rejected_reading_is_retried(fake_dashscope):
    """If the provider refuses a 6th task with 429 instead of queueing it, we retry."""
    fake = fake_dashscope
    fake.over_concurrency = "reject"
    fake.seconds_per_state = {"RUNNING": 0.1}
    results = run_jobs(fake, [job(f"r{i}") for i in range(6)], limiter=InProcessAccountLimiter(10, 10))
    for result in results:
        assert not isinstance(result, BaseException), result
    assert fake.calls["submit"] > 6 and len(fake.task_list()) == 6
    assert_bucket_clean(fake)


def test_over_concurrency_queued_reading_keeps_polling(fake_dashscope):
    """If the provider queues a 6th task as PENDING instead, we simply keep polling it."""
    fake = fake_dashscope
    fake.seconds_per_state = {"RUNNING": 0.1}
    results = run_jobs(fake, [job(f"r{i}") for i in range(6)], limiter=InProcessAccountLimiter(10, 10))
    for result in results:
        assert not isinstance(result, BaseException), result
    assert fake.max_running_seen <= 5 and fake.max_active_seen == 6
    assert_bucket_clean(fake)


# -- refiner ----------------------------------------------------------------------------------


def test_refiner_pass(fake_dashscope):
    fake = fake_dashscope
    result = run_one(fake, use_refiner=True, refiner_gender="woman")
    assert result.refined is True and result.image.shape == PERSON.shape
    first, second = fake.submits
    assert second["model"] == "aitryon-refiner"
    assert second["parameters"] == {"gender": "woman"}
    tryon_task = fake.tasks[first["task_id"]]
    assert second["input"]["coarse_image_url"] == tryon_task.result_url
    assert second["input"]["person_image_url"] == first["input"]["person_image_url"]
    assert second["input"]["top_garment_url"] == first["input"]["top_garment_url"]
    assert close_to(result.image, PERSON)
    assert_bucket_clean(fake)


def test_refiner_refused_falls_back_to_the_coarse_result(fake_dashscope):
    fake = fake_dashscope  # bottoms only: the documented schema requires a top, so the fake refuses
    result = run_one(fake, job(category="lower"), use_refiner=True, refiner_gender="man")
    assert result.refined is False and result.image.shape == PERSON.shape
    assert [s["model"] for s in fake.submits] == ["aitryon-plus"]
    assert_bucket_clean(fake)


def test_refiner_bottoms_only_accepted_reading(fake_dashscope):
    fake = fake_dashscope
    fake.refiner_requires_top = False
    result = run_one(fake, job(category="lower"), use_refiner=True, refiner_gender="man")
    assert result.refined is True
    assert "bottom_garment_url" in fake.submits[1]["input"]
    assert_bucket_clean(fake)


def test_refiner_needs_a_gender(fake_dashscope):
    with pytest.raises(TryOnError) as info:
        make_backend(fake_dashscope, use_refiner=True)
    assert info.value.code == "backend_misconfigured"


# -- DashScope temporary storage (opt-in) -------------------------------------------------------


def test_temp_storage_refused_without_opt_in(fake_dashscope):
    settings = settings_for(fake_dashscope, oss_bucket=None)
    with pytest.raises(TryOnError) as info:
        DashScopeTempUploader(settings)
    assert info.value.code == "backend_misconfigured" and "48 h" in info.value.message
    with pytest.raises(TryOnError):
        AlibabaCloudBackend(settings)  # no bucket and no opt-in: nowhere to upload


@pytest.mark.parametrize("strings", [False, True])
def test_temp_storage_opt_in(fake_dashscope, caplog, strings):
    fake = fake_dashscope
    fake.policy_numbers_as_strings = strings
    settings = settings_for(fake, oss_bucket=None, allow_dashscope_temp_storage_kept_48h=True, use_refiner=True, refiner_gender="woman")
    with caplog.at_level(logging.WARNING, logger="pexir_tryon.backends.alibaba"):
        backend = AlibabaCloudBackend(settings, retry_base_s=0.005, retry_max_s=0.02)
    assert any("48 h" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert isinstance(backend.uploader, DashScopeTempUploader)

    async def go():
        try:
            return await backend.try_on(job())
        finally:
            await backend.close()

    result = asyncio.run(go())
    assert result.refined is True
    tryon, refine = fake.submits
    assert tryon["oss_resolve"] and refine["oss_resolve"]
    assert tryon["input"]["person_image_url"].startswith("oss://")
    # Files are bound to the model they were uploaded for: the refiner got its own uploads.
    assert refine["input"]["person_image_url"] != tryon["input"]["person_image_url"]
    models = sorted(o["model"] for o in fake.oss.temp_objects.values())
    assert models == ["aitryon-plus", "aitryon-plus", "aitryon-refiner", "aitryon-refiner"]
    assert fake.bucket_objects() == []


# -- secrets ----------------------------------------------------------------------------------


DISTINCTIVE_KEY = "sk-PEXIR-DISTINCTIVE-7f3a9c1e5b"
DISTINCTIVE_OSS_ID = "LTAIpexirDistinctiveId77"
DISTINCTIVE_OSS_SECRET = "pexirDistinctiveOssSecret9931"


def _all_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        parts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def written_logs(caplog) -> str:
    """The log lines exactly as the JSON handler writes them, structured fields included."""
    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def test_secrets_never_in_errors_reprs_or_logs(fake_dashscope, caplog):
    fake = fake_dashscope
    fake.oss.access_key_id = DISTINCTIVE_OSS_ID
    secrets = (DISTINCTIVE_KEY, DISTINCTIVE_OSS_ID, DISTINCTIVE_OSS_SECRET)
    overrides = dict(
        api_key=SecretStr(DISTINCTIVE_KEY),  # the fake does not know it: 401 InvalidApiKey
        oss_access_key_id=SecretStr(DISTINCTIVE_OSS_ID),
        oss_access_key_secret=SecretStr(DISTINCTIVE_OSS_SECRET),
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TryOnError) as info:
        run_one(fake, **overrides)
    assert info.value.code == "backend_misconfigured"
    text = _all_text(info.value)
    backend = make_backend(fake, **overrides)
    text += repr(backend) + repr(backend.settings) + str(backend.settings) + repr(backend.uploader) + repr(backend.client)
    asyncio.run(backend.close())
    logs = written_logs(caplog)
    for secret in secrets:
        assert secret not in text
        assert secret not in logs
    assert_bucket_clean(fake)


def test_no_signed_urls_or_secrets_in_logs_of_a_successful_run(fake_dashscope, caplog):
    fake = fake_dashscope
    fake.oss.access_key_id = DISTINCTIVE_OSS_ID
    fake.api_keys = {DISTINCTIVE_KEY}
    caplog.set_level(logging.DEBUG)
    run_one(fake, oss_access_key_id=SecretStr(DISTINCTIVE_OSS_ID), oss_access_key_secret=SecretStr(DISTINCTIVE_OSS_SECRET))
    logs = written_logs(caplog)
    assert "HTTP Request" in logs  # httpx did log the requests...
    for needle in (DISTINCTIVE_KEY, DISTINCTIVE_OSS_ID, DISTINCTIVE_OSS_SECRET, "x-oss-signature=", "Signature="):
        assert needle not in logs  # ...without signatures or keys
    assert_bucket_clean(fake)


def test_api_key_from_secrets_file(fake_dashscope, tmp_path):
    fake = fake_dashscope
    key_file = tmp_path / "dashscope.key"
    key_file.write_text(fake.api_key + "\n")
    result = run_one(fake, api_key=None, api_key_file=key_file)
    assert result.image.shape == PERSON.shape
    with pytest.raises(TryOnError) as info:
        make_backend(fake, api_key=None, api_key_file=tmp_path / "missing.key")
    assert info.value.code == "backend_misconfigured" and str(tmp_path) not in info.value.message
    with pytest.raises(TryOnError):
        make_backend(fake, api_key=None)
    assert_bucket_clean(fake)


def test_from_settings(fake_dashscope):
    settings = Settings(alibaba=settings_for(fake_dashscope), backend="alibaba")
    backend = AlibabaCloudBackend.from_settings(settings)
    assert isinstance(backend.uploader, OssUploader)
    assert isinstance(backend.limiter, InProcessAccountLimiter)  # no Ray initialised here
    assert backend.limiter.max_concurrent_tasks == 5 and backend.limiter.max_submits_per_s == 10
    asyncio.run(backend.close())


# -- OSS trouble ------------------------------------------------------------------------------


def test_caller_gives_up_during_upload_leaves_nothing(fake_dashscope):
    fake = fake_dashscope
    fake.oss.put_delay_s = 0.3

    async def go():
        backend = make_backend(fake, deadline_s=30)
        task = asyncio.ensure_future(backend.try_on(job()))
        assert await asyncio.to_thread(fake.wait_for, lambda f: any(m == "PUT" for m, _ in f.oss.requests))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.close()

    asyncio.run(go())
    assert fake.submits == []
    assert fake.bucket_objects() == []
    puts = {p for m, p in fake.oss.requests if m == "PUT"}
    deletes = {p for m, p in fake.oss.requests if m == "DELETE"}
    assert puts and puts <= deletes


def test_upload_failure_is_provider_error_and_leaves_nothing(fake_dashscope):
    fake = fake_dashscope
    fake.oss.fail_puts = 100
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == "provider_error"
    assert fake.submits == [] and fake.bucket_objects() == []


def test_failing_deletes_are_retried(fake_dashscope):
    fake = fake_dashscope
    fake.oss.fail_deletes = 2
    run_one(fake)
    assert_bucket_clean(fake)


def test_deadline_while_queued_for_a_slot(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "PENDING"
    limiter = InProcessAccountLimiter(100, 1)

    async def go():
        backend = make_backend(fake, limiter=limiter, deadline_s=0.6)
        first = asyncio.ensure_future(backend.try_on(job("first")))
        assert await asyncio.to_thread(fake.wait_for, lambda f: f.tasks)
        backend.settings = backend.settings.model_copy(update={"deadline_s": 0.1})
        with pytest.raises(TryOnError) as info:
            await backend.try_on(job("second"))
        assert info.value.code == "deadline_exceeded" and "slot" in info.value.message
        outcome = await asyncio.gather(first, return_exceptions=True)
        await backend.close()
        return outcome

    (first,) = asyncio.run(go())
    assert isinstance(first, TryOnError) and first.code == "deadline_exceeded"
    assert len(fake.submits) == 1
    assert_bucket_clean(fake)


def test_close_with_jobs_in_flight(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in = "PENDING"

    async def go():
        backend = make_backend(fake, deadline_s=30)
        task = asyncio.ensure_future(backend.try_on(job()))
        assert await asyncio.to_thread(fake.wait_for, lambda f: f.tasks)
        await backend.close()
        return await asyncio.gather(task, return_exceptions=True)

    (outcome,) = asyncio.run(go())
    assert isinstance(outcome, TryOnError) and outcome.code == "stage_unavailable"
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


def test_caller_gives_up_mid_submit_task_still_cancelled(fake_dashscope):
    """The provider queued the task but its answer has not arrived when the caller gives up."""
    fake = fake_dashscope
    fake.stall_in = "PENDING"
    fake.delay_after_submit_s = 0.3

    async def go():
        backend = make_backend(fake, deadline_s=30)
        task = asyncio.ensure_future(backend.try_on(job()))
        assert await asyncio.to_thread(fake.wait_for, lambda f: f.tasks)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.close()

    asyncio.run(go())
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


def test_slow_http_answers_hit_our_deadline(fake_dashscope):
    fake = fake_dashscope
    fake.response_delay_s = {"poll": 2.0}
    t0 = time.monotonic()
    with pytest.raises(TryOnError) as info:
        run_one(fake, deadline_s=0.5)
    assert info.value.code == "deadline_exceeded"
    assert time.monotonic() - t0 < 3
    assert fake.statuses() == ["CANCELED"]
    assert_bucket_clean(fake)


def test_result_that_is_not_an_image(fake_dashscope):
    fake = fake_dashscope
    fake.result_not_an_image = True
    with pytest.raises(TryOnError) as info:
        run_one(fake)
    assert info.value.code == "provider_error"
    assert_bucket_clean(fake)


def test_refiner_task_failure_falls_back_to_the_coarse_result(fake_dashscope):
    fake = fake_dashscope
    fake.task_failure = ("InvalidParameter", "The size of person image and coarse_image are not the same.")
    fake.task_failure_model = "aitryon-refiner"
    result = run_one(fake, use_refiner=True, refiner_gender="woman")
    assert result.refined is False and close_to(result.image, PERSON)
    assert sorted(fake.statuses()) == ["FAILED", "SUCCEEDED"]
    assert_bucket_clean(fake)


def test_refiner_counts_against_the_same_deadline(fake_dashscope):
    fake = fake_dashscope
    fake.stall_in, fake.stall_model = "PENDING", "aitryon-refiner"
    t0 = time.monotonic()
    result = run_one(fake, use_refiner=True, refiner_gender="man", deadline_s=1.0)
    assert time.monotonic() - t0 < 4
    assert result.refined is False and result.image.shape == PERSON.shape
    assert sorted(fake.statuses()) == ["CANCELED", "SUCCEEDED"]
    assert_bucket_clean(fake)


def test_submit_answer_too_slow_is_not_resubmitted(fake_dashscope):
    """A read timeout on submit is ambiguous (the task may exist): no second, billable task."""
    fake = fake_dashscope
    fake.delay_after_submit_s = 1.0
    with pytest.raises(TryOnError) as info:
        run_one(fake, http_timeout_s=0.2, deadline_s=5)
    assert info.value.code == "provider_error"
    assert fake.calls["submit"] == 1
    assert_bucket_clean(fake)  # the orphan task can no longer fetch its inputs
