"""Road coverage of one vehicle on one road during one shift, kept as a bitmap of road-length bins."""

from __future__ import annotations

import math


class ShiftCoverage:
    __slots__ = ("vehicle_id", "road_id", "start_ts", "end_ts", "length", "bin_m", "bins")

    def __init__(self, vehicle_id: str, road_id: str, start_ts: float, end_ts: float,
                 length_m: float, bin_m: float) -> None:
        self.vehicle_id, self.road_id = vehicle_id, road_id
        self.start_ts, self.end_ts = start_ts, end_ts
        self.length, self.bin_m = length_m, bin_m
        self.bins = bytearray(max(1, math.ceil(length_m / bin_m)))

    def cover(self, s0: float, s1: float) -> None:
        """Mark the stretch between two positions along the road (metres from its start)."""
        n = len(self.bins)
        a = max(0, min(n - 1, int(min(s0, s1) / self.bin_m)))
        b = max(0, min(n - 1, int(max(s0, s1) / self.bin_m)))
        self.bins[a : b + 1] = b"\x01" * (b - a + 1)

    @property
    def share(self) -> float:
        return sum(self.bins) / len(self.bins)

    @property
    def covered_m(self) -> float:
        return min(self.length, sum(self.bins) * self.bin_m)
