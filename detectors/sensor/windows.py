"""Rolling windows on one-minute buckets: rain totals over 1 h .. 24 h and the recent level series.

A rain gauge reporting every 10 s keeps at most 1,440 buckets for 24 h instead of 8,640 readings,
and each window's total is a running sum moved along as minutes pass, so a report costs O(windows)
rather than a sum over the whole window. Resolution is one minute: a window of W minutes holds the
current minute and the W - 1 before it.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def minute_of(t: datetime) -> int:
    return math.floor(t.timestamp() / 60)


def minute_start(minute: int, tz: Any) -> datetime:
    return (EPOCH + timedelta(minutes=minute)).astimezone(tz)


class RollingSums:
    """Running totals of increments over several windows (whole minutes)."""

    def __init__(self, windows_s: list[float]) -> None:
        self.windows = [max(1, math.ceil(w / 60)) for w in windows_s]  # minutes, same order as given
        self.buckets: deque[list] = deque()  # [minute, mm], oldest first
        self.totals = [0.0] * len(self.windows)
        self._starts = [0] * len(self.windows)  # absolute index of each window's first bucket
        self._base = 0  # absolute index of buckets[0]
        self.minute: int | None = None  # the latest minute the sums stand at

    def add(self, t: datetime, amount: float) -> None:
        minute = minute_of(t)
        self.advance(minute)
        if self.buckets and self.buckets[-1][0] == minute:
            self.buckets[-1][1] += amount
        else:
            self.buckets.append([minute, amount])
        for k in range(len(self.totals)):
            self.totals[k] += amount

    def advance_to(self, t: datetime) -> None:
        self.advance(minute_of(t))

    def advance(self, minute: int) -> None:
        if self.minute is not None and minute <= self.minute:
            return
        self.minute = minute
        end = self._base + len(self.buckets)
        for k, width in enumerate(self.windows):
            lo = minute - width  # buckets at or before lo have left window k
            i = self._starts[k]
            while i < end and self.buckets[i - self._base][0] <= lo:
                self.totals[k] -= self.buckets[i - self._base][1]
                i += 1
            self._starts[k] = i
            if i == end:
                self.totals[k] = 0.0  # empty window: drop the float residue of the running sum
        oldest = min(self._starts)
        while self._base < oldest:
            self.buckets.popleft()
            self._base += 1

    def total(self, k: int) -> float:
        return round(max(0.0, self.totals[k]), 6)

    def total_over(self, t: datetime, window_s: float) -> float:
        """Total of any window ending now (summed from the buckets: for occasional queries)."""
        lo = minute_of(t) - max(1, math.ceil(window_s / 60))
        return round(sum(mm for minute, mm in self.buckets if minute > lo), 6)

    def export(self) -> dict[str, Any]:
        return {"minute": self.minute, "buckets": [list(b) for b in self.buckets]}

    @classmethod
    def restore(cls, windows_s: list[float], data: dict[str, Any]) -> RollingSums:
        """Rebuilt from the buckets, so the totals are exact and the windows may differ from the saved ones."""
        sums = cls(windows_s)
        for minute, mm in data.get("buckets", []):
            sums.advance(int(minute))
            if sums.buckets and sums.buckets[-1][0] == int(minute):
                sums.buckets[-1][1] += float(mm)
            else:
                sums.buckets.append([int(minute), float(mm)])
            for k in range(len(sums.totals)):
                sums.totals[k] += float(mm)
        if data.get("minute") is not None:
            sums.advance(int(data["minute"]))
        return sums


class MinuteSeries:
    """The highest value per minute over the last `span_s`: the evidence chart and the neighbours' rise."""

    def __init__(self, span_s: float) -> None:
        self.span = max(1, math.ceil(span_s / 60))
        self.points: deque[list] = deque()  # [minute, max value]

    def add(self, t: datetime, value: float) -> None:
        minute = minute_of(t)
        if self.points and self.points[-1][0] == minute:
            self.points[-1][1] = max(self.points[-1][1], value)
        else:
            self.points.append([minute, value])
        while self.points and self.points[0][0] <= minute - self.span:
            self.points.popleft()

    def since(self, t: datetime, window_s: float) -> list[tuple[int, float]]:
        lo = minute_of(t) - max(1, math.ceil(window_s / 60))
        return [(m, v) for m, v in self.points if m > lo]

    def rise(self, t: datetime, window_s: float) -> float:
        """How far the latest value is above the lowest one within the window."""
        recent = self.since(t, window_s)
        return recent[-1][1] - min(v for _, v in recent) if recent else 0.0

    def export(self) -> list[list]:
        return [list(p) for p in self.points]

    @classmethod
    def restore(cls, span_s: float, points: list) -> MinuteSeries:
        series = cls(span_s)
        series.points.extend([int(m), float(v)] for m, v in points)
        return series
