"""Helpers for tests of code that uses the store: a fake clock that only moves when told to."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone


class FakeClock:
    """A tz-aware UTC clock for ``TryOnStore(clock=...)``; ``advance`` moves it forward."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0, **kwargs) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds, **kwargs)
            return self._now
