"""Unit tests of the alibaba backend's parts: image fitting, error mapping, limiter, log scrubbing."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pexir_tryon.backends.alibaba import InProcessAccountLimiter, RayAccountLimiter, map_provider_error
from pexir_tryon.backends.alibaba.client import RetryPolicy
from pexir_tryon.backends.alibaba.logfilter import SignedUrlFilter, redact_signed_urls
from pexir_tryon.backends.alibaba.prepare import (
    MAX_BYTES,
    MAX_SIDE,
    MIN_BYTES,
    MIN_SIDE,
    pad_jpeg_bytes,
    prepare_for_provider,
    restore_result,
)
from pexir_tryon.backends.alibaba.provider_errors import scrub

# -- prepare ----------------------------------------------------------------------------------


def _smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([128 + 100 * np.sin(xx / w * 3), 128 + 100 * np.cos(yy / h * 2), np.full((h, w), 90.0)], -1).astype(np.uint8)


def _check_limits(prepared):
    assert MIN_BYTES <= len(prepared.data) <= MAX_BYTES
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert img.format == "JPEG"
        assert img.size == prepared.size
        assert all(MIN_SIDE < s < MAX_SIDE for s in img.size)


@pytest.mark.parametrize(
    "shape",
    [(300, 200, 3), (100, 80, 3), (20, 20, 3), (60, 3000, 3), (5000, 120, 3), (4200, 300, 3), (200, 200, 4)],
)
def test_prepare_fits_limits_and_round_trips(shape):
    h, w, c = shape
    arr = _smooth(h, w)
    if c == 4:
        arr = np.concatenate([arr, np.full((h, w, 1), 255, np.uint8)], -1)
    prepared = prepare_for_provider(arr)
    _check_limits(prepared)
    assert prepared.original_size == (w, h)
    assert "data" not in repr(prepared) and "\\x" not in repr(prepared)
    # What the provider returns at the sent size maps back to the original size and content.
    out = restore_result(prepared.data, prepared, (w, h))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    if min(h, w) >= 60:
        assert float(np.abs(out.astype(float) - arr[..., :3].astype(float)).mean()) < 8


def test_prepare_pads_instead_of_cropping():
    arr = _smooth(4400, 90)
    prepared = prepare_for_provider(arr)
    left, top, cw, ch = prepared.content_box
    assert prepared.size[0] > cw and left > 0  # padded sideways
    assert (top, ch) == (0, prepared.size[1])  # nothing cropped vertically


def test_prepare_result_at_another_resolution_maps_proportionally():
    arr = _smooth(400, 300)
    prepared = prepare_for_provider(arr)
    with Image.open(io.BytesIO(prepared.data)) as img:
        buf = io.BytesIO()
        img.resize((576, 1024)).save(buf, format="JPEG", quality=95)
    out = restore_result(buf.getvalue(), prepared, (300, 400))
    assert out.shape == (400, 300, 3)


def test_flat_image_is_lengthened_not_altered():
    flat = np.full((300, 300, 3), 200, np.uint8)
    prepared = prepare_for_provider(flat)
    _check_limits(prepared)
    with Image.open(io.BytesIO(prepared.data)) as img:
        assert np.abs(np.asarray(img.convert("RGB")).astype(int) - 200).max() <= 2


def test_noisy_huge_image_goes_down_the_quality_ladder():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1600, 1600, 3), dtype=np.uint8)  # ~7 MB at quality 95
    prepared = prepare_for_provider(noise)
    _check_limits(prepared)
    assert prepared.quality < 95 and prepared.size == (1600, 1600)


def test_pad_jpeg_bytes_keeps_pixels():
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (1, 2, 3)).save(buf, format="JPEG")
    padded = pad_jpeg_bytes(buf.getvalue(), 80_000)
    assert len(padded) >= 80_000
    with Image.open(io.BytesIO(padded)) as a, Image.open(buf) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


# -- provider errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, message, status, expected",
    [
        ("InvalidApiKey", "Invalid API-key provided.", 401, "backend_misconfigured"),
        ("InvalidApiKey", "No API-key provided.", 401, "backend_misconfigured"),
        ("AccessDenied", "current user api does not support synchronous calls", 403, "backend_misconfigured"),
        ("Arrearage", "Access denied, please make sure your account is in good standing.", 400, "backend_misconfigured"),
        ("InvalidParameter", "Model not exist.", 400, "backend_misconfigured"),
        ("InvalidParameter.DataInspection", "oss url not resolved", 400, "backend_misconfigured"),
        ("InvalidPerson", "no human body detected", None, "no_person_detected"),
        ("InvalidPerson", "multi human bodies", None, "multiple_people"),
        ("InvalidGarment", "Missing clothing image.", 400, "garment_not_found"),
        ("InvalidURL", "The request URL is invalid", 400, "invalid_image"),
        ("InvalidInputLength", "image too large: exceeds 5MB", 400, "image_too_large"),
        ("InvalidInputLength", "image too small", 400, "image_too_small"),
        ("InvalidInputLength", "ranges from 5KB to 5MB", 400, "invalid_image"),
        ("DataInspectionFailed", "Input or output data may contain inappropriate content.", 400, "content_rejected"),
        ("Throttling.RateQuota", "Requests rate limit exceeded", 429, "provider_error"),
        ("InternalError", "internal", 500, "provider_error"),
        (None, None, 503, "provider_error"),
        ("SomethingNew", "whatever", 400, "provider_error"),
    ],
)
def test_error_mapping(code, message, status, expected):
    err = map_provider_error(code, message, status)
    assert err.code == expected
    assert "http://" not in err.message


def test_provider_text_is_scrubbed():
    text = scrub("failed to fetch https://b.oss/x.jpg?Signature=abc&x=1 with sk-secret-123456", ["sk-secret-123456"])
    assert "Signature" not in text and "sk-secret" not in text and "<url>" in text
    assert map_provider_error("Bad\ncode<script>", "m").message.count("Unknown") == 1


def test_retry_backoff_is_jittered_and_capped():
    import random

    policy = RetryPolicy(base_s=0.1, max_s=1.0)
    rng = random.Random(1)
    delays = [policy.backoff(a, rng) for a in range(10)]
    assert all(0 < d <= 1.0 for d in delays)
    assert delays[0] <= 0.1 and max(delays) > 0.4
    assert len(set(delays)) == len(delays)


# -- log scrubbing ----------------------------------------------------------------------------


def test_signed_urls_are_redacted_in_log_records():
    url = "https://bucket.oss-cn-beijing.aliyuncs.com/tmp/p.jpg?x-oss-signature-version=OSS4&x-oss-credential=LTAIabc&x-oss-signature=deadbeef"
    assert "deadbeef" not in redact_signed_urls(f"GET {url} done")
    assert redact_signed_urls("http://x/y?page=2") == "http://x/y?page=2"
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: %s %s", ("GET", url), None)
    SignedUrlFilter().filter(record)
    assert "LTAIabc" not in record.getMessage() and "deadbeef" not in record.getMessage()


# -- limiter ----------------------------------------------------------------------------------


def test_limiter_caps_concurrency_fifo():
    async def go():
        limiter = InProcessAccountLimiter(100, 5)
        running, peak, order = 0, 0, []

        async def worker(i):
            nonlocal running, peak
            await limiter.acquire_task("m", f"t{i}", timeout_s=5, lease_s=60)
            order.append(i)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            await limiter.release_task("m", f"t{i}")

        tasks = []
        for i in range(12):
            tasks.append(asyncio.ensure_future(worker(i)))
            await asyncio.sleep(0)  # arrive in order
        await asyncio.gather(*tasks)
        return peak, order, limiter

    peak, order, limiter = asyncio.run(go())
    assert peak == 5
    assert order == list(range(12))
    assert limiter.running("m") == 0 and limiter.waiting("m") == 0


def test_limiter_keys_are_independent():
    async def go():
        limiter = InProcessAccountLimiter(100, 1)
        await limiter.acquire_task("aitryon-plus", "a", timeout_s=1, lease_s=60)
        await limiter.acquire_task("aitryon-refiner", "b", timeout_s=0.05, lease_s=60)
        with pytest.raises(TimeoutError):
            await limiter.acquire_task("aitryon-plus", "c", timeout_s=0.05, lease_s=60)
        return limiter

    limiter = asyncio.run(go())
    assert limiter.waiting("aitryon-plus") == 0


def test_limiter_timeout_and_cancellation_leave_nothing_behind():
    async def go():
        limiter = InProcessAccountLimiter(100, 1)
        await limiter.acquire_task("m", "holder", timeout_s=1, lease_s=60)
        with pytest.raises(TimeoutError):
            await limiter.acquire_task("m", "late", timeout_s=0.03, lease_s=60)
        waiter = asyncio.ensure_future(limiter.acquire_task("m", "cancelled", timeout_s=5, lease_s=60))
        await asyncio.sleep(0.01)
        assert limiter.waiting("m") == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.waiting("m") == 0
        # withdrawing by token (what a cancelled Ray caller does) also works
        withdrawn = asyncio.ensure_future(limiter.acquire_task("m", "withdrawn", timeout_s=5, lease_s=60))
        await asyncio.sleep(0.01)
        await limiter.release_task("m", "withdrawn")
        with pytest.raises(asyncio.CancelledError):
            await withdrawn
        await limiter.release_task("m", "holder")
        await limiter.release_task("m", "holder")  # idempotent
        await limiter.acquire_task("m", "next", timeout_s=0.05, lease_s=60)
        return limiter

    limiter = asyncio.run(go())
    assert limiter.running("m") == 1 and limiter.waiting("m") == 0


def test_limiter_lease_expiry_frees_a_dead_holders_slot():
    async def go():
        limiter = InProcessAccountLimiter(100, 1)
        await limiter.acquire_task("m", "dead-replica", timeout_s=1, lease_s=0.05)
        await limiter.acquire_task("m", "next", timeout_s=2, lease_s=60)  # waits ~50 ms, not forever
        return limiter

    assert asyncio.run(go()).running("m") == 1


def test_limiter_rate_with_virtual_clock():
    """At most N submits in any 1 s window; the rest queue (virtual time: no real waiting)."""
    now = [0.0]

    async def fake_sleep(dt):
        now[0] += dt
        await asyncio.sleep(0)

    async def go():
        limiter = InProcessAccountLimiter(10, 5, clock=lambda: now[0], sleep=fake_sleep)
        stamps = []

        async def submit():
            await limiter.acquire_submit("m", timeout_s=100)
            stamps.append(now[0])

        await asyncio.gather(*(submit() for _ in range(35)))
        with pytest.raises(TimeoutError):
            limiter2 = InProcessAccountLimiter(1, 5, clock=lambda: now[0], sleep=fake_sleep)
            await limiter2.acquire_submit("m", timeout_s=1)
            await limiter2.acquire_submit("m", timeout_s=0.5)
        return stamps

    stamps = asyncio.run(go())
    assert len(stamps) == 35
    for s in stamps:
        assert sum(1 for t in stamps if s <= t < s + 1.0) <= 10
    assert stamps[-1] >= 3.0  # 35 submits at 10/s take at least 3 s of (virtual) time


def test_ray_limiter_is_import_light():
    code = (
        "import sys\n"
        "import pexir_tryon.backends.alibaba as a\n"
        "lim = a.RayAccountLimiter(10, 5)\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "assert 'alibabacloud_oss_v2' not in sys.modules, 'oss sdk imported'\n"
        "print(repr(lim))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RayAccountLimiter" in out.stdout


def test_default_limiter_without_ray_is_in_process():
    from pexir_tryon.backends.alibaba import default_limiter

    limiter = default_limiter(10, 5)
    assert isinstance(limiter, (InProcessAccountLimiter, RayAccountLimiter))
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        assert isinstance(limiter, InProcessAccountLimiter)


def test_fewer_pixels_when_the_lowest_quality_is_still_too_big(monkeypatch):
    from pexir_tryon.backends.alibaba import prepare as prep

    monkeypatch.setattr(prep, "TARGET_MAX_BYTES", 80_000)
    noise = np.random.default_rng(1).integers(0, 256, (700, 500, 3), dtype=np.uint8)
    prepared = prep.prepare_for_provider(noise)
    assert len(prepared.data) <= 80_000
    assert prepared.size[0] < 500  # fewer pixels, then the ladder again
    out = prep.restore_result(prepared.data, prepared, (500, 700))
    assert out.shape == (700, 500, 3)
