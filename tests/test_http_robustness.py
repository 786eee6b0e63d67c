"""Every bad request to the running service answers a clear, typed 4xx: never a 500, a hang or a
dead replica. One test per case, over HTTP against the real Ray Serve app (`service`), each
asserting the status and the code; the last tests check that the replica is the same one and
still serves a normal try-on. A few in-process tests pin the body-limit machinery (slow bodies,
streamed bodies, per-file limits) without Ray, and the CLI is checked to print the same code as
the HTTP API for the same bad file.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from pexir_tryon.config import Settings
from pexir_tryon.errors import ERROR_KINDS
from pexir_tryon.images import encode_png
from pexir_tryon.samples import garment_sample, person_sample

from conftest import SERVICE_KEY
from fakes.image_files import encode, png_bomb, png_bytes

pytestmark = pytest.mark.serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def auth(user: str = "robust") -> dict:
    return {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": user}


# --- builders ------------------------------------------------------------------------------------


def hopper() -> np.ndarray:
    return person_sample("grace_hopper")


def sixteen_bit_rgb_png(rgb: np.ndarray) -> bytes:
    wide = rgb.astype(">u2") * 257
    return png_bytes(rgb.shape[1], rgb.shape[0], bit_depth=16, colour_type=2, raw=wide.tobytes())


def animated_gif() -> bytes:
    first = Image.fromarray(hopper())
    return encode(first, "GIF", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], duration=100, loop=0)


def can_encode_heic() -> bool:
    try:
        encode(Image.new("RGB", (64, 64)), "HEIF")
    except Exception:  # noqa: BLE001 - pillow-heif missing, or built without an HEVC encoder
        return False
    return True


def small_person_in_a_wide_frame() -> bytes:
    """The astronaut at full size on the left of a 4000x512 plain frame: detected, but her shoulders
    span ~4% of the photo's long side (the limit is 6%)."""
    photo = person_sample("astronaut")
    frame = np.pad(photo, ((0, 0), (0, 4000 - photo.shape[1]), (0, 0)), constant_values=200)
    return encode_png(np.ascontiguousarray(frame))


def garment_on_a_busy_background() -> bytes:
    garment = garment_sample("tshirt").copy()
    background = np.abs(garment.astype(int) - (244, 243, 240)).sum(axis=2) < 20
    noise = np.random.default_rng(1).integers(0, 256, size=garment.shape, dtype=np.uint8)
    garment[background] = noise[background]
    return encode_png(garment)


BAD_FILES = {  # name: (builder, HTTP status, code)
    "zero_bytes": (lambda: b"", 400, "invalid_image"),
    "truncated_jpeg": (lambda: encode(Image.fromarray(hopper()), "JPEG", quality=90)[:20000], 400, "invalid_image"),
    "truncated_png": (lambda: encode_png(hopper())[:30000], 400, "invalid_image"),
    "text": (lambda: b"just some text, not a photo\n" * 20, 400, "invalid_image"),
    "pdf": (lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", 400, "invalid_image"),
    "html": (lambda: b"<!doctype html><html><body><img src='photo.jpg'></body></html>", 400, "invalid_image"),
    "png_bomb_50000x50000": (lambda: png_bomb(50000, 50000), 413, "image_too_large"),
    "png_1x100000": (lambda: png_bomb(1, 100000), 413, "image_too_large"),
    "tiny_16x16": (lambda: encode(Image.new("RGB", (16, 16), (90, 120, 150)), "PNG"), 422, "image_too_small"),
    "animated_gif": (animated_gif, 415, "unsupported_image"),
    "tiff": (lambda: encode(Image.fromarray(hopper()), "TIFF"), 415, "unsupported_image"),
}

ACCEPTED_FILES = {  # name: builder; each is a real person photo the pipeline accepts
    "sixteen_bit_rgb_png": lambda: sixteen_bit_rgb_png(hopper()),
    "cmyk_jpeg": lambda: encode(Image.fromarray(hopper()).convert("CMYK"), "JPEG", quality=92),
    "palette_png_with_transparency": lambda: encode(
        Image.fromarray(hopper()).convert("P", palette=Image.Palette.ADAPTIVE, colors=255), "PNG", transparency=254),
    "grayscale_png": lambda: encode(Image.fromarray(person_sample("camera")).convert("L"), "PNG"),
    "rgba_png": lambda: encode(Image.fromarray(hopper()).convert("RGBA"), "PNG"),
    "heic": lambda: encode(Image.fromarray(hopper()), "HEIF", quality=90),
}


# --- HTTP helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service, timeout=180) as client:
        yield client


@pytest.fixture(scope="module")
def limits(service_settings) -> Settings:
    return Settings(**service_settings)


@pytest.fixture(scope="module")
def person_png() -> bytes:
    return encode_png(hopper())


@pytest.fixture(scope="module")
def tshirt_png() -> bytes:
    return encode_png(garment_sample("tshirt"))


def ingress_replicas() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "::tryon#TryOnIngress#" in a["name"]}


