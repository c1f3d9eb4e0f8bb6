"""The inference queue serves groups in turn: a big group's backlog does not delay a small group."""

from __future__ import annotations

import asyncio

from gateway.patrol.fair_queue import FairQueue


def test_round_robin_across_groups() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(100):
        q.put("rest", f"r{i}")
    q.put("key", "k0")
    q.put("key", "k1")
    order = [q.get_nowait() for _ in range(6)]
    assert order == ["r0", "k0", "r1", "k1", "r2", "r3"]
    assert len(q) == 96


def test_get_waits_for_work() -> None:
    async def main() -> str:
        q: FairQueue[str] = FairQueue()
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0.01)
        assert not getter.done()
        q.put("g", "x")
        return await asyncio.wait_for(getter, 5)

    assert asyncio.run(main()) == "x"
