"""Batched refinement with the tiny random refiner: batching, seeds, the mask contract, sizes, errors."""

from __future__ import annotations


import numpy as np
import pytest

from pexir_tryon.config import RefinerSettings
from pexir_tryon.errors import TryOnError
from pexir_tryon.refine import DiffusionRefiner, RefineRequest, load_refiner_model

SETTINGS = RefinerSettings(resolution=128, steps=4, strength=0.75, max_batch_size=4)
# Batched CPU kernels (oneDNN convolutions, GEMM vs GEMV for the time embedding) round differently
# from batch-1 kernels at the 1e-6 level; after uint8 quantisation a handful of pixels can move by
# one level. Noise is per request, so anything larger would be a real seed-isolation bug.
MAX_LEVEL_DIFF = 2
MAX_DIFFERING_FRACTION = 0.002

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def refiner(tiny_refiner_dir) -> DiffusionRefiner:
    return DiffusionRefiner(load_refiner_model(tiny_refiner_dir, "cpu", SETTINGS), SETTINGS)


def person_like(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image and a torso-shaped mask with a hole (the 'face' stays out)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack(
        [(127 + 100 * np.sin(xx / (7 + c) + yy / (11 + c) + rng.uniform(0, 6))) for c in range(3)], axis=-1
    ).astype(np.uint8)
    image[rng.random((height, width)) < 0.05] = 255  # some sharp detail
    cy, cx = height * 0.6, width * 0.5
    mask = (((yy - cy) / (height * 0.3)) ** 2 + ((xx - cx) / (width * 0.35)) ** 2 <= 1).astype(np.uint8) * 255
    mask[int(height * 0.55) : int(height * 0.6), int(width * 0.45) : int(width * 0.5)] = 0  # a hole
    mask[: int(height * 0.25)] = 0  # head region never repainted
    return image, mask


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= MAX_LEVEL_DIFF, diff.max()
    assert (diff > 0).mean() <= MAX_DIFFERING_FRACTION, (diff > 0).mean()


def changed_fraction(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float((a != b).any(axis=-1)[where].mean())


def test_batch_of_mixed_seeds_equals_one_by_one(refiner):
    image_a, mask_a = person_like(301, 203, 1)
    image_b, mask_b = person_like(280, 190, 2)  # same working shape as a (aspect bucket)
    image_c, mask_c = person_like(120, 333, 3)  # landscape: a group of its own
    requests = [
        RefineRequest(image_a, mask_a, seed=11),
        RefineRequest(image_b, mask_b, seed=12),
        RefineRequest(image_a, mask_a, seed=13),
        RefineRequest(image_c, mask_c, seed=11),
        RefineRequest(image_a, mask_a, seed=11, strength=0.5, steps=6),  # other parameters: own group
        RefineRequest(image_b, mask_b, seed=14),
        RefineRequest(image_a, mask_a, seed=11),  # same as the first
    ]
    batched = refiner.refine_batch(requests)
    singles = [refiner.refine_batch([request])[0] for request in requests]
    for together, alone in zip(batched, singles):
        assert_close(together, alone)
    assert_close(batched[0], batched[6])
    # different seeds give visibly different images (so the comparison above means something)
    repaint = mask_a > 127
    assert changed_fraction(batched[0], batched[2], repaint) > 0.5
    # a batch larger than max_batch_size is split and still matches
    many = [RefineRequest(image_a, mask_a, seed=s) for s in range(6)]
    for together, request in zip(refiner.refine_batch(many), many):
        assert_close(together, refiner.refine(request))


def test_equal_working_shapes_share_one_denoising_call(refiner, monkeypatch):
    image_a, mask_a = person_like(301, 203, 1)
    image_b, mask_b = person_like(280, 190, 2)
    image_c, mask_c = person_like(120, 333, 3)
    calls = []
    original = refiner._denoise

    def recording(jobs):
        calls.append((len(jobs), jobs[0].plan.work))
        return original(jobs)

    monkeypatch.setattr(refiner, "_denoise", recording)
    requests = [RefineRequest(image_a, mask_a, seed=s) for s in range(3)]
    requests += [RefineRequest(image_b, mask_b, seed=s) for s in range(2)]
    requests += [RefineRequest(image_c, mask_c, seed=1), RefineRequest(image_a, mask_a, seed=1, steps=8)]
    refiner.refine_batch(requests)
    portrait = calls[0][1]
    assert sorted(calls) == sorted([(4, portrait), (1, portrait), (1, calls[-2][1]), (1, portrait)])
    landscape = calls[-2][1]
    assert landscape != portrait and landscape[0] > landscape[1]


def test_noise_comes_only_from_the_request_seed(refiner):
    import torch

    image, mask = person_like(200, 150, 5)
    request = RefineRequest(image, mask, seed=99)
    torch.manual_seed(1)
    np.random.seed(1)
    first = refiner.refine_batch([request, RefineRequest(image, mask, seed=3)])
    torch.manual_seed(2)
    np.random.seed(2)
    second = refiner.refine_batch([request, RefineRequest(image, mask, seed=3)])
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


@pytest.mark.parametrize("shape", [(301, 203), (97, 61), (61, 300), (513, 257), (1001, 67), (64, 64)])
def test_pixels_outside_the_mask_are_unchanged_and_size_kept(refiner, shape):
    image, mask = person_like(*shape, seed=sum(shape))
    mask[mask == 0] = np.where(np.random.default_rng(0).random((mask == 0).sum()) < 0.5, 0, 127)  # below threshold: keep
    out = refiner.refine(RefineRequest(image, mask, seed=7))
    assert out.shape == image.shape and out.dtype == np.uint8
    keep = mask <= 127
    assert np.array_equal(out[keep], image[keep])
    assert changed_fraction(out, image, ~keep) > 0.5  # and the mask was repainted


def test_non_contiguous_and_bool_inputs(refiner):
    image, mask = person_like(160, 120, 8)
    flipped = image[:, ::-1]
    out = refiner.refine(RefineRequest(flipped, mask > 127, seed=1))
    assert np.array_equal(out[mask <= 127], flipped[mask <= 127])


def test_empty_mask_returns_a_copy_of_the_input(refiner):
    image, _ = person_like(100, 80, 9)
    out = refiner.refine(RefineRequest(image, np.zeros((100, 80), np.uint8), seed=1))
    assert np.array_equal(out, image) and out is not image


def test_one_bad_request_does_not_fail_the_others(refiner):
    image, mask = person_like(150, 100, 10)
    good = RefineRequest(image, mask, seed=5)
    bad = [
        RefineRequest(image, mask[:-1], seed=5),  # mask size differs
        RefineRequest(image.astype(np.float32), mask, seed=5),  # not uint8
        RefineRequest(image[..., :2], mask[..., None], seed=5),  # two channels
        RefineRequest(image, mask, seed=-1),
        RefineRequest(image, mask, seed=5, steps=0),
        RefineRequest(image, mask, seed=5, steps=SETTINGS.max_steps + 1),
        RefineRequest(image, mask, seed=5, strength=0.0),
        RefineRequest(image, mask, seed=5, strength=0.1, steps=5),  # 5 x 0.1 < 1 step
        RefineRequest(image, mask, seed=5, guidance_scale=-1.0),
        RefineRequest(image[:4, :4], mask[:4, :4], seed=5),  # too small
        "not a request",
    ]
    results = refiner.refine_batch([good, *bad, good])
    alone = refiner.refine(good)
    assert_close(results[0], alone)
    assert_close(results[-1], alone)
    for index, result in enumerate(results[1:-1], start=1):
        assert isinstance(result, TryOnError), index
        assert result.code == "invalid_request"
        assert f"refine request {index}:" in result.message


def test_a_failing_denoise_fails_only_its_request(refiner, monkeypatch):
    image, mask = person_like(150, 100, 11)
    poisoned_seed = 666
    original = refiner._denoise

    def flaky(jobs):
        if any(job.seed == poisoned_seed for job in jobs):
            raise RuntimeError("boom")
        return original(jobs)

    monkeypatch.setattr(refiner, "_denoise", flaky)
    results = refiner.refine_batch([RefineRequest(image, mask, seed=s) for s in (1, poisoned_seed, 2, 3)])
    assert isinstance(results[1], TryOnError) and results[1].code == "internal_error"
    assert "boom" not in results[1].message  # no internals in client-facing messages
    for result in (results[0], results[2], results[3]):
        assert isinstance(result, np.ndarray)


def test_guidance_above_one_runs_the_unconditional_pass(refiner):
    image, mask = person_like(150, 100, 12)
    plain = refiner.refine(RefineRequest(image, mask, seed=4, guidance_scale=1.0))
    guided = refiner.refine(RefineRequest(image, mask, seed=4, guidance_scale=5.0))
    assert changed_fraction(plain, guided, mask > 127) > 0.1
    assert np.array_equal(guided[mask <= 127], image[mask <= 127])
