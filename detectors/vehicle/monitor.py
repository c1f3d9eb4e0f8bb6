"""FleetMonitor: positions in, vehicle-supervision alerts out (五车监管).

Filters, then the fix's context computed once (its metric point, the segment since the vehicle's
previous fix, the local minute, working hours), then each rule that applies to the vehicle (rules/,
one module each). Pure: no I/O and no clock reads; time comes from the positions and from `tick(now)`,
which the runtime calls every few seconds (offline detection, shift-end coverage reports).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

from core.model import DetectorOutput, Position

from . import rules
from .config import FleetConfig
from .filters import HISTORY, LIVE, PositionFilter
from .geometry import LocalPlane, PolygonLayer
from .identity import TerminalDirectory
from .rules import Clock, Fix, Vehicle
from .rules.coverage import Coverage
from .timewin import parse_window
from .world import World

MAX_SPELLINGS = 10_000  # device spellings remembered beside the vehicle ids (bounded: any string may arrive)


class FleetMonitor:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.world = World(config)
        self.filter = PositionFilter(config.filters)
        self.terminals = TerminalDirectory.from_vehicles(config.vehicles)  # the one terminal -> vehicle map
        self.rules = config.rules
        self.enabled_rules = rules.build(config.rules, self.world)  # in the order each fix sees them
        self.unregistered = rules.Unregistered(config.rules.unregistered, self.world)
        self._coverage = next((r for r in self.enabled_rules if isinstance(r, Coverage)), None)
        self._by_id: dict[str, Vehicle] = {}
        for vc in config.vehicles:
            hours = tuple(parse_window(w) for w in vc.working_hours)
            v = self._by_id[vc.id] = Vehicle(vc, hours, self.world.mask(hours), config.track_points)
            for rule in self.enabled_rules:
                rule.attach(v)
        # Position.device -> vehicle: the vehicle ids (sources resolve terminals to them, see
        # identity.py), plus the terminal spellings of positions that come unresolved (tests, benches)
        self._by_device: dict[str, Vehicle] = dict(self._by_id)
        self._fix = Fix()  # filled in place for each fix
        self._seg_gap = config.segment_max_gap_s
        self._lt_lo = self._lt_hi = 0.0  # the cached local minute [lo, hi) and its values
        self._lt_local, self._lt_minute = self.world.local(0), 0
        self._epoch: dict[datetime, float] = {}  # see _epoch_of

    @property
    def plane(self) -> LocalPlane | None:
        return self.world.plane

    @property
    def zone_layer(self) -> PolygonLayer:
        return self.world.zone_layer

    @property
    def counts(self) -> dict[str, int]:
        return {"unregistered": self.unregistered.count,
                "history_late": self._coverage.late if self._coverage is not None else 0}

    def _epoch_of(self, when: datetime) -> float:
        """datetime.timestamp() costs more than a dict lookup, and a fleet's fixes share their seconds
        (datetimes cache their hash): remember the recent ones. Not a repeated wall time (fold=1): it
        compares equal to its fold=0 twin, an hour apart."""
        t = when.timestamp()
        if not when.fold:
            if len(self._epoch) >= 4096:
                self._epoch.clear()
            self._epoch[when] = t
        return t

    def _local_minute(self, t: float) -> tuple[datetime, int]:
        """Local time (to the minute: every window is minute-granular) of epoch `t`, cached."""
        local = self.world.local(t).replace(second=0, microsecond=0)
        self._lt_lo = local.timestamp()
        self._lt_hi = self._lt_lo + 60.0
        self._lt_local, self._lt_minute = local, local.hour * 60 + local.minute
        return self._lt_local, self._lt_minute

    def _vehicle_of(self, device: str) -> Vehicle | None:
        return self._by_id.get(self.terminals.canonical(device))

    # ------------------------------------------------------------------ positions

    def process(self, p: Position, received_at: datetime | None = None) -> list[DetectorOutput]:
        """Run the filters and every rule on one fix. `received_at` (when the gateway got it; the
        source knows, this pure class does not) bounds the future-timestamp filter."""
        when = p.time
        t = self._epoch.get(when)
        if t is None or when.fold:
            t = self._epoch_of(when)
        verdict = self.filter.check(p, received_at, t)
        if verdict != LIVE and verdict != HISTORY:
            return []
        lon, lat = p.lon, p.lat
        plane = self.world.plane or self.world.place_plane(lon, lat)
        v = self._by_device.get(p.device)
        if v is None:
            vehicle = self.terminals.vehicle(p.device)
            if vehicle is None:
                return self.unregistered.process(p) if verdict == LIVE else []  # type: ignore[return-value]
            v = self._by_id[vehicle]
            if len(self._by_device) < len(self._by_id) + MAX_SPELLINGS:
                self._by_device[p.device] = v  # remember the spelling this terminal uses
        f = self._fix
        f.v, f.p, f.t = v, p, t
        f.x, f.y = x, y = (lon - plane.lon0) * plane.kx, (lat - plane.lat0) * plane.ky  # plane.xy, inlined
        if self._lt_lo <= t < self._lt_hi:  # most fixes of a fleet fall in the same local minute
            f.local, f.minute = self._lt_local, self._lt_minute
        else:
            f.local, f.minute = self._local_minute(t)
        if verdict == HISTORY:
            for history, st in v.on_history:
                history(st, f)
            return []
        last_t = v.last_t
        f.seg = seg = last_t is not None and t - last_t <= self._seg_gap
        f.x0, f.y0 = (v.last_x, v.last_y) if seg else (x, y)
        f.speed = speed = p.speed_kmh
        f.in_hours = v.hours_mask[f.minute] != 0
        v.track.append((t, lon, lat, speed))
        out: list[DetectorOutput] = []
        for process, st in v.on_fix:
            process(st, f, out)
        v.last_t, v.last_x, v.last_y, v.last_lon, v.last_lat = t, x, y, lon, lat
        return out

    # ------------------------------------------------------------------ clock

    def tick(self, now: datetime, *, only: Collection[str] | None = None,
             exclude: Collection[str] = ()) -> list[DetectorOutput]:
        """Offline detection and shift-end coverage reports; call every few seconds.

        `only` / `exclude` name terminals (as positions spell them) whose clock this is: a replay that
        keeps its recorded times ticks its own vehicles with recorded time, and the wall-clock tick
        leaves them out (otherwise an old recording would look offline on every tick)."""
        vehicles: Iterable[Vehicle] = self._by_id.values()
        if only is not None:
            vehicles = {id(v): v for v in map(self._vehicle_of, only) if v is not None}.values()
        elif exclude:
            skip = {id(v) for v in map(self._vehicle_of, exclude) if v is not None}
            vehicles = [v for v in vehicles if id(v) not in skip]
        ts = now.timestamp()
        clock = Clock(now, ts, *self._local_minute(ts))
        out: list[DetectorOutput] = []
        for rule in self.enabled_rules:
            rule.tick(clock, vehicles, out)
        return out
