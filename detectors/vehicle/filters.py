"""Position filters (Traccar-like): keep bad fixes out of the rules and count why.

`check` returns LIVE for a fix the rules should see, HISTORY for an old fix (a 0x0704 blind-area
supplement or an out-of-order point: stored, used for coverage, never re-alarming the present), or
the reason the fix was dropped. Every verdict is counted in `counts`.
"""

from __future__ import annotations

import math
from datetime import datetime

from core.model import Position

from .config import FilterConfig

LIVE = "live"
HISTORY = "history"
INVALID_FIX = "invalid_fix"
ZERO = "zero_or_out_of_range"
DUPLICATE = "duplicate"
FUTURE = "future"
JUMP = "impossible_jump"
OUT_OF_ORDER = "out_of_order"


_KY = 111195.0  # metres per degree of latitude
_RAD = math.pi / 180.0


class PositionFilter:
    """Per-device last accepted live fix: [epoch seconds, lon, lat, consecutive jumps]."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config
        self._last: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        # read on every fix: copied out of the config once
        self._invalid_fix, self._zero, self._duplicates = config.invalid_fix, config.zero, config.duplicates
        self._future_s, self._jump_after = config.future_s, config.jump_accept_after
        self._max_speed_ms = None if config.max_speed_kmh is None else config.max_speed_kmh / 3.6
        self._out_of_order = HISTORY if config.out_of_order_as_history else OUT_OF_ORDER

    def _count(self, verdict: str) -> str:
        self.counts[verdict] = self.counts.get(verdict, 0) + 1
        return verdict

    def check(self, p: Position, received_at: datetime | None = None, t: float | None = None) -> str:
        """The verdict on one fix; `t` is p.time as epoch seconds when the caller has it already."""
        if not p.valid and self._invalid_fix:
            return self._count(INVALID_FIX)
        lon, lat = p.lon, p.lat
        if self._zero and ((lon == 0.0 and lat == 0.0) or not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0)):
            return self._count(ZERO)
        if t is None:
            t = p.time.timestamp()
        if received_at is not None and self._future_s is not None and t > received_at.timestamp() + self._future_s:
            return self._count(FUTURE)
        if p.history:
            return self._count(HISTORY)
        last = self._last.get(p.device)
        if last is None:
            self._last[p.device] = [t, lon, lat, 0.0]
            return self._count(LIVE)
        dt = t - last[0]
        if dt <= 0.0:
            if dt < 0.0:
                return self._count(self._out_of_order)
            if self._duplicates:
                return self._count(DUPLICATE)
        elif self._max_speed_ms is not None:
            # equirectangular distance is plenty for a plausibility test
            dx = (lon - last[1]) * _KY * math.cos(lat * _RAD)
            dy = (lat - last[2]) * _KY
            reach = self._max_speed_ms * dt
            if dx * dx + dy * dy > reach * reach:
                last[3] += 1
                if last[3] < self._jump_after:
                    return self._count(JUMP)
                # the terminal keeps reporting the new place: the old fix was the bad one
        last[0], last[1], last[2], last[3] = t, lon, lat, 0.0
        counts = self.counts  # the common case, inlined
        counts[LIVE] = counts.get(LIVE, 0) + 1
        return LIVE

