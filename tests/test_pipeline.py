"""The stage order in-process: the library API the CLI and batch jobs use."""

from __future__ import annotations

import numpy as np
import pytest

from pexir_tryon.backends.base import TryOnJob
from pexir_tryon.errors import TryOnError
from pexir_tryon.pipeline import InProcessStages, TryOnPipeline


@pytest.fixture(scope="module")
def pipeline(detector, warper):
    return TryOnPipeline(InProcessStages(detector=detector, warper=warper))


def test_pipeline_returns_the_photo_size_category_and_stage_timings(pipeline, photos, garments):
    result = pipeline(photos["astronaut"], garments["dress"])
    assert result.image.shape == photos["astronaut"].shape
    assert result.category == "dress"
    assert set(result.timings_s) == {"geometry", "warp"}
    assert result.refined is False


def test_run_batch_keeps_going_past_a_failed_row(pipeline, photos, garments):
    jobs = [
        TryOnJob("a", "u", photos["astronaut"], garments["trousers"]),
        TryOnJob("b", "u", photos["grace_hopper"], garments["tshirt"]),
        TryOnJob("c", "u", photos["grace_hopper"], photos["astronaut"]),
    ]
    results = pipeline.run_batch(jobs)
    assert isinstance(results[0], TryOnError) and results[0].code == "body_region_not_visible"
    assert results[1].image.shape == photos["grace_hopper"].shape
    assert isinstance(results[2], TryOnError) and results[2].code == "garment_photo_has_person"


def test_the_same_inputs_give_the_same_image(pipeline, photos, garments):
    first = pipeline(photos["camera"], garments["tshirt_striped"], seed=3)
    second = pipeline(photos["camera"], garments["tshirt_striped"], seed=3)
    assert np.array_equal(first.image, second.image)


@pytest.fixture(scope="module")
def refined_pipeline(detector, warper, tiny_refiner_dir):
    from pexir_tryon.config import RefinerSettings
    from pexir_tryon.refine import DiffusionRefiner, load_refiner_model

    settings = RefinerSettings(model_dir=tiny_refiner_dir, resolution=64, steps=2)
    refiner = DiffusionRefiner(load_refiner_model(tiny_refiner_dir, "cpu", settings), settings)
    return TryOnPipeline(InProcessStages(detector=detector, warper=warper, refiner=refiner))


def test_with_a_refiner_all_three_stages_run_and_the_face_is_kept(refined_pipeline, pipeline, photos, garments, geometries):
    result = refined_pipeline(photos["grace_hopper"], garments["tshirt"], seed=1)
    assert result.refined and set(result.timings_s) == {"geometry", "warp", "refine"}
    assert result.image.shape == photos["grace_hopper"].shape
    x0, y0, x1, y1 = (int(round(v)) for v in geometries["grace_hopper"].face_box)
    assert np.array_equal(result.image[y0:y1, x0:x1], photos["grace_hopper"][y0:y1, x0:x1])
    unrefined = pipeline(photos["grace_hopper"], garments["tshirt"], seed=1)
    assert not np.array_equal(result.image, unrefined.image)  # the refiner did repaint the garment
