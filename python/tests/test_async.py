"""The asyncio client against real nodes: the event loop keeps running while
a coroutine waits for a lock, and cancellation leaves nothing held."""

from __future__ import annotations

import asyncio
import time
from typing import List

import pytest

from redislock_quorum import AsyncClient, LockLost, LockTaken, LockTimeout

from conftest import Nodes, wait_until


def test_async_with_holds_one_at_a_time_and_never_blocks_the_loop(nodes5: Nodes) -> None:
    async def main() -> None:
        client = AsyncClient(nodes5.urls, ttl=5)
        order: List[int] = []
        gaps: List[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def worker() -> None:
            async with client.lock("jobs:async", wait=10) as lease:
                order.append(lease.fence)
                await asyncio.sleep(0.3)  # the others wait in the nodes' queues meanwhile
                lease.check()

        tick = asyncio.create_task(ticker())
        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(3)))
        took = time.monotonic() - t
        done.set()
        await tick
        assert 0.85 < took < 3.0, took  # one after the other
        assert order == sorted(order) and len(set(order)) == 3
        # The loop ran all along: no gap near the 0.3 s holds.
        assert max(gaps) < 0.15, max(gaps)

    asyncio.run(main())


def test_async_by_hand_and_errors(nodes3: Nodes) -> None:
    async def main() -> None:
        a, b = AsyncClient(nodes3.urls), AsyncClient(nodes3.urls)
        lease = await a.try_acquire("jobs:ahand", ttl=2)
        with pytest.raises(LockTaken):
            await b.try_acquire("jobs:ahand", ttl=2)
        with pytest.raises(LockTimeout):
            await b.acquire("jobs:ahand", ttl=2, wait=0.2)
        await a.extend(lease, ttl=10)
        assert lease.validity > 8
        released = await a.release(lease)
        assert released.held >= 2
        with pytest.raises(LockLost):
            await a.extend(lease, ttl=1)
        again = await b.acquire("jobs:ahand", ttl=2, wait=1)
        assert again.fence > lease.fence
        await b.release(again)

    asyncio.run(main())


def test_cancelling_a_waiting_acquire_leaves_nothing_held(nodes5: Nodes) -> None:
    async def main() -> None:
        holder, waiter, third = (AsyncClient(nodes5.urls) for _ in range(3))
        held = await holder.try_acquire("jobs:cancel", ttl=10)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiter.acquire("jobs:cancel", wait=10), timeout=0.3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiter.lock("jobs:cancel", wait=10).__aenter__(), timeout=0.3)
        # The cancelled waits left the nodes' queues.
        assert wait_until(lambda: nodes5.waiting_clients() == [0] * 5, 1.0), nodes5.waiting_clients()
        await holder.release(held)
        assert await waiter.settle(2.0)
        # Nothing was handed to the cancelled waiters: the lock is free.
        lease = await third.try_acquire("jobs:cancel", ttl=5)
        await third.release(lease)
        assert await third.settle(2.0)

    asyncio.run(main())
    assert nodes5.holders("jobs:cancel") == [False] * 5
