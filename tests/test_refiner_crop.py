"""Crop planning, cutting and pasting of the refiner (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pexir_tryon.refine.crop import LATENT_CELL, SHAPE_QUANTUM, cut, paste, plan_crop, working_resolution


@st.composite
def image_and_mask(draw):
    height = draw(st.integers(16, 700))
    width = draw(st.integers(16, 700))
    x0 = draw(st.integers(0, width - 1))
    y0 = draw(st.integers(0, height - 1))
    x1 = draw(st.integers(x0 + 1, width))
    y1 = draw(st.integers(y0 + 1, height))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return (height, width), mask, (x0, y0, x1, y1)


@settings(max_examples=150, deadline=None)
@given(image_and_mask(), st.sampled_from([64, 128, 200, 512, 1024]))
def test_plan_contains_mask_and_has_a_valid_working_shape(case, resolution):
    (height, width), mask, (mx0, my0, mx1, my1) = case
    plan = plan_crop((height, width), mask, resolution)
    x0, y0, x1, y1 = plan.box
    assert 0 <= x0 <= mx0 and mx1 <= x1 <= width
    assert 0 <= y0 <= my0 and my1 <= y1 <= height
    work_w, work_h = plan.work
    long_side = working_resolution(resolution)
    assert max(work_w, work_h) == long_side
    assert work_w % 8 == 0 and work_h % 8 == 0
    short = min(work_w, work_h)
    assert short % SHAPE_QUANTUM == 0 or short == long_side
    scaled_w, scaled_h = plan.scaled
    assert 1 <= scaled_w <= work_w and 1 <= scaled_h <= work_h
    # the crop's long side is scaled to the working long side (padding only, never cropping)
    assert max(scaled_w, scaled_h) == long_side


def test_empty_mask_has_no_plan():
    assert plan_crop((50, 40), np.zeros((50, 40), dtype=bool), 512) is None


def test_similar_aspects_share_a_working_shape():
    plans = []
    for height, width in [(1024, 768), (1000, 750), (1100, 800), (640, 480)]:
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 5 : height * 4 // 5, width // 6 : width * 5 // 6] = True
        plans.append(plan_crop((height, width), mask, 512))
    assert len({plan.work for plan in plans}) == 1


@settings(max_examples=60, deadline=None)
@given(image_and_mask(), st.sampled_from([64, 128, 512]), st.integers(0, 2**32 - 1))
def test_cut_and_paste_touch_only_the_mask(case, resolution, seed):
    (height, width), mask, _ = case
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    plan = plan_crop((height, width), mask, resolution)
    work_image, work_mask = cut(image, mask, plan)
    assert work_image.shape == (plan.work[1], plan.work[0], 3) and work_image.dtype == np.uint8
    assert work_mask.shape == (plan.work[1], plan.work[0])
    # the working mask covers whole latent cells and is empty in the padding
    cells = work_mask.reshape(work_mask.shape[0] // LATENT_CELL, LATENT_CELL, -1, LATENT_CELL)
    assert np.all((cells.min(axis=(1, 3)) == cells.max(axis=(1, 3))))
    rows_used = -(-plan.scaled[1] // LATENT_CELL) * LATENT_CELL  # the padding past the last partly used cell
    cols_used = -(-plan.scaled[0] // LATENT_CELL) * LATENT_CELL
    assert not work_mask[rows_used:, :].any() and not work_mask[:, cols_used:].any()
    refined = rng.integers(0, 256, work_image.shape, dtype=np.uint8)
    out = paste(image, mask, refined, plan)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])


def test_paste_replaces_the_mask_interior():
    image = np.zeros((200, 150, 3), dtype=np.uint8)
    mask = np.zeros((200, 150), dtype=bool)
    mask[50:150, 40:110] = True
    plan = plan_crop(image.shape[:2], mask, 128)
    refined = np.full((plan.work[1], plan.work[0], 3), 200, dtype=np.uint8)
    out = paste(image, mask, refined, plan)
    assert np.all(out[60:140, 50:100] == 200)  # interior, beyond the feather
    assert np.all(out[~mask] == 0)
    edge = out[50, 60, 0]
    assert 0 < edge < 200  # feathered inside the mask's edge


@pytest.mark.parametrize("shape", [(37, 1000), (1000, 37), (9, 9)])
def test_extreme_aspects(shape):
    mask = np.ones(shape, dtype=bool)
    plan = plan_crop(shape, mask, 512)
    assert plan.box == (0, 0, shape[1], shape[0])
    image = np.full((*shape, 3), 7, dtype=np.uint8)
    work_image, work_mask = cut(image, mask, plan)
    out = paste(image, mask, np.full_like(work_image, 9), plan)
    assert out.shape == image.shape
