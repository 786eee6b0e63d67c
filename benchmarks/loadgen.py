"""A small closed-loop HTTP load generator (asyncio + httpx), bounded in time and in requests.

`concurrency` clients each send one request, wait for its answer, and send the next, until the
level's window closes; requests still in flight then finish (the drain, bounded by
`drain_timeout_s`). A 503 is recorded and its client waits `Retry-After` (capped) before its next
request, as a well-behaved client would, instead of hammering the server with instant retries.

Loopback only: the URL must point at 127.0.0.1/localhost/::1.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only targets loopback, not {host!r}")


async def run_level(url: str, make_request: Callable[[int, int], dict], *, concurrency: int, duration_s: float,
                    drain_timeout_s: float = 120.0, request_timeout_s: float = 180.0, max_requests: int = 100_000,
                    retry_after_cap_s: float = 2.0, on_response: Callable[[], None] | None = None) -> dict:
    """One concurrency level. `make_request(client_index, sequence)` returns httpx request kwargs
    (headers, files, data). Returns {"samples": [...], "window_s", "elapsed_s"} where each sample is
    {"client", "seq", "start_s", "latency_s", "status", "error_code"?, "exception"?}."""
    import httpx

    _check_loopback(url)
    samples: list[dict] = []
    started = time.perf_counter()
    window_end = started + duration_s
    budget = {"left": max_requests}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(request_timeout_s, connect=10.0)

    async def client_loop(index: int, client: httpx.AsyncClient) -> None:
        seq = 0
        while time.perf_counter() < window_end and budget["left"] > 0:
            budget["left"] -= 1
            kwargs = make_request(index, seq)
            sent = time.perf_counter()
            sample = {"client": index, "seq": seq, "start_s": round(sent - started, 5)}
            wait = 0.0
            try:
                response = await client.post(url, **kwargs)
                await response.aread()
                sample["status"] = response.status_code
                if response.status_code != 200:
                    try:
                        sample["error_code"] = response.json()["error"]["code"]
                    except Exception:  # noqa: BLE001 - a non-JSON error body
                        sample["error_code"] = None
                    if response.status_code == 503:
                        try:
                            wait = min(retry_after_cap_s, float(response.headers.get("retry-after", "1")))
                        except ValueError:
                            wait = 1.0
            except httpx.HTTPError as exc:
                sample["status"] = None
                sample["exception"] = type(exc).__name__
                wait = 0.5
            sample["latency_s"] = round(time.perf_counter() - sent, 5)
            sample["end_s"] = round(time.perf_counter() - started, 5)
            samples.append(sample)
            if on_response is not None:
                on_response()
            seq += 1
            if wait:
                await asyncio.sleep(min(wait, max(0.0, window_end - time.perf_counter())))

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(client_loop(i, client)) for i in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=duration_s + drain_timeout_s)
        for task in pending:  # the drain ran out: count what is still in flight as abandoned
            task.cancel()
        abandoned = len(pending)
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - started
    return {"samples": samples, "window_s": duration_s, "elapsed_s": round(elapsed, 4), "abandoned": abandoned}


def summarize_level(level: dict, concurrency: int) -> dict:
    """Throughput, latency percentiles of the 200s, error and 503 rates for one level."""
    from benchlib import describe, percentile

    samples = level["samples"]
    ok = [s for s in samples if s.get("status") == 200]
    total = len(samples)
    last_end = max((s["end_s"] for s in samples), default=level["elapsed_s"])
    latencies = [s["latency_s"] for s in ok]
    codes: dict[str, int] = {}
    for s in samples:
        if s.get("status") != 200:
            key = str(s.get("status")) + (f" {s['error_code']}" if s.get("error_code") else "") + (f" {s['exception']}" if s.get("exception") else "")
            codes[key] = codes.get(key, 0) + 1
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": len(ok),
        "throughput_rps": round(len(ok) / last_end, 4) if last_end else None,
        "elapsed_s": round(last_end, 3),
        "window_s": level["window_s"],
        "p50_s": round(percentile(latencies, 50), 4) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 4) if latencies else None,
        "p99_s": round(percentile(latencies, 99), 4) if latencies else None,
        "latency": describe(latencies),
        "error_rate": round((total - len(ok)) / total, 4) if total else None,
        "rate_503": round(sum(1 for s in samples if s.get("status") == 503) / total, 4) if total else None,
        "errors": codes,
        "abandoned_in_flight": level.get("abandoned", 0),
    }