@pytest.fixture(scope="module")
def replicas_at_start(service):
    return ingress_replicas()


def tryon(client, person: bytes | None, garment: bytes, *, headers=None, person_name="person.png", person_type="image/png", **fields):
    files = {"garment": ("garment.png", garment, "image/png")}
    if person is not None:
        files["person"] = (person_name, person, person_type)
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/tryon", files=files, data=data, headers=headers if headers is not None else auth())


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and ERROR_KINDS[code].http_status == status
    return error


def assert_image_of_size(response: httpx.Response, size: tuple[int, int]) -> None:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == size


def raw_exchange(base_url: str, head: bytes, chunks, *, pause_s: float = 0.0, timeout_s: float = 60.0) -> tuple[int, dict, float]:
    """Send `head`, then `chunks` one by one (pausing between them), stopping as soon as the
    server answers; returns the status, the JSON body and the seconds until the answer."""
    url = urlparse(base_url)
    started = time.monotonic()
    reply = b""
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed
            sock.setblocking(False)
            try:
                reply = sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if reply:
                break
            if pause_s:
                time.sleep(pause_s)
        sock.settimeout(timeout_s)
        while True:
            head_part, _, body = reply.partition(b"\r\n\r\n")
            lengths = [line.split(b":", 1)[1] for line in head_part.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= int(lengths[0]):
                break
            more = sock.recv(65536)
            if not more:
                break
            reply += more
    elapsed = time.monotonic() - started
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), reply[:300]
    status = int(status_line.split()[1])
    body = rest.partition(b"\r\n\r\n")[2]
    try:
        return status, json.loads(body), elapsed
    except ValueError:
        return status, {"raw": body.decode("latin-1")}, elapsed


def multipart_head(base_url: str, path: str = "/v1/tryon", *, length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {urlparse(base_url).hostname}\r\nAuthorization: Bearer {SERVICE_KEY}\r\n"
        f"X-User-Id: robust\r\nContent-Type: multipart/form-data; boundary=xyz\r\n{framing}\r\n\r\n"
    ).encode()


def file_part_head(name: str) -> bytes:
    return f'--xyz\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()


def as_chunked(pieces, *, finish: bool = True):
    for piece in pieces:
        if piece:
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"
    if finish:
        yield b"0\r\n\r\n"


def zeros(total: int, step: int = 1 << 20):
    for start in range(0, total, step):
        yield bytes(min(step, total - start))


def test_the_ingress_replica_is_up(replicas_at_start):
    assert replicas_at_start, "no TryOnIngress replica of the 'tryon' app"


# --- bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_person_file_is_a_typed_error(client, tshirt_png, name):
    build, status, code = BAD_FILES[name]
    error = assert_error(tryon(client, build(), tshirt_png), status, code)
    assert "person" in error["message"]


def test_bad_garment_file_names_the_garment(client, person_png):
    error = assert_error(tryon(client, person_png, encode_png(garment_sample("tshirt"))[:5000]), 400, "invalid_image")
    assert "garment" in error["message"]


def test_upload_of_a_bad_file_is_the_same_typed_error(client):
    response = client.post("/v1/uploads", files={"person": ("p.png", png_bomb(50000, 50000), "image/png")}, headers=auth())
    assert_error(response, 413, "image_too_large")


def test_valid_png_with_a_wrong_name_and_content_type_is_accepted(client, person_png, tshirt_png):
    """The bytes count, not what the client calls them."""
    response = tryon(client, person_png, tshirt_png, person_name="cv.pdf", person_type="application/pdf")
    assert_image_of_size(response, (512, 600))


