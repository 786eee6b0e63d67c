"""A loopback fake of DashScope's OutfitAnyone API and of an OSS bucket (contract §14).

Two FastAPI apps, each served by uvicorn in a background thread on 127.0.0.1 at a port the OS
picks:

- the DashScope API under ``/api/v1``: submit (``image-synthesis``, with or without the trailing
  slash), ``GET /tasks/{id}``, ``POST /tasks/{id}/cancel``, the synchronous garment parsing call
  and ``GET /uploads?action=getPolicy``;
- an OSS endpoint that accepts what the official ``alibabacloud_oss_v2`` SDK sends (path-style
  addressing, any V4 signature from the expected access key id), keeps objects in memory,
  serves presigned GETs (checking their expiry), deletes, and takes DashScope's temporary-upload
  form POST. Provider results live in a bucket of their own (``dashscope-result``) behind
  V1-style signed URLs that expire.

Tasks advance when polled, through PENDING → PRE-PROCESSING → RUNNING → POST-PROCESSING →
SUCCEEDED, each state served for ``polls_per_state[state]`` polls and at least
``seconds_per_state[state]`` seconds. Leaving PENDING is the task's start: the fake downloads the
inputs from their URLs (as the real service does) and validates them (§9), at most
``max_running_per_key`` tasks run per API key (others stay PENDING, or are refused with 429 at
submit when ``over_concurrency == "reject"``), and the result is the downloaded person image
itself, so a client's size mapping can be checked end to end.

Use the ``fake_dashscope`` fixture (``from tests.fakes.dashscope import fake_dashscope``): it
yields a reset ``FakeDashScope`` control object with ``base_url``, ``oss_endpoint``, ``bucket``,
``api_key``, ``oss_access_key_id``/``oss_access_key_secret`` and the knobs below.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import datetime
import hashlib
import io
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

TRYON_MODELS = {"aitryon", "aitryon-plus"}
REFINER_MODEL = "aitryon-refiner"
PARSING_MODEL = "aitryon-parsing-v1"
PROGRESS = ["PENDING", "PRE-PROCESSING", "RUNNING", "POST-PROCESSING"]
RUNNING_STATES = {"PRE-PROCESSING", "RUNNING", "POST-PROCESSING"}
FINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}
RESULT_BUCKET = "dashscope-result"
BEIJING = datetime.timezone(datetime.timedelta(hours=8))

# The strictest reading of every documented input limit (§9).
MIN_BYTES = 5 * 1024
MAX_BYTES = 5 * 1000 * 1000
MIN_SIDE_EXCLUSIVE = 150
MAX_SIDE_EXCLUSIVE = 4096
ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "HEIF"}

MSG = {
    "no_key": "No API-key provided.",
    "bad_key": "Invalid API-key provided.",
    "sync": "current user api does not support synchronous calls",
    "async": "Current user api does not support asynchronous calls",
    "params": "The request is missing required parameters or in a wrong format, please check the parameters that you send.",
    "model": "Model not exist.",
    "garment": "Missing clothing image.Please input at least one top garment or bottom garment image.",
    "url": "The request URL is invalid, please check the request URL is available and the request image format is one of the following types: JPEG, JPG, PNG, BMP, and WEBP.",
    "length": "The image resolution is invalid, please make sure that the largest length of image is smaller than 4096, and the smallest length of image is larger than 150. and the size of image ranges from 5KB to 5MB",
    "inspection": "The media resource is not resolved: the oss:// URL needs the X-DashScope-OssResourceResolve header.",
    "auth_media": "Don't have authorization to access the media resource during the data inspection process.",
    "timeout_media": "Download the media resource timed out during the data inspection process.",
    "rate": "Requests rate limit exceeded, please try again later.",
    "throttle": "Requests throttling triggered.",
    "cancel": "Failed to cancel the task, please confirm if the task is in PENDING status.",
    "clothes": "The request parameter is invalid, please check the request parameter clothes_type.",
}


def _beijing_now() -> str:
    return datetime.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _err(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "request_id": str(uuid.uuid4())}, status_code=status, headers=headers)


def _oss_err(status: int, code: str, message: str) -> Response:
    rid = uuid.uuid4().hex[:24].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n  <RequestId>{rid}</RequestId>\n"
        "  <HostId>127.0.0.1</HostId>\n</Error>\n"
    )
    return Response(body, status_code=status, media_type="application/xml", headers={"x-oss-request-id": rid})


@dataclass
class FailRule:
    route: str  # submit | poll | cancel | download | getPolicy | parsing | any
    status: int
    code: str
    message: str
    remaining: int


@dataclass
class FakeTask:
    task_id: str
    key: str
    model: str
    input: dict
    parameters: dict
    oss_resolve: bool
    status: str = "PENDING"
    state_since: float = field(default_factory=time.monotonic)
    polls_in_state: int = 0
    submit_time: str = field(default_factory=_beijing_now)
    scheduled_time: str | None = None
    end_time: str | None = None
    code: str | None = None
    message: str | None = None
    served: list[str] = field(default_factory=list)  # every status a poll answered, in order
    inputs: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # field -> (w, h, bytes)
    person_bytes: bytes | None = None
    result_url: str | None = None
    cancel_requested: bool = False
    starting: bool = False  # downloading its inputs: already counts as running


class FakeOss:
    """An in-memory OSS endpoint: buckets, presigned GETs, deletes, temp-upload form POSTs."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.base_url = ""
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.buckets: dict[str, dict[str, tuple[bytes, str]]] = {}
            self.temp_objects: dict[str, dict] = {}  # key -> {"data", "model", "created"}
            self.access_key_id = "LTAIfakeOssKeyId0001"
            self.expire_presigned = False  # every presigned GET answers 403 "Request has expired"
            self.fail_puts = 0  # the next N PUTs answer 500
            self.fail_deletes = 0  # the next N DELETEs answer 500
            self.put_delay_s = 0.0  # a slow upload
            self.requests: list[tuple[str, str]] = []  # (method, path), never queries

    def objects(self, bucket: str) -> list[str]:
        with self.lock:
            return sorted(self.buckets.get(bucket, {}))

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "image/jpeg") -> None:
        with self.lock:
            self.buckets.setdefault(bucket, {})[key] = (data, content_type)

    def _credential_ok(self, request: Request) -> bool | None:
        """True/False for a signed request, None when it carries no signature at all."""
        auth = request.headers.get("authorization", "")
        query = request.query_params
        if auth.startswith("OSS4-HMAC-SHA256 "):
            cred = auth.split("Credential=", 1)[-1].split("/", 1)[0]
            return cred == self.access_key_id
        if auth.startswith("OSS "):
            return auth[4:].split(":", 1)[0] == self.access_key_id
        if "x-oss-signature" in query:
            return query.get("x-oss-credential", "").split("/", 1)[0] == self.access_key_id
        return None

    def _presign_expired(self, request: Request) -> bool:
        q = request.query_params
        if self.expire_presigned:
            return True
        if "x-oss-date" in q and "x-oss-expires" in q:
            signed = datetime.datetime.strptime(q["x-oss-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
            return time.time() > signed.timestamp() + int(q["x-oss-expires"])
        return False

    async def _form_upload(self, form) -> Response:
        with self.lock:
            self.requests.append(("POST", "/"))
        fields = {k: form.get(k) for k in ("OSSAccessKeyId", "Signature", "policy", "key", "x-oss-forbid-overwrite")}
        if not all(fields[k] for k in ("OSSAccessKeyId", "Signature", "policy", "key")) or form.get("file") is None:
            return _oss_err(400, "InvalidArgument", "missing form field")
        if list(form.keys())[-1] != "file":
            return _oss_err(400, "InvalidArgument", "the file field must be the last field")
        try:
            policy = json.loads(base64.b64decode(str(fields["policy"])))
        except ValueError:
            return _oss_err(403, "AccessDenied", "Invalid according to Policy: policy is not valid")
        if time.time() > policy["expiration_epoch"]:
            return _oss_err(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        key = str(fields["key"])
        if not key.startswith(policy["upload_dir"] + "/"):
            return _oss_err(403, "AccessDenied", "Invalid according to Policy: key outside upload_dir")
        upload = form["file"]
        data = await upload.read()
        with self.lock:
            if key in self.temp_objects and str(fields["x-oss-forbid-overwrite"]).lower() == "true":
                return _oss_err(409, "FileAlreadyExists", "The object you specified already exists and can not be overwritten.")
            self.temp_objects[key] = {"data": data, "model": policy["model"], "created": time.time()}
        status = int(form.get("success_action_status") or 204)
        return Response(status_code=status if status in (200, 201, 204) else 204)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/")
        async def form_upload(request: Request):
            async with request.form() as form:  # closes the spooled upload files
                return await self._form_upload(form)

        @app.api_route("/{bucket}/{key:path}", methods=["PUT", "GET", "HEAD", "DELETE"])
        async def object_route(bucket: str, key: str, request: Request):
            method = request.method
            with self.lock:
                self.requests.append((method, f"/{bucket}/{key}"))
            if bucket == RESULT_BUCKET:
                if method not in ("GET", "HEAD"):
                    return _oss_err(403, "AccessDenied", "You have no right to access this object.")
                q = request.query_params
                if "Signature" not in q or "Expires" not in q:
                    return _oss_err(403, "AccessDenied", "You have no right to access this object because of bucket acl.")
                if time.time() > float(q["Expires"]):
                    return _oss_err(403, "AccessDenied", "Request has expired.")
                with self.lock:
                    obj = self.buckets.get(bucket, {}).get(key)
                if obj is None:
                    return _oss_err(404, "NoSuchKey", "The specified key does not exist.")
                return Response(obj[0] if method == "GET" else b"", media_type=obj[1])

            ok = self._credential_ok(request)
            if ok is None:
                return _oss_err(403, "AccessDenied", "You have no right to access this object because of bucket acl.")
            if not ok:
                return _oss_err(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.")
            rid = uuid.uuid4().hex[:24].upper()
            if method == "PUT":
                data = await request.body()
                if self.put_delay_s:
                    await asyncio.sleep(self.put_delay_s)
                with self.lock:
                    if self.fail_puts > 0:
                        self.fail_puts -= 1
                        return _oss_err(500, "InternalError", "We encountered an internal error. Please try again.")
                    self.buckets.setdefault(bucket, {})[key] = (data, request.headers.get("content-type", "application/octet-stream"))
                etag = '"' + hashlib.md5(data).hexdigest().upper() + '"'
                return Response(status_code=200, headers={"ETag": etag, "x-oss-request-id": rid})
            if method == "DELETE":
                with self.lock:
                    if self.fail_deletes > 0:
                        self.fail_deletes -= 1
                        return _oss_err(500, "InternalError", "We encountered an internal error. Please try again.")
                    self.buckets.get(bucket, {}).pop(key, None)
                return Response(status_code=204, headers={"x-oss-request-id": rid})
            # GET / HEAD, by header signature or presigned query
            if "x-oss-signature" in request.query_params and self._presign_expired(request):
                return _oss_err(403, "AccessDenied", "Request has expired.")
            with self.lock:
                obj = self.buckets.get(bucket, {}).get(key)
            if obj is None:
                return _oss_err(404, "NoSuchKey", "The specified key does not exist.")
            return Response(obj[0] if method == "GET" else b"", media_type=obj[1], headers={"x-oss-request-id": rid})

        return app


class FakeDashScope:
    """Control object of the fake provider. Every knob is a plain attribute; `reset()` restores them."""

    def __init__(self, oss: FakeOss) -> None:
        self.oss = oss
        self.lock = threading.RLock()
        self.api_base = ""  # http://127.0.0.1:<port>
        self._http: httpx.AsyncClient | None = None
        self.reset()

    # -- configuration ----------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.api_keys: set[str] = {"sk-fake-test-key-0001"}
            self.bucket = "pexir-test-bucket"
            self.oss_access_key_secret = "fake-oss-secret-0001"
            self.polls_per_state: dict[str, int] = {s: 1 for s in PROGRESS}
            self.seconds_per_state: dict[str, float] = {}
            self.stall_in: str | None = None  # a state a task never leaves (slow provider)
            self.stall_model: str | None = None  # only tasks of this model stall (None: all)
            self.task_failure: tuple[str, str] | None = None  # (code, message): FAILED instead of SUCCEEDED
            self.task_failure_model: str | None = None  # only tasks of this model fail (None: all)
            self.result_not_an_image = False
            self.submit_failure: tuple[int, str, str] | None = None  # (status, code, message) at every submit
            self.validate_inputs_at = "task"  # "task" (FAILED task) or "submit" (HTTP 400)
            self.result_url_as_list = False
            self.result_url_expired = False
            self.result_url_missing = False
            self.result_expires_s = 24 * 3600.0
            self.force_unknown = False
            self.max_running_per_key = 5
            self.over_concurrency = "queue"  # "queue": stay PENDING; "reject": 429 at submit
            self.max_submits_per_s = 10
            self.refiner_requires_top = True  # the OpenAPI file's reading of the refiner schema
            self.policy_numbers_as_strings = False
            self.parsing_absent: set[str] = set()
            self.response_delay_s: dict[str, float] = {}  # per route, before the request is handled
            self.delay_after_submit_s = 0.0  # the task exists, the answer is slow
            self.fail_rules: list[FailRule] = []
            self.tasks: dict[str, FakeTask] = {}
            self.submits: list[dict] = []
            self.submit_stamps: list[float] = []
            self.calls: dict[str, int] = {}
            self.cancel_calls: list[str] = []
            self.max_active_seen = 0
            self.max_running_seen = 0
        self.oss.reset()

    def fail_next(self, route: str, status: int, count: int = 1, code: str | None = None, message: str | None = None) -> None:
        """Answer the next `count` calls of `route` with HTTP `status` (401/403/404/429/500/503...)."""
        default = {
            401: ("InvalidApiKey", MSG["bad_key"]),
            403: ("AccessDenied", "Access denied."),
            404: ("NotFound", "Resource not found."),
            429: ("Throttling.RateQuota", MSG["rate"]),
            500: ("InternalError", "An internal error has occured, please try again later."),
            503: ("ServiceUnavailable", "Service temporarily unavailable."),
        }.get(status, ("InternalError", "error"))
        with self.lock:
            self.fail_rules.append(FailRule(route, status, code or default[0], message or default[1], count))

    # -- inspection -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self.api_base}/api/v1"

    @property
    def api_key(self) -> str:
        return sorted(self.api_keys)[0]

    @property
    def oss_endpoint(self) -> str:
        return self.oss.base_url

    @property
    def oss_access_key_id(self) -> str:
        return self.oss.access_key_id

    def bucket_objects(self) -> list[str]:
        """What is left in the operator's bucket."""
        return self.oss.objects(self.bucket)

    def task_list(self) -> list[FakeTask]:
        with self.lock:
            return list(self.tasks.values())

    def statuses(self) -> list[str]:
        with self.lock:
            return [t.status for t in self.tasks.values()]

    def wait_for(self, predicate, timeout_s: float = 5.0, interval_s: float = 0.005) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(interval_s)
        return False

    # -- internals --------------------------------------------------------------------------

    def _count(self, route: str) -> None:
        self.calls[route] = self.calls.get(route, 0) + 1

    def _forced(self, route: str) -> JSONResponse | None:
        with self.lock:
            for rule in self.fail_rules:
                if rule.remaining > 0 and rule.route in (route, "any"):
                    rule.remaining -= 1
                    headers = {"Retry-After": "0"} if rule.status == 429 else None
                    return _err(rule.status, rule.code, rule.message, headers)
        return None

    def _auth(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        header = request.headers.get("authorization")
        if not header:
            return None, _err(401, "InvalidApiKey", MSG["no_key"])
        if not header.startswith("Bearer sk-") or header[7:] not in self.api_keys:
            return None, _err(401, "InvalidApiKey", MSG["bad_key"])
        return header[7:], None

    async def _delay(self, route: str) -> None:
        delay = self.response_delay_s.get(route, 0.0)
        if delay:
            await asyncio.sleep(delay)

    def _running(self, key: str) -> int:
        return sum(1 for t in self.tasks.values() if t.key == key and (t.status in RUNNING_STATES or t.starting))

    def _active(self, key: str) -> int:
        return sum(1 for t in self.tasks.values() if t.key == key and t.status not in FINAL)

    async def _fetch_input(self, url: str, model: str) -> tuple[bytes | None, tuple[str, str] | None]:
        if url.startswith("oss://"):
            key = url[len("oss://"):]
            with self.oss.lock:
                obj = self.oss.temp_objects.get(key)
            if obj is None or time.time() > obj["created"] + 48 * 3600:
                return None, ("InvalidParameter", MSG["auth_media"])
            if obj["model"] != model:
                return None, ("InvalidParameter", MSG["auth_media"])
            return obj["data"], None
        if self._http is None:  # created in the server's loop, reused (a client per fetch is slow)
            self._http = httpx.AsyncClient(timeout=5.0)
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError:
            return None, ("InvalidParameter", MSG["timeout_media"])
        if resp.status_code != 200:
            return None, ("InvalidParameter", MSG["auth_media"])
        return resp.content, None

    async def _check_inputs(self, task: FakeTask) -> tuple[str, str] | None:
        """Download every input URL and apply §9's limits. Returns (code, message) on failure."""
        for name, url in task.input.items():
            if not name.endswith("_url") or not url:
                continue
            data, error = await self._fetch_input(url, task.model)
            if error:
                return error
            if not MIN_BYTES <= len(data) <= MAX_BYTES:
                return "InvalidInputLength", MSG["length"]
            try:
                with Image.open(io.BytesIO(data)) as img:
                    fmt = img.format
                    w, h = img.size
                    img.load()
            except Exception:
                return "InvalidURL", MSG["url"]
            if fmt not in ALLOWED_FORMATS:
                return "InvalidURL", MSG["url"]
            if not all(MIN_SIDE_EXCLUSIVE < side < MAX_SIDE_EXCLUSIVE for side in (w, h)):
                return "InvalidInputLength", MSG["length"]
            task.inputs[name] = (w, h, len(data))
            if name == ("coarse_image_url" if task.model == REFINER_MODEL else "person_image_url"):
                task.person_bytes = data
        if task.model == REFINER_MODEL:
            pw, ph, _ = task.inputs.get("person_image_url", (0, 0, 0))
            cw, ch, _ = task.inputs.get("coarse_image_url", (0, 0, 0))
            if (pw, ph) != (cw, ch):
                return "InvalidParameter", "The size of person image and coarse_image are not the same."
        return None

    def _make_result(self, task: FakeTask) -> None:
        """The result: the (coarse or person) image as sent, resized if `resolution` asks."""
        with Image.open(io.BytesIO(task.person_bytes)) as img:
            img = img.convert("RGB")
            res = task.parameters.get("resolution", -1)
            if res == 1024:
                img = img.resize((576, 1024))
            elif res == 1280:
                img = img.resize((720, 1280))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
        key = f"{task.task_id}/tryon.jpg"
        self.oss.put(RESULT_BUCKET, key, b"<html>not an image</html>" if self.result_not_an_image else buf.getvalue())
        expires = time.time() + (-60 if self.result_url_expired else self.result_expires_s)
        task.result_url = (
            f"{self.oss.base_url}/{RESULT_BUCKET}/{key}?Expires={int(expires)}"
            f"&OSSAccessKeyId=LTAIresultFakeKey&Signature={uuid.uuid4().hex}"
        )

    def _set_status(self, task: FakeTask, status: str) -> None:
        task.status = status
        task.state_since = time.monotonic()
        task.polls_in_state = 0
        if status == "PRE-PROCESSING" or (status in RUNNING_STATES and not task.scheduled_time):
            task.scheduled_time = task.scheduled_time or _beijing_now()
        if status in FINAL:
            task.end_time = _beijing_now()
        self.max_running_seen = max(self.max_running_seen, self._running(task.key))

    async def _advance(self, task: FakeTask) -> None:
        while task.status not in FINAL:
            state = task.status
            if self.stall_in == state and self.stall_model in (None, task.model):
                return
            if task.polls_in_state < self.polls_per_state.get(state, 0):
                return
            if time.monotonic() - task.state_since < self.seconds_per_state.get(state, 0.0):
                return
            if state == "PENDING":
                if self._running(task.key) >= self.max_running_per_key:
                    return  # queued behind the account's running tasks
                if self.validate_inputs_at == "task":
                    task.starting = True
                    try:
                        error = await self._check_inputs(task)
                    finally:
                        task.starting = False
                    if task.status != "PENDING":
                        return  # cancelled while its inputs were being fetched
                    if error:
                        task.code, task.message = error
                        self._set_status(task, "FAILED")
                        return
            index = PROGRESS.index(state)
            if index + 1 < len(PROGRESS):
                self._set_status(task, PROGRESS[index + 1])
                continue
            if self.task_failure and self.task_failure_model in (None, task.model):
                task.code, task.message = self.task_failure
                self._set_status(task, "FAILED")
                return
            self._make_result(task)
            self._set_status(task, "SUCCEEDED")

    def _task_body(self, task: FakeTask) -> dict:
        out: dict = {"task_id": task.task_id, "task_status": task.status, "submit_time": task.submit_time}
        if task.scheduled_time:
            out["scheduled_time"] = task.scheduled_time
        if task.end_time:
            out["end_time"] = task.end_time
        body: dict = {"request_id": str(uuid.uuid4()), "output": out}
        if task.status == "FAILED":
            out["code"], out["message"] = task.code, task.message
        if task.status == "SUCCEEDED":
            if not self.result_url_missing:
                out["image_url"] = [task.result_url] if self.result_url_as_list else task.result_url
            body["usage"] = {"image_count": 1}
        return body

    @staticmethod
    def _validate_submit(model: str, inp: dict, params: dict, refiner_requires_top: bool) -> tuple[str, str] | None:
        if not isinstance(inp, dict) or not isinstance(params, dict):
            return "InvalidParameter", MSG["params"]
        if not inp.get("person_image_url"):
            return "InvalidParameter", MSG["params"]
        if model in TRYON_MODELS:
            if not inp.get("top_garment_url") and not inp.get("bottom_garment_url"):
                return "InvalidGarment", MSG["garment"]
            if params.get("resolution", -1) not in (-1, 1024, 1280) or isinstance(params.get("resolution"), bool):
                return "InvalidParameter", MSG["params"]
            if not isinstance(params.get("restore_face", True), bool):
                return "InvalidParameter", MSG["params"]
        else:  # refiner
            if not inp.get("coarse_image_url") or params.get("gender") not in ("woman", "man"):
                return "InvalidParameter", MSG["params"]
            if refiner_requires_top and not inp.get("top_garment_url"):
                return "InvalidParameter", MSG["params"]
            if not inp.get("top_garment_url") and not inp.get("bottom_garment_url"):
                return "InvalidGarment", MSG["garment"]
        for name, url in inp.items():
            if name.endswith("_url") and url is not None:
                if not isinstance(url, str) or not url.startswith(("http://", "https://", "oss://")):
                    return "InvalidURL", MSG["url"]
        return None

    # -- the app ----------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        async def submit(request: Request):
            self._count("submit")
            await self._delay("submit")
            forced = self._forced("submit")
            if forced:
                return forced
            key, denied = self._auth(request)
            if denied:
                return denied
            if request.headers.get("x-dashscope-async") != "enable":
                return _err(403, "AccessDenied", MSG["sync"])
            try:
                body = json.loads(await request.body())
            except ValueError:
                return _err(400, "InvalidParameter", MSG["params"])
            if not isinstance(body, dict) or not body.get("model"):
                return _err(400, "InvalidParameter", MSG["params"])
            model = body["model"]
            if model not in TRYON_MODELS and model != REFINER_MODEL:
                return _err(400, "InvalidParameter", MSG["model"])
            inp, params = body.get("input") or {}, body.get("parameters") or {}
            invalid = self._validate_submit(model, inp, params, self.refiner_requires_top)
            if invalid:
                return _err(400, *invalid)
            resolve = request.headers.get("x-dashscope-ossresourceresolve") == "enable"
            if any(isinstance(u, str) and u.startswith("oss://") for u in inp.values()) and not resolve:
                return _err(400, "InvalidParameter.DataInspection", MSG["inspection"])
            now = time.monotonic()
            with self.lock:
                self.submit_stamps = [t for t in self.submit_stamps if t > now - 1.0]
                if len(self.submit_stamps) >= self.max_submits_per_s:
                    return _err(429, "Throttling.RateQuota", MSG["rate"])
                self.submit_stamps.append(now)
                if self.over_concurrency == "reject" and self._active(key) >= self.max_running_per_key:
                    return _err(429, "Throttling", MSG["throttle"])
                if self.submit_failure:
                    return _err(*self.submit_failure)
            task = FakeTask(str(uuid.uuid4()), key, model, dict(inp), dict(params), resolve)
            if self.validate_inputs_at == "submit":
                error = await self._check_inputs(task)
                if error:
                    return _err(400, *error)
            with self.lock:
                self.tasks[task.task_id] = task
                self.submits.append({"model": model, "input": dict(inp), "parameters": dict(params), "oss_resolve": resolve, "task_id": task.task_id})
                self.max_active_seen = max(self.max_active_seen, self._active(key))
            if self.delay_after_submit_s:
                await asyncio.sleep(self.delay_after_submit_s)
            return {"output": {"task_status": "PENDING", "task_id": task.task_id}, "request_id": str(uuid.uuid4())}

        app.add_api_route("/api/v1/services/aigc/image2image/image-synthesis", submit, methods=["POST"])
        app.add_api_route("/api/v1/services/aigc/image2image/image-synthesis/", submit, methods=["POST"])

        @app.get("/api/v1/tasks/{task_id}")
        async def poll(task_id: str, request: Request):
            self._count("poll")
            await self._delay("poll")
            forced = self._forced("poll")
            if forced:
                return forced
            key, denied = self._auth(request)
            if denied:
                return denied
            task = self.tasks.get(task_id)
            if task is None or self.force_unknown:
                return {"request_id": str(uuid.uuid4()), "output": {"task_id": task_id, "task_status": "UNKNOWN"}}
            await self._advance(task)
            with self.lock:
                task.served.append(task.status)
                task.polls_in_state += 1
                return self._task_body(task)

        @app.post("/api/v1/tasks/{task_id}/cancel")
        async def cancel(task_id: str, request: Request):
            self._count("cancel")
            await self._delay("cancel")
            forced = self._forced("cancel")
            if forced:
                return forced
            key, denied = self._auth(request)
            if denied:
                return denied
            with self.lock:
                self.cancel_calls.append(task_id)
                task = self.tasks.get(task_id)
                if task is None or task.status != "PENDING":
                    return _err(400, "UnsupportedOperation", MSG["cancel"])
                task.cancel_requested = True
                self._set_status(task, "CANCELED")
            return {"request_id": str(uuid.uuid4())}

        @app.post("/api/v1/services/vision/image-process/process")
        async def parsing(request: Request):
            self._count("parsing")
            forced = self._forced("parsing")
            if forced:
                return forced
            key, denied = self._auth(request)
            if denied:
                return denied
            if "x-dashscope-async" in request.headers:
                return _err(403, "AccessDenied", MSG["async"])
            try:
                body = json.loads(await request.body())
            except ValueError:
                return _err(400, "InvalidParameter", MSG["params"])
            if body.get("model") != PARSING_MODEL:
                return _err(400, "InvalidParameter", MSG["model"])
            if not (body.get("input") or {}).get("image_url"):
                return _err(400, "InvalidParameter", MSG["params"])
            types = (body.get("parameters") or {}).get("clothes_type")
            if types not in (["upper"], ["lower"], ["dress"], ["upper", "lower"]):
                return _err(400, "InvalidParameter.ClothesType", MSG["clothes"])
            parsing_urls, crop_urls, boxes = [], [], []
            for i, kind in enumerate(types):
                if kind in self.parsing_absent:
                    parsing_urls.append(None), crop_urls.append(None), boxes.append(None)
                    continue
                parsing_urls.append(f"{self.oss.base_url}/{RESULT_BUCKET}/parse-{i}.png?Expires={int(time.time()) + 86400}&OSSAccessKeyId=LTAIresultFakeKey&Signature=x")
                crop_urls.append(f"{self.oss.base_url}/{RESULT_BUCKET}/crop-{i}.png?Expires={int(time.time()) + 86400}&OSSAccessKeyId=LTAIresultFakeKey&Signature=x")
                boxes.append([10, 20 + 40 * i, 200, 60 + 40 * i])
            return {"output": {"parsing_img_url": parsing_urls, "crop_img_url": crop_urls, "bbox": boxes}, "usage": {"image_count": 1}, "request_id": str(uuid.uuid4())}

        @app.get("/api/v1/uploads")
        async def get_policy(request: Request):
            self._count("getPolicy")
            forced = self._forced("getPolicy")
            if forced:
                return forced
            key, denied = self._auth(request)
            if denied:
                return denied
            q = request.query_params
            if q.get("action") != "getPolicy" or not q.get("model"):
                return _err(400, "InvalidParameter", MSG["params"])
            ttl = 300
            upload_dir = f"dashscope-instant/{hashlib.md5(key.encode()).hexdigest()[:16]}/{datetime.date.today()}/{uuid.uuid4().hex[:12]}"
            policy = base64.b64encode(json.dumps({"model": q["model"], "upload_dir": upload_dir, "expiration_epoch": time.time() + ttl}).encode()).decode()
            num = (lambda v: str(v)) if self.policy_numbers_as_strings else (lambda v: v)
            return {
                "request_id": str(uuid.uuid4()),
                "data": {
                    "policy": policy,
                    "signature": base64.b64encode(hashlib.sha1(policy.encode()).digest()).decode(),
                    "upload_dir": upload_dir,
                    "upload_host": self.oss.base_url,
                    "expire_in_seconds": num(ttl),
                    "max_file_size_mb": num(100),
                    "capacity_limit_mb": num(999999999),
                    "oss_access_key_id": "LTAItempUploadKey01",
                    "x_oss_object_acl": "private",
                    "x_oss_forbid_overwrite": "true",
                },
            }

        return app


class _ServerThread:
    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", loop="asyncio", http="h11")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name=f"fake-server-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


class RunningFake:
    """Both fake servers; `control` is the FakeDashScope that tests drive."""

    def __init__(self) -> None:
        self.oss = FakeOss()
        self.control = FakeDashScope(self.oss)
        self._oss_server = _ServerThread(self.oss.app())
        self._api_server = _ServerThread(self.control.app())
        self._oss_server.start()
        self._api_server.start()
        self.oss.base_url = self._oss_server.url
        self.control.api_base = self._api_server.url

    def stop(self) -> None:
        self._api_server.stop()
        self._oss_server.stop()


_shared: RunningFake | None = None
_shared_lock = threading.Lock()


def start_fake_dashscope() -> RunningFake:
    """Start a pair of fake servers (stop them with `.stop()`)."""
    return RunningFake()


def shared_fake() -> RunningFake:
    """One pair of fake servers per process, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RunningFake()
            atexit.register(_shared.stop)
        return _shared


@pytest.fixture
def fake_dashscope() -> FakeDashScope:
    """A reset fake DashScope + OSS on loopback; yields its control object."""
    fake = shared_fake().control
    fake.reset()
    yield fake
    fake.reset()
