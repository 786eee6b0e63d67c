"""Retention in the background, and the operator's purge.

``run_sweeper`` is the server's background task: it runs ``store.sweep`` in a worker thread every
``interval_s`` seconds until ``stop_event`` is set, and logs what each sweep deleted.
``purge_user_command`` is what ``pexir-tryon purge --user ID`` calls.
"""

from __future__ import annotations

import asyncio
import logging

from pexir_tryon.config import Settings

from .records import PurgeReport
from .store import TryOnStore

log = logging.getLogger("pexir_tryon.store.sweeper")


async def run_sweeper(store: TryOnStore, interval_s: float, stop_event: asyncio.Event) -> None:
    """Sweep now, then every ``interval_s`` seconds, until ``stop_event`` is set. A failed sweep is
    logged and retried at the next interval; it never ends the task."""
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    while not stop_event.is_set():
        try:
            report = await asyncio.to_thread(store.sweep)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed; retrying at the next interval")
        else:
            level = logging.INFO if report.total else logging.DEBUG
            log.log(level, "sweep done", extra={"sweep_" + k: v for k, v in report.to_json().items()})
        try:
            await asyncio.wait_for(stop_event.wait(), timeout=interval_s)
        except asyncio.TimeoutError:
            pass


def purge_user_command(settings: Settings, user_id: str) -> PurgeReport:
    """Remove every upload, result, audit record and blob of one user from the configured store."""
    store = TryOnStore.from_settings(settings)
    try:
        return store.purge_user(user_id)
    finally:
        store.close()
