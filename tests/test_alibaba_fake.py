"""The loopback fake itself follows the contract (§14), so tests built on it mean something."""

from __future__ import annotations

import datetime
import io

import httpx
import pytest
from PIL import Image

try:
    from tests.fakes.dashscope import fake_dashscope  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover
    from fakes.dashscope import fake_dashscope  # noqa: F401

SUBMIT = "/services/aigc/image2image/image-synthesis"


def _jpeg(w=300, h=400) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((w, h), 40).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _auth(fake, **extra):
    return {"Authorization": f"Bearer {fake.api_key}", **extra}


def _body(person="https://example.invalid/p.jpg", top="https://example.invalid/g.jpg", model="aitryon-plus", **params):
    inp = {"person_image_url": person}
    if top:
        inp["top_garment_url"] = top
    return {"model": model, "input": inp, "parameters": params}


@pytest.fixture
def client():
    with httpx.Client(timeout=5) as c:
        yield c


def test_auth_and_async_header(fake_dashscope, client):
    fake = fake_dashscope
    r = client.post(fake.base_url + SUBMIT, json=_body())
    assert (r.status_code, r.json()["code"], r.json()["message"]) == (401, "InvalidApiKey", "No API-key provided.")
    r = client.post(fake.base_url + SUBMIT, json=_body(), headers={"Authorization": "Bearer sk-nope", "X-DashScope-Async": "enable"})
    assert (r.status_code, r.json()["message"]) == (401, "Invalid API-key provided.")
    r = client.post(fake.base_url + SUBMIT, json=_body(), headers=_auth(fake))
    assert (r.status_code, r.json()["code"]) == (403, "AccessDenied")
    assert "synchronous" in r.json()["message"]


@pytest.mark.parametrize("path", [SUBMIT, SUBMIT + "/"])
def test_submit_accepts_both_paths(fake_dashscope, client, path):
    fake = fake_dashscope
    r = client.post(fake.base_url + path, json=_body(), headers=_auth(fake, **{"X-DashScope-Async": "enable"}))
    assert r.status_code == 200
    out = r.json()["output"]
    assert out["task_status"] == "PENDING" and out["task_id"] and r.json()["request_id"]


@pytest.mark.parametrize(
    "body, code",
    [
        ({"input": {}}, "InvalidParameter"),
        (_body(model="wanx-v1"), "InvalidParameter"),
        (_body(top=None), "InvalidGarment"),
        (_body(person=None), "InvalidParameter"),
        (_body(resolution=720), "InvalidParameter"),
        (_body(restore_face="yes"), "InvalidParameter"),
        (_body(person="ftp://x/p.jpg"), "InvalidURL"),
        (_body(person="oss://dashscope-instant/x/p.jpg"), "InvalidParameter.DataInspection"),
        ({"model": "aitryon-refiner", "input": {"person_image_url": "https://x/p", "top_garment_url": "https://x/g"}, "parameters": {"gender": "woman"}}, "InvalidParameter"),
        ({"model": "aitryon-refiner", "input": {"person_image_url": "https://x/p", "top_garment_url": "https://x/g", "coarse_image_url": "https://x/c"}, "parameters": {"gender": "other"}}, "InvalidParameter"),
    ],
)
def test_submit_validation(fake_dashscope, client, body, code):
    fake = fake_dashscope
    r = client.post(fake.base_url + SUBMIT, json=body, headers=_auth(fake, **{"X-DashScope-Async": "enable"}))
    assert r.status_code == 400 and r.json()["code"] == code
    assert fake.task_list() == []


def test_submit_rate_limit(fake_dashscope, client):
    fake = fake_dashscope
    codes = [client.post(fake.base_url + SUBMIT, json=_body(), headers=_auth(fake, **{"X-DashScope-Async": "enable"})).status_code for _ in range(12)]
    assert codes[:10] == [200] * 10 and 429 in codes[10:]


