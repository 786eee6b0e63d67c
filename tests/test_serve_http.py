"""The HTTP API over a real Ray Serve application on loopback, called with a real HTTP client."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from pexir_tryon.images import encode_png
from pexir_tryon.samples import garment_sample, person_sample

from conftest import SERVICE_KEY

pytestmark = pytest.mark.serve


def auth(user: str = "alice") -> dict:
    return {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": user}


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service, timeout=180) as client:
        yield client


@pytest.fixture(scope="module")
def person_png() -> bytes:
    return encode_png(person_sample("grace_hopper"))


@pytest.fixture(scope="module")
def tshirt_png() -> bytes:
    return encode_png(garment_sample("tshirt"))


def tryon(client, person: bytes | None, garment: bytes, headers=None, **fields):
    files = {"garment": ("garment.png", garment, "image/png")}
    if person is not None:
        files["person"] = ("person.png", person, "image/png")
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/tryon", files=files, data=data, headers=headers if headers is not None else auth())


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


# --- the happy path ----------------------------------------------------------------------------

def test_tryon_on_a_real_photo_returns_a_png_of_the_photos_size(client, person_png, tshirt_png):
    response = tryon(client, person_png, tshirt_png)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (512, 600)


def test_tryon_reports_result_id_expiry_and_per_stage_timing(client, person_png, tshirt_png):
    response = tryon(client, person_png, tshirt_png)
    assert response.headers["x-result-id"]
    assert response.headers["x-expires-at"].endswith("Z")
    timing = response.headers["server-timing"]
    assert all(f"{stage};dur=" in timing for stage in ("geometry", "warp", "refine", "total"))


def test_tryon_answers_jpeg_when_asked(client, person_png, tshirt_png):
    response = tryon(client, person_png, tshirt_png, headers={**auth(), "Accept": "image/jpeg"})
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"


def test_tryon_answers_json_with_the_image_as_base64(client, person_png, tshirt_png):
    response = tryon(client, person_png, tshirt_png, headers={**auth(), "Accept": "application/json"})
    body = response.json()
    assert body["category"] == "upper" and body["backend"] == "local" and body["refined"] is True
    assert (body["width"], body["height"]) == (512, 600)
    assert Image.open(io.BytesIO(base64.b64decode(body["image_base64"]))).size == (512, 600)
    assert body["result_id"] == response.headers["x-result-id"]


def test_an_upload_is_reused_for_two_garments(client, person_png, tshirt_png):
    upload = client.post("/v1/uploads", files={"person": ("p.png", person_png, "image/png")}, headers=auth())
    assert upload.status_code == 200, upload.text
    upload_id = upload.json()["upload_id"]
    first = tryon(client, None, tshirt_png, person_upload_id=upload_id)
    second = tryon(client, None, encode_png(garment_sample("longsleeve")), person_upload_id=upload_id)
    assert first.status_code == second.status_code == 200
    assert first.content != second.content


def test_a_result_can_be_fetched_saved_and_deleted_by_its_owner(client, person_png, tshirt_png):
    result_id = tryon(client, person_png, tshirt_png).headers["x-result-id"]
    fetched = client.get(f"/v1/results/{result_id}", headers=auth())
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    saved = client.post(f"/v1/results/{result_id}/save", headers=auth())
    assert saved.status_code == 200 and saved.json()["saved"] is True and saved.json()["expires_at"] is None
    assert client.delete(f"/v1/results/{result_id}", headers=auth()).status_code == 204
    assert_error(client.get(f"/v1/results/{result_id}", headers=auth()), 404, "not_found")


def test_health_and_readiness(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["stages"]) >= {"geometry", "warp", "refine"}


def test_openapi_page_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/tryon", "/v1/uploads", "/v1/results/{result_id}", "/v1/results/{result_id}/save",
                 "/v1/users/{user_id}", "/v1/users/{user_id}/export", "/healthz", "/readyz"):
        assert path in paths


# --- auth and isolation ---------------------------------------------------------------------

def test_missing_key_is_unauthorized(client, person_png, tshirt_png):
    assert_error(tryon(client, person_png, tshirt_png, headers={"X-User-Id": "alice"}), 401, "unauthorized")


def test_wrong_key_is_unauthorized(client, person_png, tshirt_png):
    headers = {"Authorization": "Bearer nope", "X-User-Id": "alice"}
    assert_error(tryon(client, person_png, tshirt_png, headers=headers), 401, "unauthorized")


def test_missing_user_id_is_unauthorized(client, person_png, tshirt_png):
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    assert_error(tryon(client, person_png, tshirt_png, headers=headers), 401, "unauthorized")


def test_another_users_result_is_not_found(client, person_png, tshirt_png):
    result_id = tryon(client, person_png, tshirt_png, headers=auth("alice")).headers["x-result-id"]
    assert_error(client.get(f"/v1/results/{result_id}", headers=auth("mallory")), 404, "not_found")
    assert_error(client.delete(f"/v1/results/{result_id}", headers=auth("mallory")), 404, "not_found")
    assert client.get(f"/v1/results/{result_id}", headers=auth("alice")).status_code == 200


def test_another_users_upload_is_not_found(client, person_png, tshirt_png):
    upload_id = client.post("/v1/uploads", files={"person": ("p.png", person_png, "image/png")}, headers=auth("alice")).json()["upload_id"]
    assert_error(tryon(client, None, tshirt_png, headers=auth("mallory"), person_upload_id=upload_id), 404, "not_found")


def test_a_user_cannot_purge_or_export_someone_else(client):
    assert_error(client.delete("/v1/users/alice", headers=auth("mallory")), 404, "not_found")
    assert_error(client.get("/v1/users/alice/export", headers=auth("mallory")), 404, "not_found")


# --- error codes ----------------------------------------------------------------------------

def test_not_an_image_is_invalid_image(client, tshirt_png):
    assert_error(tryon(client, b"hello, not a photo", tshirt_png), 400, "invalid_image")


def test_photo_without_a_person_is_no_person_detected(client, tshirt_png):
    import skimage.data

    assert_error(tryon(client, encode_png(skimage.data.coffee()), tshirt_png), 422, "no_person_detected")


def test_two_people_is_multiple_people(client, tshirt_png):
    photo = person_sample("grace_hopper")
    pair = np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))
    assert_error(tryon(client, encode_png(pair), tshirt_png), 422, "multiple_people")


def test_trousers_on_a_waist_up_photo_is_body_region_not_visible(client, person_png):
    assert_error(tryon(client, person_png, encode_png(garment_sample("trousers"))), 422, "body_region_not_visible")


def test_blank_garment_photo_is_garment_not_found(client, person_png):
    assert_error(tryon(client, person_png, encode_png(np.full((400, 300, 3), 240, np.uint8))), 422, "garment_not_found")


def test_category_contradicting_the_garment_is_category_mismatch(client, person_png):
    assert_error(tryon(client, person_png, encode_png(garment_sample("trousers")), category="upper"), 422, "category_mismatch")


def test_missing_garment_is_invalid_request(client, person_png):
    response = client.post("/v1/tryon", files={"person": ("p.png", person_png, "image/png")}, headers=auth())
    assert_error(response, 422, "invalid_request")


def test_both_person_and_upload_id_is_invalid_request(client, person_png, tshirt_png):
    assert_error(tryon(client, person_png, tshirt_png, person_upload_id="upl_x"), 422, "invalid_request")


def test_seed_out_of_range_is_invalid_request(client, person_png, tshirt_png):
    assert_error(tryon(client, person_png, tshirt_png, seed=-1), 422, "invalid_request")


def test_steps_out_of_range_is_invalid_request(client, person_png, tshirt_png):
    assert_error(tryon(client, person_png, tshirt_png, steps=100000), 422, "invalid_request")


def test_unknown_upload_id_is_not_found(client, tshirt_png):
    assert_error(tryon(client, None, tshirt_png, person_upload_id="upl_doesnotexist"), 404, "not_found")


def test_choosing_a_backend_the_config_does_not_allow_is_refused(client, person_png, tshirt_png):
    assert_error(tryon(client, person_png, tshirt_png, backend="alibaba"), 403, "backend_not_allowed")


def test_body_over_the_limit_is_refused_before_it_is_read(client, service_settings):
    from pexir_tryon.config import Settings

    import json
    import socket
    from urllib.parse import urlparse

    limit = Settings(**service_settings).images.max_request_bytes
    url = urlparse(str(client.base_url))
    head = (
        f"POST /v1/tryon HTTP/1.1\r\nHost: {url.hostname}\r\nAuthorization: Bearer {SERVICE_KEY}\r\nX-User-Id: alice\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {limit + 1}\r\n\r\n--x\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head.encode())  # declares more than the limit, sends almost nothing
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 413 " in status_line, reply[:300]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"


def test_over_long_header_is_refused(client):
    response = client.get("/healthz", headers={"X-Padding": "a" * 20000})
    assert response.status_code in (400, 431)
    if response.status_code == 431:
        assert response.json()["error"]["code"] == "header_too_large"


def test_unknown_route_is_not_found(client):
    assert_error(client.get("/v1/nothing-here", headers=auth()), 404, "not_found")


# --- load and failures ------------------------------------------------------------------------

def test_overload_answers_503_with_retry_after(service, person_png, tshirt_png):
    async def burst():
        async with httpx.AsyncClient(base_url=service, timeout=180) as client:
            files = {"person": ("p.png", person_png, "image/png"), "garment": ("g.png", tshirt_png, "image/png")}
            return await asyncio.gather(*[client.post("/v1/tryon", files=files, headers=auth()) for _ in range(8)])

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 503 in statuses, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert all(r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) > 0 for r in rejected)


def test_a_bad_request_does_not_fail_the_good_ones_beside_it(service, person_png, tshirt_png):
    async def mixed():
        async with httpx.AsyncClient(base_url=service, timeout=180) as client:
            good = {"person": ("p.png", person_png, "image/png"), "garment": ("g.png", tshirt_png, "image/png")}
            bad = {"person": ("p.png", encode_png(np.full((300, 300, 3), 90, np.uint8)), "image/png"), "garment": ("g.png", tshirt_png, "image/png")}
            return await asyncio.gather(client.post("/v1/tryon", files=good, headers=auth()), client.post("/v1/tryon", files=bad, headers=auth()))

    good, bad = asyncio.run(mixed())
    assert good.status_code in (200, 503)  # 503 only if the tiny test capacity is momentarily full
    assert bad.status_code == 422 or bad.status_code == 503


def test_a_killed_stage_replica_answers_with_a_code_and_is_replaced(client, person_png, tshirt_png):
    import time

    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "GarmentWarper" in a["name"]]
    assert replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    first = tryon(client, person_png, tshirt_png)
    assert first.status_code in (200, 503), first.text
    if first.status_code == 503:
        assert first.json()["error"]["code"] in ("stage_unavailable", "overloaded")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if tryon(client, person_png, tshirt_png).status_code == 200:
            return
        time.sleep(2)
    pytest.fail("the stage was not replaced within 120 s")


# --- purge and export -------------------------------------------------------------------------

def test_export_holds_exactly_the_users_saved_and_unexpired_results(client, person_png, tshirt_png):
    import json
    import zipfile

    user = "exporter"
    ids = {tryon(client, person_png, tshirt_png, headers=auth(user)).headers["x-result-id"] for _ in range(2)}
    tryon(client, person_png, tshirt_png, headers=auth("someone-else"))
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/users/{user}/export", headers=auth(user)).content))
    results = {name.split("/")[1].rsplit(".", 1)[0] for name in archive.namelist() if name.startswith("results/")}
    assert results == ids
    records = json.loads(archive.read("records.json"))
    assert records and "someone-else" not in json.dumps(records)


def test_purging_a_user_removes_their_results_and_uploads(client, person_png, tshirt_png):
    user = "leaver"
    result_id = tryon(client, person_png, tshirt_png, headers=auth(user)).headers["x-result-id"]
    upload_id = client.post("/v1/uploads", files={"person": ("p.png", person_png, "image/png")}, headers=auth(user)).json()["upload_id"]
    report = client.delete(f"/v1/users/{user}", headers=auth(user))
    assert report.status_code == 200, report.text
    assert report.json()["results"] >= 1 and report.json()["uploads"] >= 1
    assert_error(client.get(f"/v1/results/{result_id}", headers=auth(user)), 404, "not_found")
    assert_error(tryon(client, None, tshirt_png, headers=auth(user), person_upload_id=upload_id), 404, "not_found")


def test_a_client_chosen_request_id_cannot_collide_with_the_audit_id(client, person_png, tshirt_png):
    headers = {**auth(), "X-Request-Id": "same-id-every-time"}
    first = tryon(client, person_png, tshirt_png, headers=headers)
    second = tryon(client, person_png, tshirt_png, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-tryon-request-id"] != second.headers["x-tryon-request-id"]
