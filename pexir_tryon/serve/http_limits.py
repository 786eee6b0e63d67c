"""ASGI middleware that refuses oversized or slow requests before the body is read whole."""

from __future__ import annotations

import asyncio
import json

from ..errors import TryOnError


def error_response_parts(error: TryOnError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(error.to_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after_s:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    return error.http_status, headers, body


class _BodyRefused(Exception):
    def __init__(self, error: TryOnError):
        self.error = error


class RequestLimitsMiddleware:
    """Header size, body size (declared or streamed) and body-arrival deadline, enforced as the bytes arrive.

    `limits()` is asked per request, so the middleware can be installed when the app is defined and
    still follow the settings the deployment was started with.
    """

    def __init__(self, app, *, limits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.max_body_bytes, self.max_header_bytes, self.body_timeout_s = self.limits()
        header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers", []))
        if header_bytes > self.max_header_bytes:
            return await self._refuse(send, TryOnError("header_too_large", f"The request headers are {header_bytes} bytes; the limit is {self.max_header_bytes}."))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                return await self._refuse(send, TryOnError("invalid_request", "The Content-Length header is not a number."))
            if too_big:
                return await self._refuse(send, self._too_large())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _BodyRefused(TryOnError("request_timeout", f"The request body did not arrive within {self.body_timeout_s:g} s."))
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise _BodyRefused(TryOnError("request_timeout", f"The request body did not arrive within {self.body_timeout_s:g} s.")) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyRefused(self._too_large())
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyRefused as refused:
            if not started:
                await self._refuse(send, refused.error)
        except Exception as exc:  # noqa: BLE001 - the body reader may wrap our refusal
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _BodyRefused) and not started:
                await self._refuse(send, cause.error)
            else:
                raise

    def _too_large(self) -> TryOnError:
        return TryOnError("payload_too_large", f"The request body is over the {self.max_body_bytes}-byte limit; send smaller images.")

    async def _refuse(self, send, error: TryOnError) -> None:
        status, headers, body = error_response_parts(error)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