@pytest.mark.parametrize("name", list(ACCEPTED_FILES))
def test_awkward_but_valid_person_photo_is_accepted(client, tshirt_png, name):
    if name == "heic" and not can_encode_heic():
        pytest.skip("pillow-heif here cannot encode HEIC (no HEVC encoder)")
    data = ACCEPTED_FILES[name]()
    size = Image.open(io.BytesIO(data)).size
    assert_image_of_size(tryon(client, data, tshirt_png), size)


# --- content ---------------------------------------------------------------------------------------


def test_person_too_small_in_the_frame(client, tshirt_png):
    assert_error(tryon(client, small_person_in_a_wide_frame(), tshirt_png), 422, "person_too_small")


def test_photo_without_a_person(client, tshirt_png):
    import skimage.data

    assert_error(tryon(client, encode_png(skimage.data.coffee()), tshirt_png), 422, "no_person_detected")


def test_photo_with_several_people(client, tshirt_png):
    photo = hopper()
    pair = np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))
    assert_error(tryon(client, encode_png(pair), tshirt_png), 422, "multiple_people")


@pytest.mark.parametrize("sample", ["grace_hopper", "astronaut"])
def test_garment_photo_of_a_person_wearing_clothes(client, person_png, sample):
    assert_error(tryon(client, person_png, encode_png(person_sample(sample))), 422, "garment_photo_has_person")


def test_garment_on_a_busy_background(client, person_png):
    assert_error(tryon(client, person_png, garment_on_a_busy_background()), 422, "garment_background_not_plain")


def test_no_garment_at_all(client, person_png):
    assert_error(tryon(client, person_png, encode_png(np.full((400, 300, 3), 240, np.uint8))), 422, "garment_not_found")


@pytest.mark.parametrize("garment, category", [("trousers", "upper"), ("trousers", "dress"), ("longsleeve", "lower")])
def test_category_contradicting_the_garment(client, person_png, garment, category):
    assert_error(tryon(client, person_png, encode_png(garment_sample(garment)), category=category), 422, "category_mismatch")


# --- request fields --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no_garment", "no_person_nor_upload_id", "empty_form", "json_body", "person_as_text_field"])
def test_missing_fields_are_invalid_request(client, person_png, tshirt_png, case):
    if case == "no_garment":
        response = client.post("/v1/tryon", files={"person": ("p.png", person_png, "image/png")}, headers=auth())
    elif case == "no_person_nor_upload_id":
        response = client.post("/v1/tryon", files={"garment": ("g.png", tshirt_png, "image/png")}, headers=auth())
    elif case == "empty_form":
        response = client.post("/v1/tryon", files={}, data={"category": "auto"}, headers=auth())
    elif case == "json_body":
        response = client.post("/v1/tryon", json={"person": "x", "garment": "y"}, headers=auth())
    else:
        response = client.post("/v1/tryon", data={"person": "not a file"}, files={"garment": ("g.png", tshirt_png, "image/png")}, headers=auth())
    assert_error(response, 422, "invalid_request")


def test_unknown_category_is_unsupported_category(client, person_png, tshirt_png):
    error = assert_error(tryon(client, person_png, tshirt_png, category="hat"), 422, "unsupported_category")
    assert "category" in error["message"]


@pytest.mark.parametrize("field, value", [("seed", -1), ("seed", 2**32), ("seed", "abc"), ("steps", 0), ("steps", 201), ("steps", 51), ("steps", "1.5")])
def test_seed_or_steps_out_of_range_is_invalid_request(client, person_png, tshirt_png, field, value):
    error = assert_error(tryon(client, person_png, tshirt_png, **{field: value}), 422, "invalid_request")
    assert field in error["message"]


def test_both_person_and_upload_id_is_invalid_request(client, person_png, tshirt_png):
    assert_error(tryon(client, person_png, tshirt_png, person_upload_id="upl_anything"), 422, "invalid_request")


def test_two_person_files_are_refused_not_resolved_to_one(client, person_png, tshirt_png):
    files = [("person", ("a.png", person_png, "image/png")), ("person", ("b.png", encode_png(person_sample("astronaut")), "image/png")),
             ("garment", ("g.png", tshirt_png, "image/png"))]
    error = assert_error(client.post("/v1/tryon", files=files, headers=auth()), 422, "invalid_request")
    assert "'person' was sent 2 times" in error["message"]


