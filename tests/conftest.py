"""Shared fixtures: settings, the stage objects (loaded once per session), sample photos."""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import pytest

from pexir_tryon.config import Settings
from pexir_tryon.samples import garment_sample, person_sample


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def detector(settings):
    from pexir_tryon.geometry import GeometryDetector

    detector = GeometryDetector(settings.geometry, settings.images)
    yield detector
    detector.close()


@pytest.fixture(scope="session")
def warper(settings):
    from pexir_tryon.garment import GarmentWarper

    return GarmentWarper(settings.garment, settings.images, device="cpu")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return {name: person_sample(name) for name in ("astronaut", "grace_hopper", "camera")}


@pytest.fixture(scope="session")
def geometries(detector, photos):
    return {name: detector.detect(image) for name, image in photos.items()}


@pytest.fixture(scope="session")
def garments() -> dict[str, np.ndarray]:
    from pexir_tryon.samples import GARMENT_SAMPLES

    return {name: garment_sample(name) for name in GARMENT_SAMPLES}
