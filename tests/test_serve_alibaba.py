"""The same HTTP request served by the Alibaba Cloud backend (against the loopback fake), chosen by config."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from conftest import SERVICE_KEY
from pexir_tryon.images import encode_png
from pexir_tryon.samples import garment_sample, person_sample

pytestmark = pytest.mark.serve

HEADERS = {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": "alibaba-user"}


def post_tryon(base: str, **data):
    files = {
        "person": ("p.png", encode_png(person_sample("grace_hopper")), "image/png"),
        "garment": ("g.png", encode_png(garment_sample("tshirt")), "image/png"),
    }
    return httpx.post(f"{base}/v1/tryon", files=files, data=data, headers=HEADERS, timeout=120)


def test_the_same_request_is_served_by_the_alibaba_backend(service, fake_alibaba):
    fake_alibaba.reset()
    response = post_tryon(f"{service}/alibaba")
    assert response.status_code == 200, response.text
    assert response.headers["x-backend"] == "alibaba"
    assert Image.open(io.BytesIO(response.content)).size == (512, 600)
    assert fake_alibaba.task_list(), "the provider fake saw no task"
    assert fake_alibaba.bucket_objects() == [], "uploaded inputs were left in the bucket"


def test_the_local_app_answers_the_same_request_with_the_local_backend(service):
    response = post_tryon(service)
    assert response.status_code == 200 and response.headers["x-backend"] == "local"


def test_a_provider_rejection_maps_to_our_code_and_leaves_no_object(service, fake_alibaba):
    fake_alibaba.reset()
    fake_alibaba.task_failure = ("InvalidPerson", "The input image has no human body or multi human bodies.")
    try:
        response = post_tryon(f"{service}/alibaba")
    finally:
        fake_alibaba.task_failure = None
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("no_person_detected", "multiple_people")
    assert fake_alibaba.bucket_objects() == []


def test_the_api_key_never_reaches_the_client(service, fake_alibaba):
    fake_alibaba.reset()
    response = post_tryon(f"{service}/alibaba")
    assert fake_alibaba.api_key not in response.text and fake_alibaba.api_key not in str(response.headers)
    openapi = httpx.get(f"{service}/alibaba/openapi.json").text
    assert fake_alibaba.api_key not in openapi and fake_alibaba.oss_access_key_secret not in openapi
