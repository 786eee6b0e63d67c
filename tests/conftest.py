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


# --- a real Ray + Serve application on loopback, started once per test session ----------------

SERVICE_KEY = "test-key-0123456789"
SERVICE_MAX_ONGOING = 1
SERVICE_MAX_QUEUED = 1


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """Ray started once for the whole session, with object spilling off (as production runs it)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    temp_dir = tmp_path_factory.mktemp("ray")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(temp_dir),
        _system_config={"automatic_object_spilling_enabled": False},
    )
    yield temp_dir
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model gains nothing from threads; on shared cores OpenMP spin-waiting makes 2 threads 3-10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clock():
    """A fake clock the store's retention can be driven with."""
    from pexir_tryon.store.testing import FakeClock

    return FakeClock()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture(scope="session")
def tiny_refiner_dir(tmp_path_factory):
    """The tiny random refiner in the real on-disk layout, built once per session (no download)."""
    from pexir_tryon.refine import MANIFEST_FILENAME
    from pexir_tryon.refine.synthetic import build_random_refiner

    path = tmp_path_factory.getbasetemp() / "tiny-refiner"
    if not (path / MANIFEST_FILENAME).is_file():
        build_random_refiner(path, "tiny")
    return path


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory, tiny_refiner_dir) -> dict:
    data_dir = tmp_path_factory.mktemp("service-data")
    return {
        "data_dir": str(data_dir),
        # All three stages run: the refiner is the tiny random model, kept cheap for 2 CPU cores.
        "refiner": {"model_dir": str(tiny_refiner_dir), "resolution": 64, "steps": 2},
        "api_keys": [SERVICE_KEY],
        "serve": {
            "max_ongoing_requests": SERVICE_MAX_ONGOING,
            "max_queued_requests": SERVICE_MAX_QUEUED,
            "stage_timeout_s": 60,
            "body_read_timeout_s": 5,  # lets the slow-client tests see a 408 quickly
        },
        "store": {"key_file": str(data_dir / "keys" / "blob.key")},
    }


@pytest.fixture(scope="session")
def fake_alibaba():
    """The loopback fake of DashScope + OSS (tests/fakes), shared by the session's Alibaba-backed app."""
    from fakes.dashscope import shared_fake

    return shared_fake().control


@pytest.fixture(scope="session")
def alibaba_service_settings(service_settings, fake_alibaba) -> dict:
    fake = fake_alibaba
    return {
        **service_settings,
        "backend": "alibaba",
        "alibaba": {
            "api_key": fake.api_key, "base_url": fake.base_url, "oss_endpoint": fake.oss_endpoint, "oss_bucket": fake.bucket,
            "oss_access_key_id": fake.oss_access_key_id, "oss_access_key_secret": fake.oss_access_key_secret,
            "poll_interval_s": 0.05, "poll_max_interval_s": 0.2, "deadline_s": 20.0, "http_timeout_s": 5.0,
        },
    }


@pytest.fixture(scope="session")
def service(ray_session, service_settings, alibaba_service_settings):
    """Deploys serve_config.yaml (the production description) with test settings; yields the base URL.

    A second application from the same YAML entry, configured with backend "alibaba" against the
    loopback fake, answers under /alibaba: the same HTTP request, the other backend.
    """
    import copy

    from pexir_tryon.config import Settings
    from pexir_tryon.serve.launch import deploy, load_config

    port = free_port()
    config = load_config(None, port=port, settings=Settings(**service_settings))
    app = config["applications"][0]
    alibaba_app = copy.deepcopy(app)
    app["args"]["settings"] = {**app["args"].get("settings", {}), **service_settings}
    app["args"]["stage_cpus"] = 0  # 2-core CI: let every replica schedule
    alibaba_app.update(name="tryon-alibaba", route_prefix="/alibaba")
    alibaba_app["args"]["settings"] = {**alibaba_app["args"].get("settings", {}), **alibaba_service_settings}
    alibaba_app["args"]["stage_cpus"] = 0
    alibaba_app["deployments"] = [d for d in alibaba_app.get("deployments", []) if d["name"] == "TryOnIngress"]
    config["applications"].append(alibaba_app)
    deploy(config, timeout_s=300)
    yield f"http://127.0.0.1:{port}"
