"""Forbidden zones: a vehicle of a barred type entering a zone while its ban holds (day and time window).

The segment from the previous fix is tested, so a zone crossed between two sparse fixes is caught; the
alert is placed where the segment first went into the zone. The edge (within geometry.EDGE_M) is outside
for entering and inside for staying: a truck on the road that bounds a zone never enters it, and one that
entered stays in until a fix lies off the zone, so standing on the edge neither chatters nor escapes. Each vehicle type gets a layer holding only the
zones that bar it, so the usual fix costs one cached cell lookup that finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.model import Alert, Position

from ..config import ForbiddenZoneRule
from ..geometry import PolygonLayer
from ..timewin import parse_window
from ..world import Area, World
from .base import Fix, Outputs, Rule, Vehicle


@dataclass(slots=True)
class _Zone:
    area: Area
    days: frozenset[int]
    mask: bytes  # minute of the day -> 1 while the ban is on
    every_day: bool

    def active(self, local: datetime, minute: int) -> bool:
        return bool(self.mask[minute]) and (self.every_day or local.isoweekday() in self.days)


@dataclass(slots=True)
class ZoneState:
    layer: PolygonLayer  # the zones barring this vehicle's type (shared by the type)
    zones: list[_Zone]  # by index in `layer`
    inside: dict[int, float] = field(default_factory=dict)  # zone index -> entered at (epoch seconds)


class ForbiddenZones(Rule):
    config: ForbiddenZoneRule

    def __init__(self, config: ForbiddenZoneRule, world: World) -> None:
        super().__init__(config, world)
        zones = [_Zone(a, frozenset(a.cfg.days), world.mask(tuple(parse_window(w) for w in a.cfg.windows)),
                       len(set(a.cfg.days)) >= 7) for a in world.zones]
        self._by_type: dict[str, tuple[PolygonLayer, list[_Zone]]] = {}
        for vtype in sorted({t for z in zones for t in z.area.cfg.applies_to}):
            keep = [z for z in zones if vtype in z.area.cfg.applies_to]
            layer = world.layer(z.area.shape for z in keep)
            if world.city is not None:  # answer every cell of the city now, not on a vehicle's first visit
                layer.prefill(*world.city.bounds)
            self._by_type[vtype] = (layer, keep)

    def state_for(self, v: Vehicle) -> ZoneState | None:
        found = self._by_type.get(v.cfg.type)
        return None if found is None else ZoneState(*found)

    def process(self, st: ZoneState, f: Fix, out: Outputs) -> None:
        near = st.layer.candidates(f.x0, f.y0, f.x, f.y)  # zones whose cells the segment touches
        if not near and not st.inside:
            return
        layer, zones, v, p, t = st.layer, st.zones, f.v, f.p, f.t
        x0, y0, x, y = f.x0, f.y0, f.x, f.y
        for i in near:
            if i in st.inside:
                continue
            z = zones[i]
            if not z.active(f.local, f.minute):
                continue
            hit = layer.entry(i, x0, y0, x, y)  # into the interior: touching the edge is not entering
            if hit is None:
                continue
            ex, ey, frac = hit
            elon, elat = self.world.plane.lonlat(ex, ey)  # type: ignore[union-attr]
            entered = v.last_t + frac * (t - v.last_t) if v.last_t is not None and (x0, y0) != (x, y) else t
            inside = layer.covers(i, x, y)  # ending on the edge, it is still in
            zc = z.area.cfg
            out.append(self.alert(
                v, "open", p.time, place=zc.id, lon=elon, lat=elat,
                facts={"zone": zc.id, "zone_name": zc.name, "speed_kmh": p.speed_kmh,
                       "entered_at": self.world.iso(round(entered, 3)), "crossed_between_fixes": not inside},
                message=f"{v.label} ({v.cfg.type}) entered forbidden zone {zc.name or zc.id}",
                evidence=self.evidence(v, [z.area.place], elon, elat, {"rule": self.config.name, "zone": zc.id})))
            if inside:
                st.inside[i] = entered
            else:  # passed through between two fixes: the episode is already over
                out.append(self._closed(v, p, zc.id, t - entered))
        for i, entered in list(st.inside.items()):
            z = zones[i]
            if layer.covers(i, x, y) and z.active(f.local, f.minute):
                continue
            del st.inside[i]
            out.append(self._closed(v, p, z.area.cfg.id, t - entered))

    def _closed(self, v: Vehicle, p: Position, zone: str, duration_s: float) -> Alert:
        return self.alert(v, "closed", p.time, place=zone, lon=p.lon, lat=p.lat,
                          facts={"zone": zone, "duration_s": round(duration_s, 1)})
