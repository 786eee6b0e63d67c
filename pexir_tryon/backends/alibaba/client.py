"""Plain async HTTP to DashScope's task API (contract §2–§8): submit, poll, cancel, download.

Every call carries an absolute deadline (on the injected clock). Throttling (429), server
errors (5xx) and network errors are retried with jittered exponential backoff until that
deadline; running out of deadline while the provider keeps failing is `provider_error`. Other
error answers are mapped to our codes at once. The API key goes only to the DashScope base URL,
never to result URLs, and never into messages.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from pexir_tryon.errors import TryOnError

from .provider_errors import is_retryable_status, map_provider_error, safe_code, scrub
from .uploaders import _error_fields

log = logging.getLogger("pexir_tryon.backends.alibaba")

SUBMIT_PATH = "/services/aigc/image2image/image-synthesis"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
PROGRESS_STATES = frozenset({"PENDING", "PRE-PROCESSING", "RUNNING", "POST-PROCESSING", "SUSPENDED"})

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one per client costs ~0.1 s of CPU)."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 1.0
    max_s: float = 10.0
    min_attempt_timeout_s: float = 0.05

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff: uniform in [0.5, 1] x min(max, base * 2^attempt)."""
        return min(self.max_s, self.base_s * (2**attempt)) * rng.uniform(0.5, 1.0)


class _Retryable(Exception):
    def __init__(self, what: str, status: int | None = None, code: str | None = None, retry_after: float | None = None, timed_out: bool = False):
        super().__init__(what)
        self.what = what
        self.timed_out = timed_out
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass
class AttemptGuard:
    """Shared with a caller that may give up: whether an HTTP attempt is on the wire now, and
    whether to stop before the next one. Lets a cancelled submit finish the attempt whose answer
    may name a task that then has to be cancelled."""

    in_attempt: bool = False
    give_up: bool = False


class DeadlineReached(Exception):
    """Our deadline passed while nothing was failing (the task was still in progress)."""


