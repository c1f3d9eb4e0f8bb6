"""Road coverage: how much of each assigned road a sweeper or sprinkler covered at working speed during
each shift, reported when the shift ends (a low share opens an alert; enough closes it). History fixes
(blind-area supplements) count too, unless their shift was reported already."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from core.model import Alert

from ..config import CoverageRule
from ..geometry import Polyline
from ..timewin import Window, parse_window
from ..world import World
from .base import Clock, Fix, Outputs, Rule, Vehicle


class ShiftCoverage:
    """One vehicle on one road during one shift: a bitmap of road-length bins."""

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


Last = tuple[float, float, float]  # the previous fix on a road: epoch seconds, metres along it, shift start


@dataclass(slots=True)
class _Road:
    id: str
    name: str
    line: Polyline
    shifts: tuple[Window, ...]
    shift_mask: bytes | None  # minutes of the day inside a shift; None: the vehicle's hours apply


@dataclass(slots=True)
class CoverageState:
    roads: list[_Road]
    hint: dict[str, int] = field(default_factory=dict)  # road -> segment matched last time
    live: dict[str, Last] = field(default_factory=dict)  # road -> previous live fix on it
    past: dict[str, Last] = field(default_factory=dict)  # road -> previous history fix on it


class Coverage(Rule):
    config: CoverageRule

    def __init__(self, config: CoverageRule, world: World) -> None:
        super().__init__(config, world)
        self._roads: dict[str, _Road] = {}
        for rid, r in world.roads.items():
            shifts = tuple(parse_window(w) for w in r.cfg.shifts)
            self._roads[rid] = _Road(rid, r.cfg.name, r.line, shifts, world.mask(shifts) if shifts else None)
        self.records: dict[tuple[str, str, float], ShiftCoverage] = {}  # (vehicle, road, shift start) -> bins
        self.now: float | None = None  # the latest tick, epoch seconds
        self.late = 0  # history fixes whose shift was already reported
        self._shift_cache: dict[tuple, tuple[float, float] | None] = {}

    def state_for(self, v: Vehicle) -> CoverageState | None:
        if not v.cfg.assigned_roads:
            return None
        return CoverageState([self._roads[r] for r in v.cfg.assigned_roads])

    def process(self, st: CoverageState, f: Fix, out: Outputs) -> None:
        self._cover(st, st.live, f, history=False)

    def history(self, st: CoverageState, f: Fix) -> None:
        self._cover(st, st.past, f, history=True)

    def _cover(self, st: CoverageState, prev: dict[str, Last], f: Fix, history: bool) -> None:
        rule, v, t = self.config, f.v, f.t
        working = rule.min_kmh <= f.p.speed_kmh <= rule.max_kmh
        for road in st.roads:
            inst = self._shift(v, road, f.local, f.minute) if working else None
            if inst is None:
                prev.pop(road.id, None)
                continue
            d, s, st.hint[road.id] = road.line.locate(f.x, f.y, st.hint.get(road.id, 0), rule.match_m)
            if d > rule.match_m:
                prev.pop(road.id, None)
                continue
            start, end = inst
            key = (v.id, road.id, start)
            acc = self.records.get(key)
            if acc is None:
                if history and self.now is not None and end <= self.now:
                    self.late += 1  # its shift was already reported
                    continue
                acc = self.records[key] = ShiftCoverage(v.id, road.id, start, end, road.line.length, rule.bin_m)
            last = prev.get(road.id)
            if last is not None and last[2] == start and abs(t - last[0]) <= rule.max_gap_s:
                acc.cover(last[1], s)
            else:
                acc.cover(s, s)
            prev[road.id] = (t, s, start)

    def _shift(self, v: Vehicle, road: _Road, local: datetime, minute: int) -> tuple[float, float] | None:
        """(start, end) epoch seconds of the shift containing `local`, cached per local minute."""
        if not (road.shift_mask or v.hours_mask)[minute]:
            return None  # outside every window (empty windows pass here, and find no shift below)
        windows = road.shifts or v.hours
        key = (windows, local)
        hit = self._shift_cache.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        if len(self._shift_cache) > 10_000:
            self._shift_cache.clear()
        found = None
        for w in windows:
            inst = w.instance(local)
            if inst is not None:
                found = (inst[0].timestamp(), inst[1].timestamp())
                break
        self._shift_cache[key] = found
        return found

    def tick(self, clock: Clock, vehicles: Iterable[Vehicle], out: Outputs) -> None:
        ts = clock.ts
        self.now = ts if self.now is None else max(self.now, ts)
        ticked: dict[str, Vehicle] = {}
        for v in vehicles:
            ticked[v.id] = v
            st = self.states.get(v.id)
            if st is None:
                continue
            for road in st.roads:  # open an empty record so a vehicle that never came still gets a report
                inst = self._shift(v, road, clock.local, clock.minute)
                if inst is not None and (v.id, road.id, inst[0]) not in self.records:
                    self.records[(v.id, road.id, inst[0])] = ShiftCoverage(
                        v.id, road.id, inst[0], inst[1], road.line.length, self.config.bin_m)
        for key, acc in list(self.records.items()):
            if acc.end_ts <= ts and acc.vehicle_id in ticked:
                del self.records[key]
                out.append(self._report(ticked[acc.vehicle_id], acc))

    def _report(self, v: Vehicle, acc: ShiftCoverage) -> Alert:
        rule, world = self.config, self.world
        road = self._roads[acc.road_id]
        share = acc.share
        low = share < rule.min_share
        mid = road.line.line.interpolate(0.5, normalized=True)
        lon, lat = world.plane.lonlat(mid.x, mid.y)  # type: ignore[union-attr]
        start, end = world.local(acc.start_ts), world.local(acc.end_ts)
        return self.alert(
            v, "open" if low else "closed", end, place=acc.road_id, lon=lon, lat=lat,
            severity=rule.low_severity if low else rule.severity,
            facts={"share": round(share, 3), "covered_m": round(acc.covered_m), "road_length_m": round(acc.length),
                   "road_name": road.name, "shift_start": start.isoformat(), "shift_end": end.isoformat(),
                   "min_share": rule.min_share},
            message=f"{v.label} covered {share:.0%} of road {road.name or road.id} "
                    f"during shift {start:%H:%M}-{end:%H:%M}")