def test_an_upload_of_two_person_files_is_refused(client, person_png):
    files = [("person", ("a.png", person_png, "image/png")), ("person", ("b.png", person_png, "image/png"))]
    error = assert_error(client.post("/v1/uploads", files=files, headers=auth()), 422, "invalid_request")
    assert "'person' was sent 2 times" in error["message"]


def test_a_form_urlencoded_body_is_told_to_send_multipart(client):
    error = assert_error(client.post("/v1/tryon", data={"person": "x", "garment": "y"}, headers=auth()), 422, "invalid_request")
    assert "multipart/form-data" in error["message"]


def test_a_json_body_is_told_to_send_multipart(client):
    error = assert_error(client.post("/v1/tryon", json={"person": "x"}, headers=auth()), 422, "invalid_request")
    assert "multipart/form-data" in error["message"] and "application/json" in error["message"]


def test_a_text_value_in_a_file_field_is_told_to_send_a_file(client, tshirt_png):
    response = client.post("/v1/tryon", data={"person": "hello"}, files={"garment": ("g.png", tshirt_png, "image/png")}, headers=auth())
    error = assert_error(response, 422, "invalid_request")
    assert "'person': send a file" in error["message"]


def test_the_wrong_method_is_405_with_the_allowed_ones(client):
    response = client.get("/v1/tryon", headers=auth())
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_head_on_the_health_routes_is_answered(client):
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 200


