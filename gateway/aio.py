"""Small asyncio helpers shared by the sources and sinks that keep connections alive."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any


class Backoff:
    """Exponential backoff with jitter: first, 2*first, ... capped at `cap` seconds."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, max(first, cap)
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.0)  # jitter: replicas must not reconnect in lock-step

    def reset(self) -> None:
        self._next = self.first


async def wait_or_stop(stop_event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when the stop event was set meanwhile."""
    try:
        await asyncio.wait_for(stop_event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def race(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run the coroutines until the first one ends, cancel the rest, and re-raise its exception
    (e.g. a connection's reader noticing the broker went away, racing the stop event)."""
    tasks = {asyncio.create_task(c) for c in coros}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()