def test_poll_unknown_cancel_and_forced_errors(fake_dashscope, client):
    fake = fake_dashscope
    r = client.get(fake.base_url + "/tasks/no-such-task", headers=_auth(fake))
    assert r.status_code == 200 and r.json()["output"]["task_status"] == "UNKNOWN"
    tid = client.post(fake.base_url + SUBMIT, json=_body(), headers=_auth(fake, **{"X-DashScope-Async": "enable"})).json()["output"]["task_id"]
    fake.fail_next("poll", 503, count=1)
    assert client.get(fake.base_url + f"/tasks/{tid}", headers=_auth(fake)).status_code == 503
    r = client.get(fake.base_url + f"/tasks/{tid}", headers=_auth(fake))
    assert r.json()["output"]["task_status"] == "PENDING" and "submit_time" in r.json()["output"]
    assert client.post(fake.base_url + f"/tasks/{tid}/cancel", headers=_auth(fake)).status_code == 200
    assert client.get(fake.base_url + f"/tasks/{tid}", headers=_auth(fake)).json()["output"]["task_status"] == "CANCELED"
    r = client.post(fake.base_url + f"/tasks/{tid}/cancel", headers=_auth(fake))
    assert r.status_code == 400 and r.json()["code"] == "UnsupportedOperation"


def test_task_downloads_and_validates_inputs(fake_dashscope, client):
    """Leaving PENDING fetches the input URLs: an unreachable one fails the task."""
    fake = fake_dashscope
    fake.polls_per_state = {"PENDING": 0, "PRE-PROCESSING": 0, "RUNNING": 0, "POST-PROCESSING": 0}
    tid = client.post(fake.base_url + SUBMIT, json=_body(person="http://127.0.0.1:9/p.jpg"), headers=_auth(fake, **{"X-DashScope-Async": "enable"})).json()["output"]["task_id"]
    out = client.get(fake.base_url + f"/tasks/{tid}", headers=_auth(fake)).json()["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InvalidParameter" and "end_time" in out


def test_oss_accepts_the_official_sdk(fake_dashscope, client):
    import alibabacloud_oss_v2 as oss

    fake = fake_dashscope
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(fake.oss_access_key_id, fake.oss_access_key_secret)
    cfg.region = "cn-beijing"
    cfg.endpoint = fake.oss_endpoint
    sdk = oss.Client(cfg)
    data = _jpeg()
    sdk.put_object(oss.PutObjectRequest(bucket=fake.bucket, key="k/p.jpg", body=data, content_type="image/jpeg"))
    assert fake.bucket_objects() == ["k/p.jpg"]
    url = sdk.presign(oss.GetObjectRequest(bucket=fake.bucket, key="k/p.jpg"), expires=datetime.timedelta(seconds=60)).url
    assert client.get(url).content == data
    assert client.get(url.split("?")[0]).status_code == 403  # private bucket: no signature, no read
    fake.oss.expire_presigned = True
    assert client.get(url).status_code == 403
    sdk.delete_object(oss.DeleteObjectRequest(bucket=fake.bucket, key="k/p.jpg"))
    assert fake.bucket_objects() == []
    # A wrong access key id is refused, as OSS does.
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider("LTAIsomeoneElse", "x")
    with pytest.raises(Exception):
        oss.Client(cfg).put_object(oss.PutObjectRequest(bucket=fake.bucket, key="k/q.jpg", body=data))
    assert fake.bucket_objects() == []


def test_parsing_endpoint(fake_dashscope, client):
    fake = fake_dashscope
    url = fake.base_url + "/services/vision/image-process/process"
    body = {"model": "aitryon-parsing-v1", "input": {"image_url": "https://x/p.jpg"}, "parameters": {"clothes_type": ["upper", "lower"]}}
    assert client.post(url, json=body, headers=_auth(fake, **{"X-DashScope-Async": "enable"})).status_code == 403
    fake.parsing_absent = {"lower"}
    out = client.post(url, json=body, headers=_auth(fake)).json()["output"]
    assert len(out["crop_img_url"]) == 2 and out["crop_img_url"][1] is None and out["bbox"][1] is None
    body["parameters"]["clothes_type"] = ["lower", "upper"]
    r = client.post(url, json=body, headers=_auth(fake))
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter.ClothesType"


def test_get_policy_and_form_upload(fake_dashscope, client):
    fake = fake_dashscope
    r = client.get(fake.base_url + "/uploads", params={"action": "getPolicy", "model": "aitryon-plus"}, headers=_auth(fake))
    data = r.json()["data"]
    fields = {
        "OSSAccessKeyId": data["oss_access_key_id"], "Signature": data["signature"], "policy": data["policy"],
        "key": data["upload_dir"] + "/p.jpg", "x-oss-object-acl": "private", "x-oss-forbid-overwrite": "true",
        "success_action_status": "200",
    }
    r = client.post(data["upload_host"], data=fields, files={"file": ("p.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 200
    assert fake.oss.temp_objects[fields["key"]]["model"] == "aitryon-plus"
    r = client.post(data["upload_host"], data=fields, files={"file": ("p.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 409  # forbid-overwrite