def test_accept_q_values_are_honoured(client, person_png, tshirt_png):
    response = tryon(client, person_png, tshirt_png, headers={**auth(), "Accept": "image/jpeg;q=0.5, image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_an_accept_nothing_can_answer_is_406_before_any_work(client, person_png, tshirt_png):
    response = tryon(client, person_png, tshirt_png, headers={**auth(), "Accept": "text/html"})
    error = assert_error(response, 406, "not_acceptable")
    assert "image/png" in error["message"]
    assert "x-result-id" not in response.headers


def test_a_result_can_be_fetched_as_json(client, person_png, tshirt_png):
    made = tryon(client, person_png, tshirt_png)
    assert made.status_code == 200, made.text[:300]
    fetched = client.get(f"/v1/results/{made.headers['x-result-id']}", headers={**auth(), "Accept": "application/json"})
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "application/json"
    body = fetched.json()
    assert body["result_id"] == made.headers["x-result-id"] and body["content_type"] == "image/png"
    assert base64.b64decode(body["image_base64"]) == made.content


def test_unauthorized_says_how_to_authenticate(client):
    response = client.get("/v1/results/res_x", headers={"X-User-Id": "robust"})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_someone_elses_upload_id_is_not_found(client, person_png, tshirt_png):
    upload = client.post("/v1/uploads", files={"person": ("p.png", person_png, "image/png")}, headers=auth("robust-owner"))
    assert upload.status_code == 200, upload.text
    upload_id = upload.json()["upload_id"]
    assert_error(tryon(client, None, tshirt_png, headers=auth("robust-other"), person_upload_id=upload_id), 404, "not_found")


def test_deleted_upload_id_is_not_found(client, person_png, tshirt_png):
    user = "robust-leaver"
    upload_id = client.post("/v1/uploads", files={"person": ("p.png", person_png, "image/png")}, headers=auth(user)).json()["upload_id"]
    assert client.delete(f"/v1/users/{user}", headers=auth(user)).status_code == 200
    assert_error(tryon(client, None, tshirt_png, headers=auth(user), person_upload_id=upload_id), 404, "not_found")


@pytest.mark.parametrize("user", ["", "a b", "x" * 129, "ünïcode", "../etc"])
def test_bad_user_id_header_is_refused(client, user):
    response = client.get("/v1/results/res_x", headers={"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": user.encode("utf-8")})
    assert_error(response, 401 if user == "" else 422, "unauthorized" if user == "" else "invalid_request")


# --- the HTTP framing: headers, bodies, slow clients ------------------------------------------------


@pytest.mark.parametrize("size", [20_000, 1_000_000])
def test_over_long_header_is_431_from_the_ingress(client, size):
    """Serve's proxy (uvicorn) passes long headers through; the ingress answers 431 header_too_large."""
    assert_error(client.get("/healthz", headers={"X-Padding": "a" * size}), 431, "header_too_large")


def test_malformed_http_is_the_proxys_plain_400(service):
    """A Content-Length that is not a number never reaches the app: the proxy answers 400 itself."""
    head = (f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE_KEY}\r\nX-User-Id: robust\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: abc\r\n\r\n").encode()
    status, _, _ = raw_exchange(service, head, [])
    assert status == 400


def test_one_file_over_the_upload_limit_is_refused_as_it_streams_in(service, limits):
    """No Content-Length, and the client then stops sending without ending the body: the file is
    refused as soon as it passes the per-file limit, not after the whole body (which never comes)."""
    size = limits.images.max_upload_bytes + (1 << 20)
    assert size < limits.images.max_request_bytes
    chunks = as_chunked([file_part_head("person"), *zeros(size)], finish=False)
    status, body, elapsed = raw_exchange(service, multipart_head(service), chunks, timeout_s=limits.serve.body_read_timeout_s + 30)
    assert (status, body["error"]["code"]) == (413, "image_too_large"), body
    assert "person" in body["error"]["message"]
    assert elapsed < limits.serve.body_read_timeout_s


def test_one_file_over_the_upload_limit_with_content_length_is_image_too_large(client, limits, person_png):
    too_big = b"\x89PNG" + bytes(limits.images.max_upload_bytes)
    response = client.post("/v1/tryon", files={"garment": ("g.png", too_big, "image/png"), "person": ("p.png", person_png, "image/png")}, headers=auth())
    error = assert_error(response, 413, "image_too_large")
    assert "garment" in error["message"]


def test_chunked_body_over_the_request_limit_is_payload_too_large(service, limits):
    """No Content-Length to refuse up front: the body is counted as it arrives. Every file is under
    the per-file limit; together they are over the request limit."""
    part = limits.images.max_upload_bytes - (1 << 20)
    count = limits.images.max_request_bytes // part + 1
    pieces = []
    for index in range(count):
        pieces += [file_part_head(f"file{index}"), *zeros(part), b"\r\n"]
    status, body, _ = raw_exchange(service, multipart_head(service), as_chunked(pieces + [b"--xyz--\r\n"]))
    assert (status, body["error"]["code"]) == (413, "payload_too_large"), body


def _needs_short_body_timeout(limits: Settings) -> None:
    if limits.serve.body_read_timeout_s > 5:
        pytest.skip(
            f"serve.body_read_timeout_s is {limits.serve.body_read_timeout_s:g} s in the service fixture; add "
            "'body_read_timeout_s': 2 to service_settings['serve'] in tests/conftest.py to test slow clients over HTTP "
            "(test_slow_body_is_request_timeout_in_process covers the middleware meanwhile)"
        )


def test_slow_client_trickling_the_body_is_request_timeout(service, limits):
    _needs_short_body_timeout(limits)
    timeout = limits.serve.body_read_timeout_s
    body = file_part_head("person") + bytes(4000)
    head = multipart_head(service, length=len(body) + 100)
    status, answer, elapsed = raw_exchange(service, head, [body[i:i + 20] for i in range(0, len(body), 20)], pause_s=0.2, timeout_s=timeout + 30)
    assert (status, answer["error"]["code"]) == (408, "request_timeout"), answer
    assert elapsed < timeout + 15


def test_client_that_stops_sending_is_request_timeout(service, limits):
    _needs_short_body_timeout(limits)
    timeout = limits.serve.body_read_timeout_s
    status, answer, elapsed = raw_exchange(service, multipart_head(service, length=10_000), [file_part_head("person")], timeout_s=timeout + 30)
    assert (status, answer["error"]["code"]) == (408, "request_timeout"), answer
    assert elapsed < timeout + 15


# --- the CLI prints the code the HTTP API answers for the same file ---------------------------------


CLI_CASES = ["zero_bytes", "truncated_jpeg", "text", "png_1x100000", "tiny_16x16", "animated_gif"]  # each code once or more


def test_cli_prints_the_same_code_as_the_http_api(client, tshirt_png, tmp_path):
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env = {k: v for k, v in env.items() if not k.startswith("PEXIR_")}  # the CLI on its defaults, as the service's image limits
    runs = {}
    for name in CLI_CASES:
        path = tmp_path / f"{name}.img"
        path.write_bytes(BAD_FILES[name][0]())
        argv = [sys.executable, "-m", "pexir_tryon.cli", "run", str(path), "sample:tshirt", "-o", str(tmp_path / f"{name}.png")]
        runs[name] = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    http_codes = {name: tryon(client, (tmp_path / f"{name}.img").read_bytes(), tshirt_png).json()["error"]["code"] for name in CLI_CASES}
    for name, process in runs.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (name, stderr[-500:])
        lines = [line for line in stderr.splitlines() if line.startswith("error[")]
        assert lines, (name, stderr[-500:])
        assert lines[-1].startswith(f"error[{http_codes[name]}]: "), (name, http_codes[name], lines[-1])


# --- in-process: the limits machinery without Ray -------------------------------------------------


def _limited_app(max_body: int, body_timeout_s: float):
    from fastapi import FastAPI, File, UploadFile

    from pexir_tryon.serve.http_limits import RequestLimitsMiddleware

    app = FastAPI()

    @app.post("/upload")
    async def upload(person: UploadFile = File(...)):
        return {"bytes": len(await person.read())}

    app.add_middleware(RequestLimitsMiddleware, limits=lambda scope: (max_body, 16384, body_timeout_s))
    return app


async def _drive(app, body_chunks, *, stall_after: bool, chunked: bool = True, length: int | None = None):
    """Run one request through `app` as Serve would; returns the messages the app sent."""
    headers = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/upload", "raw_path": b"/upload", "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    pending = list(body_chunks)
    sent = []

    async def receive():
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending) or stall_after}
        if stall_after:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 30)
    return sent


