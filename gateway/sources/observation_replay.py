"""Replays recorded observations (positions or readings) at a speed factor, as a live source would.

With `shift_to_now`, times are moved so that the first observation happens now (each loop of a
looping replay moves on by the recording's length), so rules and the time series see a live feed.
Without it, observations keep their recorded times, and the router runs their devices' time-based
rules on the recording's clock (see gateway/routing.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def _shifted(obs: T, offset: timedelta) -> T:
    """A copy of `obs` (a Position or a Reading, both NamedTuples) with its time moved."""
    return obs._replace(time=obs.time + offset)  # type: ignore[attr-defined]


async def replay(observations: Sequence[T], emit: Callable[[T], None], stop: asyncio.Event, *,
                 speed: float = 1.0, loop: bool = False, shift_to_now: bool = True,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    """Emit each observation at its (scaled) time; returns how many were emitted."""
    if not observations:
        return 0
    ordered = sorted(observations, key=lambda o: o.time)  # type: ignore[attr-defined]
    first, last = ordered[0].time, ordered[-1].time  # type: ignore[attr-defined]
    length = (last - first) + timedelta(seconds=1)
    emitted, offset = 0, (now() - first) if shift_to_now else timedelta(0)
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        for obs in ordered:
            if stop.is_set():
                break
            if speed > 0:
                due = started + (obs.time - first).total_seconds() / speed  # type: ignore[attr-defined]
                delay = due - asyncio.get_running_loop().time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                        break
                    except TimeoutError:
                        pass
            elif emitted % 500 == 0:
                await asyncio.sleep(0)  # as fast as possible, but let the loop breathe
            emit(_shifted(obs, offset) if offset else obs)
            emitted += 1
        if not loop:
            break
        offset += length
    return emitted


class ObservationReplay(Generic[T]):
    """A recorded feed as a component: `emit(observation, recorded_clock)` gets each one at its time."""

    def __init__(self, name: str, observations: Sequence[T], emit: Callable[..., None], *, speed: float,
                 loop: bool, shift_to_now: bool) -> None:
        self.name = name
        self.observations = observations
        self._emit = emit
        self.speed, self.loop, self.shift_to_now = speed, loop, shift_to_now
        self.emitted = 0

    def stats(self) -> dict[str, Any]:
        return {"observations": len(self.observations), "emitted": self.emitted, "speed": self.speed,
                "shift_to_now": self.shift_to_now}

    def _one(self, observation: T) -> None:
        self.emitted += 1
        self._emit(observation, recorded_clock=not self.shift_to_now)

    async def run(self, stop: asyncio.Event) -> None:
        count = await replay(self.observations, self._one, stop, speed=self.speed, loop=self.loop,
                             shift_to_now=self.shift_to_now)
        log.info("%s finished: %d observations", self.name, count)
