"""The account-wide limiter shared across replicas: one named Ray actor, however many handles."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pexir_tryon.backends.alibaba.limiter import RayAccountLimiter


def test_two_replicas_share_one_task_limit(ray_session):
    name = f"limiter-{uuid.uuid4().hex[:8]}"
    replica_a = RayAccountLimiter(10.0, 2, name=name)
    replica_b = RayAccountLimiter(10.0, 2, name=name)

    async def scenario():
        await replica_a.acquire_task("aitryon-plus", "t1", timeout_s=5, lease_s=60)
        await replica_b.acquire_task("aitryon-plus", "t2", timeout_s=5, lease_s=60)
        with pytest.raises(TimeoutError):  # the account's two slots are taken, whichever replica asks
            await replica_b.acquire_task("aitryon-plus", "t3", timeout_s=0.5, lease_s=60)
        waiting = asyncio.ensure_future(replica_b.acquire_task("aitryon-plus", "t4", timeout_s=10, lease_s=60))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # queued, not refused
        await replica_a.release_task("aitryon-plus", "t1")
        await asyncio.wait_for(waiting, 10)  # the freed slot goes to the waiting replica

    asyncio.run(scenario())


def test_a_lease_frees_the_slot_of_a_replica_that_died(ray_session):
    name = f"limiter-{uuid.uuid4().hex[:8]}"
    limiter = RayAccountLimiter(10.0, 1, name=name)

    async def scenario():
        await limiter.acquire_task("aitryon", "crashed-replica", timeout_s=5, lease_s=0.5)
        # Never released: the lease runs out and the next caller gets the slot.
        await RayAccountLimiter(10.0, 1, name=name).acquire_task("aitryon", "next", timeout_s=5, lease_s=60)

    asyncio.run(scenario())
