"""Refuse oversized or slow requests before the body is read whole.

- `RequestLimitsMiddleware` (ASGI): header size, body size (declared or streamed) and the
  body-arrival deadline, enforced as the bytes arrive.
- `BoundedMultiPartParser`: multipart parsing that refuses one uploaded file over the per-file
  limit as it streams in (`image_too_large`), so no more than that is ever held for one file.
"""

from __future__ import annotations

import asyncio
import json

from starlette.formparsers import MultiPartParser

from ..errors import TryOnError


def error_response_parts(error: TryOnError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(error.to_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after_s:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    return error.http_status, headers, body


class _BodyRefused(Exception):
    def __init__(self, error: TryOnError):
        super().__init__(error.message)
        self.error = error


def refused_error(exc: BaseException | None) -> TryOnError | None:
    """The TryOnError behind `exc`: itself, or one it was raised from (FastAPI wraps body-parsing failures)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, TryOnError):
            return exc
        if isinstance(exc, _BodyRefused):
            return exc.error
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class RequestLimitsMiddleware:
    """Header size, body size (declared or streamed) and body-arrival deadline, enforced as the bytes arrive.

    `limits(scope)` is asked per request, so the middleware can be installed when the app is defined
    and still follow the settings the deployment was started with (found through `scope["app"]`).

    A refused body is answered at once, from inside the app's `receive()`: the app then fails
    with whatever it makes of the exception (FastAPI turns any body-parsing failure into a 400),
    and everything it tries to send after the refusal is dropped, so the client always gets the
    refusal's own code (413 payload_too_large, 408 request_timeout) and never a 500.
    """

    def __init__(self, app, *, limits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_body_bytes, max_header_bytes, body_timeout_s = self.limits(scope)
        header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers", []))
        if header_bytes > max_header_bytes:
            return await self._refuse(send, TryOnError("header_too_large", f"The request headers are {header_bytes} bytes; the limit is {max_header_bytes}."))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                return await self._refuse(send, TryOnError("invalid_request", "The Content-Length header is not a whole number."))
            if length > max_body_bytes:
                return await self._refuse(send, _too_large(max_body_bytes))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout_s
        received = 0
        started = False  # the app has started its response
        refusal: TryOnError | None = None
        answered = False  # the refusal was sent to the client

        async def refuse_now(error: TryOnError):
            nonlocal refusal, answered
            refusal = error
            if not started:
                answered = True
                await self._refuse(send, error)
            raise _BodyRefused(error)

        async def limited_receive():
            nonlocal received
            if refusal is not None:  # the app keeps reading after a refusal: refuse again
                raise _BodyRefused(refusal)
            remaining = deadline - loop.time()
            timeout = TryOnError("request_timeout", f"The request body did not arrive within {body_timeout_s:g} s.")
            if remaining <= 0:
                await refuse_now(timeout)
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                await refuse_now(timeout)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body_bytes:
                    await refuse_now(_too_large(max_body_bytes))
            return message

        async def guarded_send(message):
            nonlocal started
            if answered:
                return  # the client has the refusal; what the app sends about its failure is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # noqa: BLE001 - the app failed because its body was refused: already answered
            if not answered:
                raise

    async def _refuse(self, send, error: TryOnError) -> None:
        status, headers, body = error_response_parts(error)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _too_large(max_body_bytes: int) -> TryOnError:
    return TryOnError("payload_too_large", f"The request body is over the {max_body_bytes}-byte limit; send smaller images.")


class BoundedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, refusing an uploaded file over `max_file_bytes` as it arrives.

    Raises TryOnError("image_too_large") naming the form field; FastAPI wraps it in a 400, which
    the ingress's handler unwraps (`refused_error`). At most `max_file_bytes` plus one network
    chunk of a file is held before the refusal.
    """

    max_file_bytes: int | None = None

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        limit = self.max_file_bytes
        if self._current_part.file is not None and limit is not None:
            self._file_bytes += end - start
            if self._file_bytes > limit:
                name = (self._current_part.field_name or "uploaded")[:40]
                raise TryOnError("image_too_large", f"The {name} file is over the {limit}-byte limit; send a smaller file.")
        super().on_part_data(data, start, end)


def install_upload_limit(max_file_bytes: int, spool_bytes: int) -> None:
    """Make this process's Starlette requests parse multipart bodies with `BoundedMultiPartParser`.

    Uploaded files are kept in memory while parsing (spooled to disk only past `spool_bytes`, which
    the callers set to the whole-body limit, so never): person photos never touch a temp file.
    """
    import starlette.requests

    BoundedMultiPartParser.max_file_bytes = max_file_bytes
    BoundedMultiPartParser.spool_max_size = spool_bytes
    MultiPartParser.spool_max_size = spool_bytes
    starlette.requests.MultiPartParser = BoundedMultiPartParser