def _answer(sent) -> tuple[int, dict]:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent  # one response, nothing sent after the refusal
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], json.loads(body)


def test_slow_body_is_request_timeout_in_process():
    app = _limited_app(10_000, 0.3)
    started = time.monotonic()
    sent = asyncio.run(_drive(app, [file_part_head("person") + b"\x89PNG"], stall_after=True))
    status, body = _answer(sent)
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    assert time.monotonic() - started < 5


def test_streamed_body_over_the_limit_is_payload_too_large_in_process():
    app = _limited_app(10_000, 5)
    sent = asyncio.run(_drive(app, [file_part_head("person")] + [bytes(1000)] * 20, stall_after=False))
    status, body = _answer(sent)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


def test_declared_length_over_the_limit_is_refused_before_reading_in_process():
    app = _limited_app(10_000, 5)
    sent = asyncio.run(_drive(app, [], stall_after=True, length=10_001))
    status, body = _answer(sent)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


def test_bounded_parser_refuses_a_file_as_it_streams_in():
    from starlette.datastructures import Headers

    from pexir_tryon.errors import TryOnError
    from pexir_tryon.serve.http_limits import BoundedMultiPartParser

    consumed = 0

    async def stream():
        nonlocal consumed
        for chunk in [file_part_head("garment")] + [bytes(4096)] * 1000:
            consumed += len(chunk)
            yield chunk

    parser = BoundedMultiPartParser(Headers({"content-type": "multipart/form-data; boundary=xyz"}), stream())
    parser.max_file_bytes = 10_000
    with pytest.raises(TryOnError) as caught:
        asyncio.run(parser.parse())
    assert caught.value.code == "image_too_large" and "garment" in caught.value.message
    assert consumed < 10_000 + 3 * 4096


def test_limits_follow_the_app_serving_the_request():
    """Serve runs a pickled copy of the FastAPI app; the limits come from that copy's ingress."""
    from types import SimpleNamespace

    from pexir_tryon.serve.ingress import _current_limits

    settings = Settings(serve={"body_read_timeout_s": 2.5, "max_header_bytes": 999}, images={"max_request_bytes": 12345})
    served = SimpleNamespace(state=SimpleNamespace(ingress=SimpleNamespace(settings=settings)))
    assert _current_limits({"app": served}) == (12345, 999, 2.5)


# --- after all of the above: the same replica still serves ------------------------------------------


def test_zz_the_replica_survived_and_still_serves_a_try_on(client, person_png, tshirt_png, replicas_at_start):
    assert_image_of_size(tryon(client, person_png, tshirt_png), (512, 600))
    assert client.get("/readyz").status_code == 200
    assert ingress_replicas() == replicas_at_start, "the TryOnIngress replica was replaced during the run"
