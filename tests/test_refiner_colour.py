"""Colour lock: the garment keeps its colour through the refiner (field notes, item 5)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pexir_tryon.config import RefinerSettings
from pexir_tryon.refine import DiffusionRefiner, RefineRequest, load_refiner_model
from pexir_tryon.refine.colour import lock_colours

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RED = (200, 30, 40)
BLUE = (30, 60, 190)
# OpenCV's 8-bit CIELAB units (L scaled to 0..255, a and b offset by 128).
LOCKED_TOLERANCE = 4.0
DRIFT_WITHOUT_LOCK = 20.0


def mean_lab(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)[where].mean(axis=0)


def red_shirt_on_grey(height: int = 160, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    image[40:140, 20:100] = RED
    mask[40:140, 20:100] = 255
    return image, mask


def interior(mask: np.ndarray, px: int = 9) -> np.ndarray:
    """The mask without its edge, where the paste feather and the seam blend have no say."""
    return cv2.erode(mask, np.ones((px, px), np.uint8)) > 127


@pytest.fixture(scope="module")
def refine_with_lock(tiny_refiner_dir):
    refiners = {}

    def refine(colour_lock: float, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if colour_lock not in refiners:
            settings = RefinerSettings(resolution=128, steps=4, strength=0.75, colour_lock=colour_lock)
            refiners[colour_lock] = DiffusionRefiner(load_refiner_model(tiny_refiner_dir, "cpu", settings), settings)
        return refiners[colour_lock].refine(RefineRequest(image, mask, seed=3))

    return refine


def test_the_garment_keeps_its_colour_through_the_refiner(refine_with_lock):
    image, mask = red_shirt_on_grey()
    where = interior(mask)
    locked = refine_with_lock(1.0, image, mask)
    assert np.abs(mean_lab(locked, where) - mean_lab(image, where)).max() < LOCKED_TOLERANCE


def test_without_the_lock_the_random_refiner_does_shift_the_colour(refine_with_lock):
    # The check above means something only if the refiner, left alone, moves the colour.
    image, mask = red_shirt_on_grey()
    where = interior(mask)
    free = refine_with_lock(0.0, image, mask)
    assert np.abs(mean_lab(free, where) - mean_lab(image, where)).max() > DRIFT_WITHOUT_LOCK


def test_the_lock_keeps_the_refiners_fine_detail(refine_with_lock):
    image, mask = red_shirt_on_grey()
    where = interior(mask)
    locked = refine_with_lock(1.0, image, mask)
    # The composite is flat red; what the refiner drew inside it is still there after the lock.
    assert cv2.cvtColor(locked, cv2.COLOR_RGB2LAB)[where][:, 0].std() > 2.0


def test_stripes_wider_than_the_smoothing_keep_their_own_colours():
    rng = np.random.default_rng(0)
    reference = np.zeros((128, 128, 3), dtype=np.uint8)
    for start in range(0, 128, 32):
        reference[:, start : start + 16] = RED
        reference[:, start + 16 : start + 32] = BLUE
    mask = np.zeros((128, 128), dtype=bool)
    mask[8:120, 8:120] = True
    refined = np.clip(rng.normal(128, 30, reference.shape), 0, 255).astype(np.uint8)  # colour all gone
    locked = lock_colours(refined, reference, mask, strength=1.0)
    for colour, offset in ((RED, 0), (BLUE, 16)):
        stripe = np.zeros_like(mask)
        for start in range(offset, 128, 32):
            stripe[:, start + 4 : start + 12] = True  # the stripe's middle
        stripe &= mask
        assert np.abs(mean_lab(locked, stripe) - mean_lab(reference, stripe)).max() < 2 * LOCKED_TOLERANCE, colour


def test_the_lock_changes_nothing_outside_the_mask():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    refined = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), dtype=bool)
    mask[10:50, 20:60] = True
    locked = lock_colours(refined, reference, mask, strength=1.0)
    assert np.array_equal(locked[~mask], refined[~mask])
    assert not np.array_equal(locked[mask], refined[mask])


def test_a_lock_of_zero_returns_the_refined_pixels_as_they_are():
    rng = np.random.default_rng(2)
    reference = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    refined = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(lock_colours(refined, reference, np.ones((32, 32), dtype=bool), strength=0.0), refined)


def test_half_a_lock_moves_the_colour_about_half_way():
    reference = np.zeros((64, 64, 3), dtype=np.uint8)
    reference[:] = RED
    refined = np.full((64, 64, 3), 128, dtype=np.uint8)
    mask = np.ones((64, 64), dtype=bool)
    target, start = mean_lab(reference, mask), mean_lab(refined, mask)
    half = mean_lab(lock_colours(refined, reference, mask, strength=0.5), mask)
    fraction = (half - start)[1] / (target - start)[1]
    assert 0.4 < fraction < 0.6
