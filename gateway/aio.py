"""Small asyncio helpers shared by the sources and sinks that keep connections alive."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any


def backoff_delay(attempt: int, first: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after `attempt` (1-based) failures: exponential with "equal jitter".

    The ceiling doubles per attempt up to `cap`; the delay is uniform in [ceiling/2, ceiling], so
    parts that failed together (replicas, cameras behind one switch) spread out, yet a retry never
    comes back immediately. The one backoff of the gateway: the supervisor, cameras and case
    delivery all use it.
    """
    rng = rng or random
    ceiling = min(max(first, cap), first * 2.0 ** min(max(attempt, 1) - 1, 60))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Backoff:
    """`backoff_delay` with its attempt counter: next() after each failure, reset() after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, max(first, cap)
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        return backoff_delay(self.attempts, self.first, self.cap)

    def reset(self) -> None:
        self.attempts = 0


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
