"""TryOnIngress: the HTTP API (FastAPI on Ray Serve). Validates and normalises input, checks who
is calling, owns the store, runs the chosen backend, and answers every failure with a typed error.
"""


import asyncio
import base64
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.base import MAX_SEED, TryOnJob, check_job_options
from ..config import Settings
from ..errors import TryOnError
from ..images import decode_image, encode_jpeg, encode_png
from .auth import Caller, authenticate
from .http_limits import RequestLimitsMiddleware, install_upload_limit, refused_error
from .schemas import ErrorBody, Health, PurgeResponse, ResultDownload, ResultInfo, TryOnResponse, UploadResponse

log = logging.getLogger(__name__)

ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 406, 408, 413, 415, 422, 431, 500, 502, 503, 504)}
FILE_FIELDS = ("person", "garment")
IMAGE_RESPONSE = {
    200: {
        "content": {"image/png": {}, "image/jpeg": {}, "application/json": {"schema": TryOnResponse.model_json_schema()}},
        "description": "The try-on image at the person photo's size (PNG by default; JPEG or JSON by Accept header).",
    }
}

app = FastAPI(
    title="pexir-tryon",
    version="0.1.0",
    description=(
        "Image virtual try-on: a person photo and a garment photo in, the person wearing the garment out.\n\n"
        "Every request carries `Authorization: Bearer <key>` and `X-User-Id` (a server with no keys configured "
        "serves loopback clients only). Errors answer `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
)


def error_json(error: TryOnError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else {}
    if error.code == "unauthorized":
        headers["WWW-Authenticate"] = 'Bearer realm="pexir-tryon"'
    return JSONResponse(error.to_body(), status_code=error.http_status, headers=headers or None)


@app.exception_handler(TryOnError)
async def _tryon_error(_: Request, error: TryOnError) -> JSONResponse:
    return error_json(error)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    field = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header"))
    if field == "category":  # the same code the CLI and the batch job give
        return error_json(TryOnError("unsupported_category", "Unknown category; use one of: upper, lower, dress, auto."))
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and not content_type.startswith("multipart/form-data"):
        files = " and ".join(f"'{name}'" for name in FILE_FIELDS)
        return error_json(TryOnError("invalid_request", f"Send the request as multipart/form-data (curl -F), not {content_type.split(';')[0] or 'an empty body'}; "
                                                        f"photos go in the file fields {files}."))
    if field in FILE_FIELDS and first.get("type") == "value_error":
        return error_json(TryOnError("invalid_request", f"Field '{field}': send a file (a multipart part with a filename, curl -F {field}=@photo.jpg), not a text value."))
    return error_json(TryOnError("invalid_request", f"Field '{field or '?'}': {first.get('msg', 'invalid')}."))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    cause = refused_error(error.__cause__)
    if cause is not None:  # FastAPI wraps any failure while parsing the body (e.g. a file over the limit) in a 400
        return error_json(cause)
    if error.status_code == 404:
        return error_json(TryOnError("not_found", "No such route; see /docs for the API."))
    if error.status_code == 405:
        allow = (error.headers or {}).get("Allow", "")
        response = error_json(TryOnError("method_not_allowed", f"This route does not take that method; use {allow or 'the one in /docs'}."))
        if allow:
            response.headers["Allow"] = allow
        return response
    return error_json(TryOnError("invalid_request", f"{error.detail}"))


@app.exception_handler(Exception)
async def _unexpected(_: Request, error: Exception) -> JSONResponse:
    cause = refused_error(error)
    if cause is not None:
        return error_json(cause)
    log.error("unexpected error", extra={"event": "internal_error", "exc_type": type(error).__name__})
    return error_json(TryOnError("internal_error", "An unexpected server error; retry, and report the request id if it persists."))


def _caller(request: Request) -> Caller:
    ingress: TryOnIngress = request.app.state.ingress
    return authenticate(
        request.headers.get("authorization"),
        request.headers.get("x-user-id"),
        request.client.host if request.client else None,
        ingress.api_keys,
    )


MEDIA = {"application/json": "json", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/png": "png", "image/*": "png", "*/*": "png"}


def _wants(request: Request) -> str:
    """"png", "jpeg" or "json": what the Accept header prefers (q-values honoured; PNG when absent)."""
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return "png"
    best, best_q = None, 0.0
    for item in accept.split(","):
        media, *params = (part.strip().lower() for part in item.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        kind = MEDIA.get(media)
        if kind is not None and q > best_q:  # ties go to the first listed
            best, best_q = kind, q
    if best is None:
        raise TryOnError("not_acceptable", f"This route answers {', '.join(k for k in MEDIA if '*' not in k)}; "
                                           "send one of them in Accept, or leave Accept out.")
    return best


async def _refuse_repeated_fields(request: Request) -> None:
    """A field sent twice (two 'person' files, say) is refused, not silently resolved to one of them."""
    form = await request.form()  # already parsed for the route's parameters; Starlette keeps it
    for name in dict.fromkeys(form.keys()):
        count = len(form.getlist(name))
        if count > 1:
            raise TryOnError("invalid_request", f"Field {name[:40]!r} was sent {count} times; send it once.")


def _serve_request_id() -> str | None:
    """Serve's id of this HTTP request (echoed as X-Request-Id; a client may choose it), for log correlation only."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:  # noqa: BLE001 - outside Serve (unit tests)
        return None


def _iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else ""


_DEFAULT_SETTINGS: Settings | None = None


def _current_limits(scope) -> tuple[int, int, float]:
    """The limits of the ingress serving this request.

    Serve runs a pickled copy of `app` (serve.ingress freezes it), and the replica's __init__ sets
    `state.ingress` on that copy, not on this module's `app`: so read the app from the scope.
    """
    global _DEFAULT_SETTINGS
    served = scope.get("app")
    ingress = getattr(getattr(served, "state", None), "ingress", None)
    if ingress is not None:
        settings = ingress.settings
    else:  # outside Serve, before the replica is constructed
        settings = _DEFAULT_SETTINGS = _DEFAULT_SETTINGS or Settings()
    return settings.images.max_request_bytes, settings.serve.max_header_bytes, settings.serve.body_read_timeout_s


app.add_middleware(RequestLimitsMiddleware, limits=_current_limits)


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class TryOnIngress:
    def __init__(self, settings: dict, detector=None, warper=None, refiner=None, alibaba=None):
        from ..backends.local import LocalBackend
        from ..logs import configure_logging
        from ..store import TryOnStore, run_sweeper
        from .stages import AlibabaHandleBackend, ServeStages

        self.settings = Settings(**settings)
        configure_logging(self.settings.log_level)
        # Keep uploaded photos in memory while parsing (never spooled to a temp file on disk), and
        # refuse one file over max_upload_bytes as it streams in, before it is held whole.
        install_upload_limit(self.settings.images.max_upload_bytes, self.settings.images.max_request_bytes)
        self.api_keys = [key.get_secret_value() for key in self.settings.api_keys]
        if not self.api_keys:
            log.warning("no API keys configured: serving loopback clients only, without a key", extra={"event": "auth_open_loopback"})
        self.store = TryOnStore.from_settings(self.settings)
        timeout = self.settings.serve.stage_timeout_s
        self.backends = {}
        self.stage_handles = {"geometry": detector, "warp": warper, "refine": refiner, "alibaba": alibaba}
        if detector is not None and warper is not None:
            self.backends["local"] = LocalBackend(ServeStages(detector, warper, refiner, timeout_s=timeout))
        if alibaba is not None:
            self.backends["alibaba"] = AlibabaHandleBackend(alibaba, timeout_s=self.settings.alibaba.deadline_s + 30)
        self.running = asyncio.Semaphore(self.settings.serve.max_ongoing_requests)
        self.admitted = 0
        self.inflight: dict[str, set[asyncio.Task]] = {}
        self._stop = asyncio.Event()
        self._sweeper = asyncio.get_event_loop().create_task(run_sweeper(self.store, self.settings.store.sweep_interval_s, self._stop))
        app.state.ingress = self

    # --- try-on -------------------------------------------------------------------------------

    @app.post("/v1/tryon", responses={**IMAGE_RESPONSE, **ERROR_RESPONSES}, response_class=Response,
              summary="Try a garment on a person photo")
    async def tryon(
        self,
        request: Request,
        garment: UploadFile = File(..., description="Garment photo: flat lay on a plain background, or a cut-out PNG."),
        person: UploadFile | None = File(None, description="Person photo (or give person_upload_id)."),
        person_upload_id: str | None = Form(None, description="An id from POST /v1/uploads, instead of person."),
        category: Literal["upper", "lower", "dress", "auto"] = Form("auto"),
        seed: int | None = Form(None, ge=0, le=MAX_SEED, description="Refiner seed; the same seed gives the same image."),
        steps: int | None = Form(None, ge=1, description="Refiner steps, 1 to the server's refiner.max_steps (50 by default)."),
        save: bool = Form(False, description="Keep the result until deleted instead of expiring it."),
        backend: Literal["local", "alibaba"] | None = Form(None, description="Only where the server allows requests to choose."),
        caller: Caller = Depends(_caller),
    ) -> Response:
        started = time.perf_counter()
        await _refuse_repeated_fields(request)
        if (person is None) == (person_upload_id is None):
            raise TryOnError("invalid_request", "Send exactly one of 'person' (a file) or 'person_upload_id'.")
        seed = self.settings.default_seed if seed is None else seed
        check_job_options(category=category, seed=seed, steps=steps, max_steps=self.settings.refiner.max_steps)
        wants = _wants(request)  # refuse an unanswerable Accept before the work, not after
        backend_name = self._choose_backend(backend)
        person_image = await self._person_image(caller, person, person_upload_id)
        garment_image = await self._decode(await self._read_upload(garment, "garment"), "garment", keep_alpha=True)

        # Our own id keys the audit record: Serve's X-Request-Id can be chosen by the client.
        request_id = uuid.uuid4().hex
        job = TryOnJob(
            request_id=request_id, user_id=caller.user_id, person=person_image, garment=garment_image,
            category=category, seed=seed, steps=steps,
        )
        await asyncio.to_thread(self.store.begin_request, request_id, caller.user_id, backend_name)
        status, code, timings = "failed", None, {}
        try:
            result = await self._admitted(caller.user_id, self.backends[backend_name].try_on(job))
            timings = dict(result.timings_s)
            png = await asyncio.to_thread(encode_png, result.image)
            record = await asyncio.to_thread(self.store.put_result, caller.user_id, request_id, png, "image/png", save=save)
            status = "done"
        except TryOnError as error:
            code = error.code
            raise
        finally:
            timings["total"] = time.perf_counter() - started
            await asyncio.to_thread(self.store.finish_request, request_id, status=status, error_code=code, timings_s=timings)
            log.info("tryon", extra={"event": "tryon", "request_id": request_id, "serve_request_id": _serve_request_id(),
                                     "backend": backend_name, "status": status,
                                     "error_code": code, **{f"{k}_ms": round(v * 1000, 1) for k, v in timings.items()}})

        headers = {
            "X-Tryon-Request-Id": request_id,  # the audit record's id (Serve adds its own X-Request-Id)
            "X-Result-Id": record.id,
            "X-Expires-At": _iso(record.expires_at),
            "X-Category": result.category,
            "X-Backend": backend_name,
            "Server-Timing": ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in timings.items()),
        }
        if wants == "json":
            body = TryOnResponse(
                request_id=request_id, result_id=record.id, expires_at=record.expires_at, saved=record.saved,
                category=result.category, backend=backend_name, refined=result.refined,
                timings_ms={k: round(v * 1000, 1) for k, v in timings.items()},
                width=result.image.shape[1], height=result.image.shape[0], content_type="image/png",
                image_base64=base64.b64encode(png).decode(),
            )
            return JSONResponse(body.model_dump(mode="json"), headers=headers)
        if wants == "jpeg":
            return Response(await asyncio.to_thread(encode_jpeg, result.image), media_type="image/jpeg", headers=headers)
        return Response(png, media_type="image/png", headers=headers)

    def _choose_backend(self, requested: str | None) -> str:
        name = self.settings.backend
        if requested is not None and requested != name:
            if requested not in self.settings.request_backends:
                raise TryOnError("backend_not_allowed", f"This server does not let requests choose the '{requested}' backend.")
            name = requested
        if name not in self.backends:
            raise TryOnError("backend_misconfigured", f"The '{name}' backend is not deployed on this server.")
        return name

    async def _person_image(self, caller: Caller, person: UploadFile | None, upload_id: str | None):
        if upload_id is not None:
            _, data = await asyncio.to_thread(self.store.get_upload, caller.user_id, upload_id)
        else:
            data = await self._read_upload(person, "person")
        return await self._decode(data, "person")

    async def _read_upload(self, upload: UploadFile, what: str) -> bytes:
        """The file's bytes, reading at most one byte over max_upload_bytes (image_too_large past it)."""
        limit = self.settings.images.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise TryOnError("image_too_large", f"The {what} file is over the {limit}-byte limit; send a smaller file.")
        return data

    async def _decode(self, data: bytes, what: str, *, keep_alpha: bool = False):
        """decode_image off the event loop: a large photo takes a CPU for a while."""
        return await asyncio.to_thread(decode_image, data, self.settings.images, what=what, keep_alpha=keep_alpha)

    async def _admitted(self, user_id: str, work):
        """Run `work` within the replica's capacity, registered so a purge of the user can cancel it."""
        limit = self.settings.serve.max_ongoing_requests + self.settings.serve.max_queued_requests
        if self.admitted >= limit:
            work.close()
            raise TryOnError("overloaded", "The service is at capacity; retry shortly.", retry_after_s=self.settings.serve.retry_after_s)
        self.admitted += 1
        try:
            async with self.running:
                task = asyncio.ensure_future(asyncio.wait_for(work, self.settings.serve.request_timeout_s))
                self.inflight.setdefault(user_id, set()).add(task)
                try:
                    return await task
                except asyncio.TimeoutError:
                    raise TryOnError("deadline_exceeded", f"The try-on took longer than {self.settings.serve.request_timeout_s:g} s.") from None
                except asyncio.CancelledError:
                    if task.cancelled():  # cancelled by a purge of this user, not by the client going away
                        raise TryOnError("not_found", "The user's data was deleted while this request was running.") from None
                    raise
                finally:
                    tasks = self.inflight.get(user_id, set())
                    tasks.discard(task)
                    if not tasks:
                        self.inflight.pop(user_id, None)
        finally:
            self.admitted -= 1

    # --- uploads and results -----------------------------------------------------------------

    @app.post("/v1/uploads", response_model=UploadResponse, responses=ERROR_RESPONSES, summary="Keep a person photo for reuse with several garments")
    async def upload(self, request: Request, person: UploadFile = File(...), caller: Caller = Depends(_caller)) -> UploadResponse:
        await _refuse_repeated_fields(request)
        image = await self._decode(await self._read_upload(person, "person"), "person")
        png = await asyncio.to_thread(encode_png, image)
        record = await asyncio.to_thread(self.store.put_upload, caller.user_id, png, "image/png")
        return UploadResponse(upload_id=record.id, expires_at=record.expires_at)

    @app.get("/v1/results/{result_id}", response_class=Response,
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "application/json": {"schema": ResultDownload.model_json_schema()}}}, **ERROR_RESPONSES},
             summary="Download a result")
    async def get_result(self, result_id: str, request: Request, caller: Caller = Depends(_caller)) -> Response:
        record, data = await asyncio.to_thread(self.store.get_result, caller.user_id, result_id)
        headers = {"X-Expires-At": _iso(record.expires_at), "X-Result-Id": record.id}
        wants = _wants(request)
        if wants == "json":
            body = ResultDownload(result_id=record.id, request_id=record.request_id, saved=record.saved, expires_at=record.expires_at,
                              created_at=record.created_at, content_type=record.content_type, image_base64=base64.b64encode(data).decode())
            return JSONResponse(body.model_dump(mode="json"), headers=headers)
        if wants == "jpeg":
            image = await self._decode(data, "result")
            return Response(await asyncio.to_thread(encode_jpeg, image), media_type="image/jpeg", headers=headers)
        return Response(data, media_type=record.content_type, headers=headers)

    @app.post("/v1/results/{result_id}/save", response_model=ResultInfo, responses=ERROR_RESPONSES, summary="Keep a result until deleted")
    async def save_result(self, result_id: str, caller: Caller = Depends(_caller)) -> ResultInfo:
        record = await asyncio.to_thread(self.store.save_result, caller.user_id, result_id)
        return ResultInfo(result_id=record.id, request_id=record.request_id, saved=record.saved, expires_at=record.expires_at, created_at=record.created_at)

    @app.delete("/v1/results/{result_id}", status_code=204, response_class=Response, responses=ERROR_RESPONSES, summary="Delete a result")
    async def delete_result(self, result_id: str, caller: Caller = Depends(_caller)) -> Response:
        await asyncio.to_thread(self.store.delete_result, caller.user_id, result_id)
        return Response(status_code=204)

    # --- users ----------------------------------------------------------------------------------

    @app.delete("/v1/users/{user_id}", response_model=PurgeResponse, responses=ERROR_RESPONSES,
                summary="Delete every image and record of a user, including work in flight")
    async def purge_user(self, user_id: str, caller: Caller = Depends(_caller)) -> PurgeResponse:
        if user_id != caller.user_id:
            raise TryOnError("not_found", "No such user.")
        tasks = list(self.inflight.pop(user_id, set()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        provider = 0
        for backend in self.backends.values():
            provider += await backend.purge_user(user_id)
        report = await asyncio.to_thread(self.store.purge_user, user_id)
        log.info("user purged", extra={"event": "purge", "cancelled": len(tasks), "provider_items": provider, **report.to_json()})
        return PurgeResponse(user_id=user_id, cancelled_requests=len(tasks), provider_items_deleted=provider, **report.to_json())

    @app.get("/v1/users/{user_id}/export", response_class=Response, responses={200: {"content": {"application/zip": {}}}, **ERROR_RESPONSES},
             summary="Download everything held about a user (a zip of images and records.json)")
    async def export_user(self, user_id: str, caller: Caller = Depends(_caller)) -> Response:
        if user_id != caller.user_id:
            raise TryOnError("not_found", "No such user.")
        data = await asyncio.to_thread(self.store.export_user, user_id)
        return Response(data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="pexir-export-{user_id}.zip"'})

    # --- health ---------------------------------------------------------------------------------

    @app.api_route("/healthz", methods=["GET", "HEAD"], response_model=Health, summary="The process is up")
    async def healthz(self) -> Health:
        return Health(status="ok")

    @app.api_route("/readyz", methods=["GET", "HEAD"], response_model=Health, responses={503: {"model": ErrorBody}}, summary="Models loaded and stages reachable")
    async def readyz(self):
        stages = {}
        for name, handle in self.stage_handles.items():
            if handle is None:
                continue
            try:
                stages[name] = await asyncio.wait_for(handle.ready.remote(), 5.0)
            except Exception as exc:  # noqa: BLE001
                return error_json(TryOnError("stage_unavailable", f"The {name} stage is not ready ({type(exc).__name__})."))
        return Health(status="ready", stages=stages)

    def __del__(self):
        self._stop.set()
