"""Account-wide limits of the provider: submissions per second and concurrent tasks, per model.

DashScope counts both per Alibaba Cloud account (all keys and RAM users together, contract
§11): 10 submissions/s and 5 concurrent tasks for each try-on model. Callers queue here rather
than fail. The interface is three async calls, so one implementation can live in-process and
another in a named Ray actor that every replica of a Serve deployment shares.

Task slots are leases: a holder that dies without releasing (a crashed replica) frees its slot
when the lease runs out. The caller picks the token, so a cancelled `acquire_task` can always
be undone with `release_task(token)`, whether or not the slot had been granted.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_ACTOR_NAME = "pexir_tryon_alibaba_account_limiter"
DEFAULT_ACTOR_NAMESPACE = "pexir-tryon"


@runtime_checkable
class AccountLimiter(Protocol):
    async def acquire_task(self, key: str, token: str, *, timeout_s: float, lease_s: float) -> None:
        """Wait (FIFO) for a task slot; raise TimeoutError after timeout_s."""
        ...

    async def release_task(self, key: str, token: str) -> None:
        """Give the slot back, or stop waiting for it. Idempotent."""
        ...

    async def acquire_submit(self, key: str, *, timeout_s: float) -> None:
        """Wait for the right to submit once; raise TimeoutError after timeout_s."""
        ...


class _TaskGate:
    def __init__(self, limit: int, clock: Clock):
        self.limit = limit
        self.clock = clock
        self.held: dict[str, float] = {}  # token -> lease expiry
        self.waiters: collections.OrderedDict[str, tuple[asyncio.Future, float]] = collections.OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, until in self.held.items() if until <= now]:
            del self.held[token]

    def _wake(self) -> None:
        self._expire()
        while self.waiters and len(self.held) < self.limit:
            token, (fut, lease_s) = self.waiters.popitem(last=False)
            if fut.done():
                continue
            self.held[token] = self.clock() + lease_s
            fut.set_result(None)

    def next_expiry_in(self) -> float | None:
        if not self.held:
            return None
        return max(0.0, min(self.held.values()) - self.clock())

    def release(self, token: str) -> None:
        self.held.pop(token, None)
        waiter = self.waiters.pop(token, None)
        if waiter is not None and not waiter[0].done():
            waiter[0].cancel()
        self._wake()


class _RateGate:
    def __init__(self, per_s: float, clock: Clock, sleep: Sleep):
        self.capacity = max(1, int(per_s))
        self.window = self.capacity / per_s
        self.clock = clock
        self.sleep = sleep
        self.stamps: collections.deque[float] = collections.deque()
        self.lock = asyncio.Lock()


class InProcessAccountLimiter:
    """The limits for one process (tests, the CLI, a single replica)."""

    def __init__(
        self,
        max_submits_per_s: float = 10.0,
        max_concurrent_tasks: int = 5,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ):
        if max_submits_per_s <= 0 or max_concurrent_tasks < 1:
            raise ValueError("limits must be positive")
        self.max_submits_per_s = max_submits_per_s
        self.max_concurrent_tasks = max_concurrent_tasks
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, _TaskGate] = {}
        self._rates: dict[str, _RateGate] = {}

    def __repr__(self) -> str:
        return f"InProcessAccountLimiter(max_submits_per_s={self.max_submits_per_s}, max_concurrent_tasks={self.max_concurrent_tasks})"

    def _task_gate(self, key: str) -> _TaskGate:
        gate = self._tasks.get(key)
        if gate is None:
            gate = self._tasks[key] = _TaskGate(self.max_concurrent_tasks, self._clock)
        return gate

    def _rate_gate(self, key: str) -> _RateGate:
        gate = self._rates.get(key)
        if gate is None:
            gate = self._rates[key] = _RateGate(self.max_submits_per_s, self._clock, self._sleep)
        return gate

    def running(self, key: str) -> int:
        gate = self._tasks.get(key)
        if gate is None:
            return 0
        gate._expire()
        return len(gate.held)

    def waiting(self, key: str) -> int:
        gate = self._tasks.get(key)
        return 0 if gate is None else sum(1 for fut, _ in gate.waiters.values() if not fut.done())

    async def acquire_task(self, key: str, token: str, *, timeout_s: float, lease_s: float) -> None:
        gate = self._task_gate(key)
        gate._expire()
        if token in gate.held:
            return
        if not gate.waiters and len(gate.held) < gate.limit:
            gate.held[token] = self._clock() + lease_s
            return
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        gate.waiters[token] = (fut, lease_s)
        end = self._clock() + timeout_s
        try:
            while not fut.done():
                remaining = end - self._clock()
                if remaining <= 0:
                    raise TimeoutError("no task slot within the timeout")
                # Wake up at the next lease expiry too: a dead holder's slot comes back then.
                expiry = gate.next_expiry_in()
                wait = remaining if expiry is None else min(remaining, expiry + 1e-3)
                await asyncio.wait({fut}, timeout=wait)
                if not fut.done():
                    gate._wake()
            fut.result()  # raises CancelledError if release() withdrew us
        except BaseException:
            # Timed out, cancelled or withdrawn: leave no waiter and no granted slot behind.
            gate.waiters.pop(token, None)
            if fut.done() and not fut.cancelled():
                gate.held.pop(token, None)
            elif not fut.done():
                fut.cancel()
            gate._wake()
            raise

    async def release_task(self, key: str, token: str) -> None:
        self._task_gate(key).release(token)

    async def acquire_submit(self, key: str, *, timeout_s: float) -> None:
        gate = self._rate_gate(key)
        end = self._clock() + timeout_s
        try:
            await asyncio.wait_for(gate.lock.acquire(), timeout=max(0.0, timeout_s))
        except asyncio.TimeoutError:
            raise TimeoutError("no submit slot within the timeout") from None
        try:
            while True:
                now = self._clock()
                while gate.stamps and gate.stamps[0] <= now - gate.window:
                    gate.stamps.popleft()
                if len(gate.stamps) < gate.capacity:
                    gate.stamps.append(now)
                    return
                wait = gate.stamps[0] + gate.window - now
                if now + wait > end:
                    raise TimeoutError("no submit slot within the timeout")
                await gate.sleep(wait)
        finally:
            gate.lock.release()


class _LimiterActor:
    """Body of the shared Ray actor: an InProcessAccountLimiter behind async methods."""

    def __init__(self, max_submits_per_s: float, max_concurrent_tasks: int):
        self._limiter = InProcessAccountLimiter(max_submits_per_s, max_concurrent_tasks)

    async def acquire_task(self, key: str, token: str, timeout_s: float, lease_s: float) -> bool:
        try:
            await self._limiter.acquire_task(key, token, timeout_s=timeout_s, lease_s=lease_s)
        except TimeoutError:
            return False
        return True

    async def release_task(self, key: str, token: str) -> None:
        await self._limiter.release_task(key, token)

    async def acquire_submit(self, key: str, timeout_s: float) -> bool:
        try:
            await self._limiter.acquire_submit(key, timeout_s=timeout_s)
        except TimeoutError:
            return False
        return True

    async def limits(self) -> tuple[float, int]:
        return self._limiter.max_submits_per_s, self._limiter.max_concurrent_tasks


class RayAccountLimiter:
    """The limits shared by every process of a Ray cluster, through one named actor.

    The actor is created by whichever replica comes first (`get_if_exists=True`) and outlives
    them (`lifetime="detached"`); its limits are those of that first replica. `ray` is imported
    on first use only.
    """

    def __init__(
        self,
        max_submits_per_s: float = 10.0,
        max_concurrent_tasks: int = 5,
        *,
        name: str = DEFAULT_ACTOR_NAME,
        namespace: str = DEFAULT_ACTOR_NAMESPACE,
    ):
        self.max_submits_per_s = max_submits_per_s
        self.max_concurrent_tasks = max_concurrent_tasks
        self.name = name
        self.namespace = namespace
        self._actor = None

    def __repr__(self) -> str:
        return f"RayAccountLimiter(name={self.name!r}, namespace={self.namespace!r})"

    def _handle(self):
        if self._actor is None:
            import ray  # lazy: importing this module must not import ray

            actor_cls = ray.remote(_LimiterActor)
            self._actor = actor_cls.options(
                name=self.name,
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=1000,
                max_restarts=-1,
            ).remote(self.max_submits_per_s, self.max_concurrent_tasks)
        return self._actor

    async def acquire_task(self, key: str, token: str, *, timeout_s: float, lease_s: float) -> None:
        handle = self._handle()
        try:
            granted = await handle.acquire_task.remote(key, token, timeout_s, lease_s)
        except asyncio.CancelledError:
            # The actor may grant the slot after we stopped waiting: withdraw by token.
            handle.release_task.remote(key, token)
            raise
        if not granted:
            raise TimeoutError("no task slot within the timeout")

    async def release_task(self, key: str, token: str) -> None:
        await self._handle().release_task.remote(key, token)

    async def acquire_submit(self, key: str, *, timeout_s: float) -> None:
        if not await self._handle().acquire_submit.remote(key, timeout_s):
            raise TimeoutError("no submit slot within the timeout")


def default_limiter(max_submits_per_s: float, max_concurrent_tasks: int) -> AccountLimiter:
    """The Ray-actor limiter inside a Ray worker or driver that has Ray initialised, else in-process."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return RayAccountLimiter(max_submits_per_s, max_concurrent_tasks)
    return InProcessAccountLimiter(max_submits_per_s, max_concurrent_tasks)
