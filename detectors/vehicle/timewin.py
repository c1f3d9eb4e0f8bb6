"""Local-time windows "HH:MM-HH:MM" (working hours, zone bans, shifts), possibly crossing midnight."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) in minutes after local midnight; end < start means the window crosses midnight."""

    start: int
    end: int
    text: str

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    @property
    def minutes(self) -> int:
        return (self.end - self.start) % 1440 or 1440

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def instance(self, local: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence of this window (start, end as local datetimes) that contains `local`."""
        minute = local.hour * 60 + local.minute
        if not self.contains(minute):
            return None
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight + timedelta(minutes=self.start)
        if start > local:  # crossing window, we are in its after-midnight part
            start -= timedelta(days=1)
        return start, start + timedelta(minutes=self.minutes)


def parse_window(text: str) -> Window:
    """Parse "HH:MM-HH:MM"; raises ValueError with a plain sentence on bad input."""
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"time window {text!r} is not of the form HH:MM-HH:MM (for example 06:00-22:00)")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    for h, mi in ((h1, m1), (h2, m2)):
        if h > 24 or mi > 59 or (h == 24 and mi != 0):
            raise ValueError(f"time window {text!r} has an impossible time {h:02d}:{mi:02d}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == 1440:
        raise ValueError(f"time window {text!r} cannot start at 24:00")
    if start == end:
        raise ValueError(f"time window {text!r} starts and ends at the same time; use 00:00-24:00 for all day")
    return Window(start, end, text.strip())


def any_contains(windows: tuple[Window, ...], minute: int) -> bool:
    return any(w.contains(minute) for w in windows)


def minute_mask(windows: tuple[Window, ...]) -> bytes:
    """One byte per minute of the day, 1 inside any of the windows: a per-fix test becomes one index.
    No windows means "always"."""
    if not windows:
        return b"\x01" * 1440
    return bytes(any(w.contains(m) for w in windows) for m in range(1440))