class DashScopeClient:
    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        http_timeout_s: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        secrets: tuple[str, ...] = (),
        max_download_bytes: int = 64 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = http_timeout_s
        self.retry = retry
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._secrets = secrets
        self._max_download_bytes = max_download_bytes
        # Two clients: the API (carries the key) and result downloads (never carries it).
        tls = shared_ssl_context()
        self._api = httpx.AsyncClient(timeout=http_timeout_s, follow_redirects=False, transport=transport, verify=tls)
        self._downloads = httpx.AsyncClient(timeout=http_timeout_s, follow_redirects=True, transport=transport, verify=tls)

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self.base_url!r})"

    async def close(self) -> None:
        await self._api.aclose()
        await self._downloads.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _headers(self, *, submit: bool = False, oss_resolve: bool = False) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        if submit:
            headers["Content-Type"] = "application/json"
            headers["X-DashScope-Async"] = "enable"
        if oss_resolve:
            headers["X-DashScope-OssResourceResolve"] = "enable"
        return headers

    def _attempt_timeout(self, deadline: float) -> float:
        return max(self.retry.min_attempt_timeout_s, min(self._timeout, deadline - self._clock()))

    async def _with_retry(
        self,
        what: str,
        deadline: float,
        attempt_fn: Callable[[float], Awaitable[object]],
        before_attempt: Callable[[float], Awaitable[None]] | None = None,
        guard: AttemptGuard | None = None,
    ):
        attempt = 0
        last: _Retryable | None = None
        guard = guard or AttemptGuard()
        while True:
            if guard.give_up:
                raise asyncio.CancelledError()
            try:
                if self._clock() >= deadline:
                    raise DeadlineReached(what)
                if before_attempt is not None:
                    await before_attempt(deadline)
            except DeadlineReached:
                # Out of time between attempts: if the provider was failing, that is the story.
                if last is not None:
                    raise self._exhausted(last) from None
                raise
            if guard.give_up:
                raise asyncio.CancelledError()
            guard.in_attempt = True
            try:
                return await attempt_fn(self._attempt_timeout(deadline))
            except _Retryable as failure:
                guard.in_attempt = False
                if failure.timed_out and self._clock() >= deadline - 1e-3:
                    raise DeadlineReached(what) from None  # cut short by our deadline, not the provider
                last = failure
                delay = self.retry.backoff(attempt, self._rng)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.retry.max_s))
                attempt += 1
                log.warning("alibaba: call failed; retrying", extra={
                    "event": "alibaba_retry", "call": what, "failure": failure.what, "http_status": failure.status,
                    "provider_code": failure.code or None, "attempt": attempt, "delay_s": round(delay, 3)})
                if self._clock() + delay >= deadline:
                    raise self._exhausted(failure) from None
                if guard.give_up:
                    raise asyncio.CancelledError() from None
                await self._sleep(delay)
            finally:
                guard.in_attempt = False

    @staticmethod
    def _exhausted(failure: _Retryable) -> TryOnError:
        if failure.status is not None:
            return map_provider_error(failure.code, None, failure.status)
        return TryOnError("provider_error", f"The Alibaba Cloud provider could not be reached ({failure.what}); retry later.", retry_after_s=5)

    def _raise_for_answer(self, what: str, resp: httpx.Response) -> None:
        """Retryable answers raise _Retryable; other errors raise a mapped TryOnError."""
        if resp.status_code == 200:
            return
        code, message = _error_fields(resp)
        if is_retryable_status(resp.status_code):
            retry_after = None
            try:
                retry_after = float(resp.headers["retry-after"]) if "retry-after" in resp.headers else None
            except ValueError:
                retry_after = None
            raise _Retryable("provider answer", resp.status_code, safe_code(code) if code else None, retry_after)
        log.error("alibaba: call refused", extra={"event": "alibaba_call_refused", "call": what, "http_status": resp.status_code,
                                                   "provider_code": safe_code(code), "provider_message": scrub(message, self._secrets)})
        raise map_provider_error(code, message, resp.status_code)

    @staticmethod
    def _json(what: str, resp: httpx.Response) -> dict:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TryOnError("provider_error", f"The Alibaba Cloud provider sent an unreadable answer to {what}; retry later.", retry_after_s=5)
        return body

    # -- calls ------------------------------------------------------------------------------

    async def submit(
        self,
        body: dict,
        *,
        deadline: float,
        oss_resolve: bool = False,
        before_attempt: Callable[[float], Awaitable[None]] | None = None,
        guard: AttemptGuard | None = None,
    ) -> str:
        """POST the task; returns its task id. `before_attempt` takes a rate-limit token."""
        url = f"{self.base_url}{SUBMIT_PATH}"

        async def attempt(timeout: float) -> str:
            try:
                resp = await self._api.post(url, json=body, headers=self._headers(submit=True, oss_resolve=oss_resolve), timeout=timeout)
            except httpx.ReadTimeout as exc:
                if self._clock() >= deadline - 1e-3:
                    raise DeadlineReached("submit") from None
                # The whole request went out, so the provider may have queued the task: submitting
                # again could run (and bill) it twice. Connect/write failures are retried below.
                log.error("alibaba: submit timed out; not resubmitting", extra={"event": "alibaba_submit_timeout", "error_type": type(exc).__name__})
                raise TryOnError("provider_error", "The Alibaba Cloud provider did not answer the submission in time; retry later.", retry_after_s=5) from None
            except httpx.TransportError as exc:
                raise _Retryable(type(exc).__name__, timed_out=isinstance(exc, httpx.TimeoutException)) from None
            self._raise_for_answer("submit", resp)
            output = self._json("the submission", resp).get("output") or {}
            task_id = output.get("task_id") if isinstance(output, dict) else None
            if not task_id:
                code, message = _error_fields(resp)
                if code:
                    raise map_provider_error(code, message, 200)
                raise TryOnError("provider_error", "The Alibaba Cloud provider accepted the submission without a task id; retry later.", retry_after_s=5)
            return str(task_id)

        return await self._with_retry("submit", deadline, attempt, before_attempt, guard)

    async def get_task(self, task_id: str, *, deadline: float) -> dict:
        """The task's `output` object. An HTTP 404 is final: it reads as task_status UNKNOWN."""
        url = f"{self.base_url}/tasks/{task_id}"

        async def attempt(timeout: float) -> dict:
            try:
                resp = await self._api.get(url, headers=self._headers(), timeout=timeout)
            except httpx.TransportError as exc:
                raise _Retryable(type(exc).__name__, timed_out=isinstance(exc, httpx.TimeoutException)) from None
            if resp.status_code == 404:
                return {"task_id": task_id, "task_status": "UNKNOWN", "http_status": 404}
            self._raise_for_answer("poll", resp)
            output = self._json("a task query", resp).get("output")
            if not isinstance(output, dict) or not output.get("task_status"):
                raise _Retryable("answer without task_status", 200)
            return output

        return await self._with_retry("poll", deadline, attempt)

    async def cancel(self, task_id: str, *, timeout_s: float = 5.0) -> bool:
        """Best effort, one try: True when the provider cancelled the (PENDING) task."""
        try:
            resp = await self._api.post(f"{self.base_url}/tasks/{task_id}/cancel", headers=self._headers(), timeout=max(0.1, timeout_s))
        except httpx.HTTPError as exc:
            log.warning("alibaba: cancel failed", extra={"event": "alibaba_cancel_failed", "task_id": task_id, "error_type": type(exc).__name__})
            return False
        if resp.status_code == 200:
            log.info("alibaba: cancelled a task", extra={"event": "alibaba_cancelled", "task_id": task_id})
            return True
        code, _ = _error_fields(resp)
        log.info("alibaba: task not cancelled", extra={"event": "alibaba_not_cancelled", "task_id": task_id, "http_status": resp.status_code, "provider_code": safe_code(code)})
        return False

    async def download(self, url: str, *, deadline: float) -> bytes:
        """Fetch a result image at once (its URL expires). No API key is sent."""
        if not url.startswith(("http://", "https://")):
            raise TryOnError("provider_error", "The Alibaba Cloud provider returned an unusable result URL; retry later.", retry_after_s=5)

        async def attempt(timeout: float) -> bytes:
            try:
                async with self._downloads.stream("GET", url, timeout=timeout) as resp:
                    if resp.status_code in (401, 403, 404, 410):
                        log.error("alibaba: result download refused (expired or missing)", extra={"event": "alibaba_download_refused", "http_status": resp.status_code})
                        raise TryOnError("provider_error", "The provider's result URL had expired or pointed nowhere; retry the try-on.", retry_after_s=1)
                    if is_retryable_status(resp.status_code):
                        raise _Retryable("result download", resp.status_code)
                    if resp.status_code != 200:
                        raise TryOnError("provider_error", f"Downloading the provider's result failed with HTTP {resp.status_code}; retry later.", retry_after_s=5)
                    chunks, total = [], 0
                    async for chunk in resp.aiter_bytes():
                        total += len(chunk)
                        if total > self._max_download_bytes:
                            raise TryOnError("provider_error", "The provider's result is larger than expected; retry later.", retry_after_s=5)
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.TransportError as exc:
                raise _Retryable(type(exc).__name__, timed_out=isinstance(exc, httpx.TimeoutException)) from None

        return await self._with_retry("download", deadline, attempt)
