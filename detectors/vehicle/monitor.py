"""FleetMonitor: positions in, vehicle-supervision alerts out (五车监管).

Pure: no I/O and no clock reads; time comes from the positions and from `tick(now)`, which the
runtime calls every few seconds (offline detection, shift-end coverage reports).

Hot path (a registered vehicle, no violation): filter, project, one cached cell lookup for zones,
a pure-Python corridor test against the route segment matched last time, a few comparisons.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import shapely
from shapely.geometry import box as shapely_box

from core.coords import coords_to_wgs84
from core.model import Alert, DetectorOutput, Evidence, HealthChange, Position

from . import evidence as ev
from .config import FleetConfig, RoadConfig, VehicleConfig, ZoneConfig, _Rule
from .coverage import ShiftCoverage
from .filters import HISTORY, LIVE, PositionFilter
from .geometry import LocalPlane, PolygonLayer, Polyline, Shape, polygon
from .identity import TerminalDirectory, terminal_key
from .timewin import Window, minute_mask, parse_window

LOAD_SHIFT = 8  # JT/T 808 status bits 8-9: 00 empty, 01 half, 11 full


MAX_SPELLINGS = 10_000  # device spellings remembered beside the vehicle ids (bounded: any string may arrive)


class _Hold:
    """A condition that must hold `on_s` to open and be absent `off_s` to close."""

    __slots__ = ("open", "since", "clear_since", "peak", "where")

    def __init__(self) -> None:
        self.open = False
        self.since: float | None = None
        self.clear_since: float | None = None
        self.peak = 0.0
        self.where: tuple[float, float] | None = None  # lon, lat where the condition began

    def update(self, cond: bool, t: float, on_s: float, off_s: float) -> int:
        """+1 when it opens, -1 when it closes, 0 otherwise."""
        if cond:
            self.clear_since = None
            if not self.open:
                if self.since is None:
                    self.since = t
                if t - self.since >= on_s:
                    self.open = True
                    return 1
        else:
            self.since = None
            if self.open:
                if self.clear_since is None:
                    self.clear_since = t
                if t - self.clear_since >= off_s:
                    self.open = False
                    self.clear_since = None
                    return -1
        return 0


@dataclass(slots=True)
class _Road:
    cfg: RoadConfig
    line: Polyline
    shifts: tuple[Window, ...]
    place: ev.Place
    shift_mask: bytes | None  # minutes of the day inside a shift; None: the vehicle's hours apply


@dataclass(slots=True)
class _Route:
    id: str
    line: Polyline
    half_width: float
    place: ev.Place


@dataclass(slots=True)
class _Zone:
    cfg: ZoneConfig
    types: frozenset[str]
    windows: tuple[Window, ...]
    days: frozenset[int]
    place: ev.Place
    mask: bytes  # minute of the day -> 1 while the ban is on (minute_mask of windows)
    every_day: bool


@dataclass(slots=True)
class _Vehicle:
    cfg: VehicleConfig
    hours: tuple[Window, ...]
    limit_kmh: float
    route: _Route | None
    roads: list[_Road]
    base_facts: dict[str, Any]
    state: _State
    hours_mask: bytes  # minute of the day -> 1 inside working hours (minute_mask of hours)
    zones: tuple[PolygonLayer, list[_Zone]] | None  # the zones that bar its type, if any


@dataclass(slots=True)
class _State:
    track: deque
    last_t: float | None = None
    last_x: float = 0.0
    last_y: float = 0.0
    last_lon: float = 0.0
    last_lat: float = 0.0
    zones_open: dict[int, float] = field(default_factory=dict)
    route_hint: int = 0
    off_since: float | None = None
    off_where: tuple[float, float] | None = None
    off_dist: float = 0.0
    off_open: bool = False
    outside: _Hold = field(default_factory=_Hold)
    overspeed: _Hold = field(default_factory=_Hold)
    load: int | None = None
    dumping_open: bool = False
    stop_anchor: tuple[float, float, float, float, float] | None = None  # t, x, y, lon, lat
    stop_in_site: bool | None = None
    stop_open: bool = False
    offline_open: bool = False
    alarm_bits: int = 0
    road_hint: dict[str, int] = field(default_factory=dict)
    cov_prev: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # road -> t, s, shift
    hist_prev: dict[str, tuple[float, float, float]] = field(default_factory=dict)


class FleetMonitor:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.rules = config.rules
        self.tz = ZoneInfo(config.timezone)
        self.filter = PositionFilter(config.filters)
        self.counts: dict[str, int] = {"unregistered": 0, "history_late": 0}
        self._masks: dict[tuple[Window, ...], bytes] = {}
        self._build_geometry(config)
        self.terminals = TerminalDirectory.from_vehicles(config.vehicles)  # the one terminal -> vehicle map
        self._by_id: dict[str, _Vehicle] = {vc.id: self._vehicle(vc) for vc in config.vehicles}
        # Position.device -> vehicle: the vehicle ids (sources resolve terminals to them, see
        # identity.py), plus the terminal spellings of positions that come unresolved (tests, benches)
        self._by_device: dict[str, _Vehicle] = dict(self._by_id)
        self._coverage: dict[tuple[str, str, float], ShiftCoverage] = {}
        self._unregistered_seen: set[str] = set()
        self._now: float | None = None  # latest tick time, epoch seconds
        self._shift_cache: dict[tuple, tuple[float, float] | None] = {}
        self._lt_lo = self._lt_hi = 0.0  # the cached local minute [lo, hi) and its values
        self._lt_local, self._lt_minute = datetime.fromtimestamp(0, self.tz), 0
        self._epoch: dict[datetime, float] = {}  # see _epoch_of
        r = self.rules  # flags read on every fix, looked up once
        self._zone_on, self._route_on = r.forbidden_zone.enabled, r.off_route.enabled
        self._hours_on, self._speed_on = r.outside_hours.enabled, r.overspeed.enabled
        self._dump_on, self._stop_on = r.illegal_dumping.enabled, r.long_stop.enabled
        self._alarm_on, self._coverage_on = r.terminal_alarm.enabled, r.coverage.enabled
        self._route_hours_only = r.off_route.working_hours_only
        self._stop_kmh, self._seg_gap = r.long_stop.stop_kmh, config.segment_max_gap_s
        self._first_tick: float | None = None

    # ------------------------------------------------------------------ set-up

    def _build_geometry(self, cfg: FleetConfig) -> None:
        layers: list[tuple[str, Any, list[tuple[float, float]]]] = []
        for kind, items, attr in (("zone", cfg.zones, "polygon"), ("site", cfg.sites, "polygon"),
                                  ("route", cfg.routes, "line"), ("road", cfg.roads, "line")):
            for item in items:
                layers.append((kind, item, coords_to_wgs84(getattr(item, attr), item.crs)))
        bounds_wgs = coords_to_wgs84(cfg.city_bounds.polygon, cfg.city_bounds.crs) if cfg.city_bounds else []
        every = [p for _, _, pts in layers for p in pts] + bounds_wgs
        if every:
            lons, lats = [p[0] for p in every], [p[1] for p in every]
            self.plane: LocalPlane | None = LocalPlane((min(lons) + max(lons)) / 2, (min(lats) + max(lats)) / 2)
        else:
            self.plane = None  # set from the first fix; there is no geometry to agree with
        plane = self.plane
        zone_shapes, site_shapes, site_tol, stop_tol = [], [], [], []
        self._zones: list[_Zone] = []
        self._routes: dict[str, _Route] = {}
        self._roads: dict[str, _Road] = {}
        self.sites: dict[str, ev.Place] = {}
        dump = self.rules.illegal_dumping
        for kind, item, wgs in layers:
            assert plane is not None
            xy = plane.project(wgs)
            if kind in ("zone", "site"):
                poly = polygon(xy)
                place = ev.Place(item.id, kind, item.name, tuple(wgs), False, poly)
                if kind == "zone":
                    zone_shapes.append(Shape(item.id, poly, poly.bounds, item))
                    windows = tuple(parse_window(w) for w in item.windows)
                    self._zones.append(_Zone(item, frozenset(item.applies_to), windows, frozenset(item.days),
                                             place, self._mask(windows), len(set(item.days)) >= 7))
                else:
                    self.sites[item.id] = place
                    site_shapes.append(Shape(item.id, poly, poly.bounds, item))
                    if item.kind in dump.allowed_site_kinds:
                        g = poly.buffer(dump.site_tolerance_m)
                        site_tol.append(Shape(item.id, g, g.bounds, item))
                    g = poly.buffer(self.rules.long_stop.site_tolerance_m)
                    stop_tol.append(Shape(item.id, g, g.bounds, item))
            elif kind == "route":
                line = Polyline(xy)
                corridor = line.line.buffer(item.width_m / 2)
                self._routes[item.id] = _Route(item.id, line, item.width_m / 2,
                                               ev.Place(item.id, "route", item.name, tuple(wgs), True, corridor))
            else:
                line = Polyline(xy)
                shifts = tuple(parse_window(w) for w in item.shifts)
                self._roads[item.id] = _Road(
                    item, line, shifts,
                    ev.Place(item.id, "road", item.name, tuple(wgs), True,
                             line.line.buffer(self.rules.coverage.match_m)),
                    self._mask(shifts) if shifts else None)
        cell = cfg.index_cell_m
        self.zone_layer = PolygonLayer(zone_shapes, cell)  # every zone (lookups, tests)
        # one layer per vehicle type, holding only the zones that bar it: a cell lookup then yields
        # only zones that matter for this vehicle
        self._type_zones: dict[str, tuple[PolygonLayer, list[_Zone]]] = {}
        for vtype in sorted({t for z in self._zones for t in z.types}):
            keep = [k for k, z in enumerate(self._zones) if vtype in z.types]
            self._type_zones[vtype] = (PolygonLayer([zone_shapes[k] for k in keep], cell),
                                       [self._zones[k] for k in keep])
        self.site_layer = PolygonLayer(site_shapes, cell)
        self.dump_layer = PolygonLayer(site_tol, cell)  # approved unloading places, with slack
        self.stop_layer = PolygonLayer(stop_tol, cell)  # any approved site, with slack
        # city bounds: a configured polygon, or the layers' envelope plus a margin
        self._city = None
        if plane is not None:
            if bounds_wgs:
                self._city = polygon(plane.project(bounds_wgs))
            elif every:
                xs, ys = zip(*plane.project(every), strict=True)
                m = cfg.city_margin_m
                self._city = shapely_box(min(xs) - m, min(ys) - m, max(xs) + m, max(ys) + m)
            if self._city is not None:
                shapely.prepare(self._city)
                # answer every zone-lookup cell of the city now rather than on a vehicle's first visit
                for layer, _ in self._type_zones.values():
                    layer.prefill(*self._city.bounds)

    def _mask(self, windows: tuple[Window, ...]) -> bytes:
        mask = self._masks.get(windows)
        if mask is None:
            mask = self._masks[windows] = minute_mask(windows)
        return mask

    def _vehicle(self, vc: VehicleConfig) -> _Vehicle:
        hours = tuple(parse_window(w) for w in vc.working_hours)
        return _Vehicle(
            cfg=vc,
            hours=hours,
            limit_kmh=vc.speed_limit_kmh or self.rules.overspeed.default_limit_kmh,
            route=self._routes.get(vc.route) if vc.route else None,
            roads=[self._roads[r] for r in vc.assigned_roads],
            base_facts={"plate": vc.plate, "vehicle_type": vc.type, "company": vc.company,
                        "terminal": vc.terminal},
            state=_State(track=deque(maxlen=self.config.track_points)),
            hours_mask=self._mask(hours),
            zones=self._type_zones.get(vc.type),
        )

    # ------------------------------------------------------------------ helpers

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
        local = datetime.fromtimestamp(t, self.tz).replace(second=0, microsecond=0)
        self._lt_lo = local.timestamp()
        self._lt_hi = self._lt_lo + 60.0
        self._lt_local, self._lt_minute = local, local.hour * 60 + local.minute
        return self._lt_local, self._lt_minute

    def _alert(self, rule: _Rule, v: _Vehicle, state: str, when: datetime, *, place: str = "",
               lon: float | None = None, lat: float | None = None, facts: dict | None = None,
               message: str = "", evidence: Callable[[], tuple[Evidence, ...]] | None = None,
               severity: str | None = None) -> Alert:
        return Alert(
            rule=rule.name, subject_kind="vehicle", subject_id=v.cfg.id, state=state,  # type: ignore[arg-type]
            time=when, source="vehicle", severity=severity or rule.severity,  # type: ignore[arg-type]
            message=message, category=rule.category, place=place, lon=lon, lat=lat,
            facts={**v.base_facts, **(facts or {})}, render_evidence=evidence,
        )

    def _evidence(self, rule: _Rule, st: _State, places: Iterable[ev.Place], lon: float, lat: float,
                  props: dict) -> Callable[[], tuple[Evidence, ...]] | None:
        """The map and track excerpt, drawn later by the case desk and only for a new case."""
        if rule.category is None or self.plane is None:
            return None  # alert-only rules make no case, so no evidence
        return partial(ev.build, self.plane, list(st.track), list(places), (lon, lat), props)

    def _sites_near(self, x: float, y: float, radius: float = 500.0) -> list[ev.Place]:
        idx = self.site_layer.candidates(x - radius, y - radius, x + radius, y + radius)
        return [self.sites[self.site_layer.shapes[i].id] for i in idx]

    def _vehicle_of(self, device: str) -> _Vehicle | None:
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
        plane = self.plane
        if plane is None:
            plane = self.plane = LocalPlane(lon, lat)
        v = self._by_device.get(p.device)
        if v is None:
            vehicle = self.terminals.vehicle(p.device)
            if vehicle is None:
                return self._unregistered(p) if verdict == LIVE else []
            v = self._by_id[vehicle]
            if len(self._by_device) < len(self._by_id) + MAX_SPELLINGS:
                self._by_device[p.device] = v  # remember the spelling this terminal uses
        st = v.state
        x, y = (lon - plane.lon0) * plane.kx, (lat - plane.lat0) * plane.ky  # plane.xy, inlined: every fix
        if self._lt_lo <= t < self._lt_hi:  # most fixes of a fleet fall in the same local minute
            local, minute = self._lt_local, self._lt_minute
        else:
            local, minute = self._local_minute(t)
        if verdict == HISTORY:
            if v.roads and self._coverage_on:
                self._cover(v, st, st.hist_prev, t, x, y, p.speed_kmh, local, minute, history=True)
            return []

        out: list[Alert] = []
        last_t = st.last_t
        seg = last_t is not None and t - last_t <= self._seg_gap
        x0, y0 = (st.last_x, st.last_y) if seg else (x, y)
        speed = p.speed_kmh
        st.track.append((t, lon, lat, speed))
        in_hours = v.hours_mask[minute] != 0

        if st.offline_open:
            st.offline_open = False
            out.append(self._alert(self.rules.offline, v, "closed", p.time, lon=lon, lat=lat,
                                   facts={"silent_s": round(t - (last_t or t))}))
            out.append(HealthChange("vehicle", v.cfg.id, True, p.time))
        # the common case of each rule (nothing near, nothing pending) is decided here, without a call
        zones = v.zones
        if zones is not None and self._zone_on:
            near = zones[0].candidates(x0, y0, x, y)
            if near or st.zones_open:
                self._zones_check(v, st, p, zones, near, local, minute, t, x0, y0, x, y, out)
        route = v.route
        if route is not None and self._route_on:
            off = False
            if in_hours or not self._route_hours_only:
                d, _, st.route_hint = route.line.locate(x, y, st.route_hint, route.half_width)
                off = d > route.half_width
            if off or st.off_since is not None:
                self._route_check(v, st, p, t, x, y, off, out)
        if self._hours_on and not (in_hours and not st.outside.open and st.outside.since is None):
            self._outside_hours(v, st, p, t, in_hours, out)
        if self._speed_on and (speed > v.limit_kmh or st.overspeed.open or st.overspeed.since is not None):
            self._overspeed(v, st, p, t, out)
        if self._dump_on and (p.status >> LOAD_SHIFT) & 3 != st.load:
            self._dumping(v, st, p, x, y, seg, out)
        if self._stop_on and (speed < self._stop_kmh or st.stop_anchor is not None or st.stop_open):
            self._long_stop(v, st, p, t, x, y, out)
        if self._alarm_on and (p.alarm or st.alarm_bits):
            self._terminal_alarms(v, st, p, out)
        if v.roads and self._coverage_on:
            self._cover(v, st, st.cov_prev, t, x, y, speed, local, minute, history=False)

        st.last_t, st.last_x, st.last_y, st.last_lon, st.last_lat = t, x, y, lon, lat
        return out

    def _unregistered(self, p: Position) -> list[Alert]:
        self.counts["unregistered"] += 1
        rule = self.rules.unregistered
        device = terminal_key(p.device)  # one subject however a source spelled the number
        if not rule.enabled or device in self._unregistered_seen:
            return []
        if self._city is not None:
            assert self.plane is not None
            x, y = self.plane.xy(p.lon, p.lat)
            if not shapely.contains_xy(self._city, x, y):
                return []
        if len(self._unregistered_seen) < 100_000:  # bounded: a flood of ids must not eat memory
            self._unregistered_seen.add(device)
        return [Alert(rule=rule.name, subject_kind="terminal", subject_id=device, state="open", time=p.time,
                      source="vehicle", severity=rule.severity, category=rule.category,
                      message=f"unregistered terminal {device} reporting inside the city",
                      lon=p.lon, lat=p.lat, facts={"terminal": device, "speed_kmh": p.speed_kmh})]

    # ------------------------------------------------------------------ rules

    @staticmethod
    def _zone_active(z: _Zone, local: datetime, minute: int) -> bool:
        return bool(z.mask[minute]) and (z.every_day or local.isoweekday() in z.days)

    def _zones_check(self, v: _Vehicle, st: _State, p: Position, zones: tuple[PolygonLayer, list[_Zone]],
                     near: tuple[int, ...], local: datetime, minute: int, t: float,
                     x0: float, y0: float, x: float, y: float, out: list[Alert]) -> None:
        """`near`: the zones of `layer` whose cells the segment (x0, y0)-(x, y) touches."""
        layer, zones_of_type = zones
        rule = self.rules.forbidden_zone
        for i in near:
            if i in st.zones_open:
                continue
            z = zones_of_type[i]
            if not self._zone_active(z, local, minute):
                continue
            if not layer.segment_hits(i, x0, y0, x, y):
                continue
            ex, ey, frac = layer.entry_point(i, x0, y0, x, y)
            elon, elat = self.plane.lonlat(ex, ey)  # type: ignore[union-attr]
            entered = (st.last_t + frac * (t - st.last_t)) if st.last_t is not None and (x0, y0) != (x, y) else t
            inside = layer.contains(i, x, y)
            facts = {"zone": z.cfg.id, "zone_name": z.cfg.name, "speed_kmh": p.speed_kmh,
                     "entered_at": datetime.fromtimestamp(round(entered, 3), self.tz).isoformat(),
                     "crossed_between_fixes": not inside}
            name = z.cfg.name or z.cfg.id
            out.append(self._alert(
                rule, v, "open", p.time, place=z.cfg.id, lon=elon, lat=elat, facts=facts,
                message=f"{v.cfg.plate or v.cfg.id} ({v.cfg.type}) entered forbidden zone {name}",
                evidence=self._evidence(rule, st, [z.place], elon, elat, {"rule": rule.name, "zone": z.cfg.id})))
            if inside:
                st.zones_open[i] = entered
            else:  # passed through between two fixes: the episode is already over
                out.append(self._alert(rule, v, "closed", p.time, place=z.cfg.id, lon=p.lon, lat=p.lat,
                                       facts={"zone": z.cfg.id, "duration_s": round(t - entered, 1)}))
        if st.zones_open:
            for i, entered in list(st.zones_open.items()):
                z = zones_of_type[i]
                if layer.contains(i, x, y) and self._zone_active(z, local, minute):
                    continue
                del st.zones_open[i]
                out.append(self._alert(rule, v, "closed", p.time, place=z.cfg.id, lon=p.lon, lat=p.lat,
                                       facts={"zone": z.cfg.id, "duration_s": round(t - entered, 1)}))

    def _route_check(self, v: _Vehicle, st: _State, p: Position, t: float, x: float, y: float,
                     off: bool, out: list[Alert]) -> None:
        """`off`: the fix is outside the route's corridor (process measured it)."""
        rule, route = self.rules.off_route, v.route
        assert route is not None
        if off:
            if st.off_since is None:
                st.off_since, st.off_where, st.off_dist = t, (p.lon, p.lat), 0.0
            elif st.last_t is not None:
                st.off_dist += math.hypot(x - st.last_x, y - st.last_y)
            if not st.off_open:
                long_enough = t - st.off_since >= rule.min_duration_s
                far_enough = rule.min_distance_m is not None and st.off_dist >= rule.min_distance_m
                if long_enough or far_enough:
                    st.off_open = True
                    facts = {"route": route.id, "off_since": datetime.fromtimestamp(st.off_since, self.tz).isoformat(),
                             "duration_s": round(t - st.off_since), "distance_off_m": round(st.off_dist),
                             "left_at": list(st.off_where or ()), "speed_kmh": p.speed_kmh}
                    out.append(self._alert(
                        rule, v, "open", p.time, place=route.id, lon=p.lon, lat=p.lat, facts=facts,
                        message=f"{v.cfg.plate or v.cfg.id} left its permitted route {route.id}",
                        evidence=self._evidence(rule, st, [route.place], p.lon, p.lat,
                                                {"rule": rule.name, "route": route.id})))
        elif st.off_since is not None:
            if st.off_open:
                out.append(self._alert(rule, v, "closed", p.time, place=route.id, lon=p.lon, lat=p.lat,
                                       facts={"route": route.id, "duration_s": round(t - st.off_since)}))
            st.off_since, st.off_open, st.off_dist = None, False, 0.0

    def _outside_hours(self, v: _Vehicle, st: _State, p: Position, t: float, in_hours: bool,
                       out: list[Alert]) -> None:
        rule, h = self.rules.outside_hours, st.outside
        cond = not in_hours and p.speed_kmh >= rule.moving_kmh
        if cond and h.since is None and not h.open:
            h.where = (p.lon, p.lat)
        change = h.update(cond, t, rule.min_duration_s, 0.0 if in_hours else rule.clear_after_s)
        if change > 0:
            lon, lat = h.where or (p.lon, p.lat)
            out.append(self._alert(
                rule, v, "open", p.time, lon=p.lon, lat=p.lat,
                facts={"working_hours": list(v.cfg.working_hours), "speed_kmh": p.speed_kmh,
                       "moving_since": datetime.fromtimestamp(h.since or t, self.tz).isoformat(),
                       "started_at": [lon, lat]},
                message=f"{v.cfg.plate or v.cfg.id} working outside its hours {', '.join(v.cfg.working_hours)}",
                evidence=self._evidence(rule, st, [v.route.place] if v.route else [], p.lon, p.lat,
                                        {"rule": rule.name})))
        elif change < 0:
            out.append(self._alert(rule, v, "closed", p.time, lon=p.lon, lat=p.lat))

    def _overspeed(self, v: _Vehicle, st: _State, p: Position, t: float, out: list[Alert]) -> None:
        rule, h = self.rules.overspeed, st.overspeed
        cond = p.speed_kmh > v.limit_kmh + rule.tolerance_kmh
        if cond:
            h.peak = p.speed_kmh if (h.since is None and not h.open) else max(h.peak, p.speed_kmh)
        change = h.update(cond, t, rule.min_duration_s, rule.clear_after_s)
        if change > 0:
            out.append(self._alert(
                rule, v, "open", p.time, lon=p.lon, lat=p.lat,
                facts={"speed_kmh": p.speed_kmh, "limit_kmh": v.limit_kmh, "max_speed_kmh": h.peak,
                       "duration_s": round(t - (h.since or t))},
                message=f"{v.cfg.plate or v.cfg.id} at {p.speed_kmh:.0f} km/h over its {v.limit_kmh:.0f} km/h limit",
                evidence=self._evidence(rule, st, [], p.lon, p.lat, {"rule": rule.name, "speed_kmh": p.speed_kmh})))
        elif change < 0:
            out.append(self._alert(rule, v, "closed", p.time, lon=p.lon, lat=p.lat,
                                   facts={"max_speed_kmh": h.peak}))

    def _dumping(self, v: _Vehicle, st: _State, p: Position, x: float, y: float, seg: bool,
                 out: list[Alert]) -> None:
        rule = self.rules.illegal_dumping
        load = (p.status >> LOAD_SHIFT) & 3
        prev, st.load = st.load, load
        if prev is None or prev == load:
            return
        if load and st.dumping_open:  # loaded again: a new cycle begins
            st.dumping_open = False
            out.append(self._alert(rule, v, "closed", p.time, lon=p.lon, lat=p.lat))
            return
        if not (prev and not load):
            return
        # unloaded somewhere between the last fix and this one: either end inside a dump site is fine
        if self.dump_layer.any_contains(x, y) or (seg and self.dump_layer.any_contains(st.last_x, st.last_y)):
            return
        st.dumping_open = True
        out.append(self._alert(
            rule, v, "open", p.time, lon=p.lon, lat=p.lat,
            facts={"load_before": "full" if prev == 3 else "half", "speed_kmh": p.speed_kmh},
            message=f"{v.cfg.plate or v.cfg.id} unloaded outside approved dump sites (suspected illegal dumping)",
            evidence=self._evidence(rule, st, self._sites_near(x, y), p.lon, p.lat, {"rule": rule.name})))

    def _long_stop(self, v: _Vehicle, st: _State, p: Position, t: float, x: float, y: float,
                   out: list[Alert]) -> None:
        rule = self.rules.long_stop
        a = st.stop_anchor
        stopped = p.speed_kmh < rule.stop_kmh
        if stopped and a is not None and math.hypot(x - a[1], y - a[2]) <= rule.radius_m:
            if not st.stop_open and t - a[0] >= rule.min_duration_s:
                if st.stop_in_site is None:
                    st.stop_in_site = self.stop_layer.any_contains(a[1], a[2]) is not None
                if not st.stop_in_site:
                    st.stop_open = True
                    out.append(self._alert(
                        rule, v, "open", p.time, lon=a[3], lat=a[4],
                        facts={"stopped_since": datetime.fromtimestamp(a[0], self.tz).isoformat(),
                               "duration_s": round(t - a[0])},
                        message=f"{v.cfg.plate or v.cfg.id} stopped {round((t - a[0]) / 60)} min outside any site",
                        evidence=self._evidence(rule, st, self._sites_near(a[1], a[2]), a[3], a[4],
                                                {"rule": rule.name})))
            return
        if st.stop_open and a is not None:
            out.append(self._alert(rule, v, "closed", p.time, lon=a[3], lat=a[4],
                                   facts={"duration_s": round(t - a[0])}))
        st.stop_open, st.stop_in_site = False, None
        st.stop_anchor = (t, x, y, p.lon, p.lat) if stopped else None

    def _terminal_alarms(self, v: _Vehicle, st: _State, p: Position, out: list[Alert]) -> None:
        rule = self.rules.terminal_alarm
        changed = (p.alarm ^ st.alarm_bits) & 0xFFFFFFFF
        if not changed:
            return
        for bit, name in rule.bits.items():
            mask = 1 << bit
            if not changed & mask:
                continue
            if p.alarm & mask:
                st.alarm_bits |= mask
                facts: dict[str, Any] = {"alarm_bit": bit, "alarm": name, "speed_kmh": p.speed_kmh}
                for key in ("zone_route_alarm", "overspeed_alarm", "route_time_alarm"):
                    if key in p.extras:
                        facts[key] = p.extras[key]
                out.append(self._alert(rule, v, "open", p.time, place=name, lon=p.lon, lat=p.lat, facts=facts,
                                       message=f"terminal of {v.cfg.plate or v.cfg.id} raised {name}"))
            else:
                st.alarm_bits &= ~mask
                out.append(self._alert(rule, v, "closed", p.time, place=name, lon=p.lon, lat=p.lat,
                                       facts={"alarm_bit": bit, "alarm": name}))

    # ------------------------------------------------------------------ coverage

    def _shift(self, v: _Vehicle, road: _Road, local: datetime, minute: int) -> tuple[float, float] | None:
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

    def _cover(self, v: _Vehicle, st: _State, prev: dict[str, tuple[float, float, float]], t: float,
               x: float, y: float, speed: float, local: datetime, minute: int, history: bool) -> None:
        rule = self.rules.coverage
        working = rule.min_kmh <= speed <= rule.max_kmh
        for road in v.roads:
            inst = self._shift(v, road, local, minute) if working else None
            if inst is None:
                prev.pop(road.cfg.id, None)
                continue
            d, s, st.road_hint[road.cfg.id] = road.line.locate(x, y, st.road_hint.get(road.cfg.id, 0), rule.match_m)
            if d > rule.match_m:
                prev.pop(road.cfg.id, None)
                continue
            start, end = inst
            key = (v.cfg.id, road.cfg.id, start)
            acc = self._coverage.get(key)
            if acc is None:
                if history and self._now is not None and end <= self._now:
                    self.counts["history_late"] += 1  # its shift was already reported
                    continue
                acc = self._coverage[key] = ShiftCoverage(v.cfg.id, road.cfg.id, start, end,
                                                          road.line.length, rule.bin_m)
            last = prev.get(road.cfg.id)
            if last is not None and last[2] == start and abs(t - last[0]) <= rule.max_gap_s:
                acc.cover(last[1], s)
            else:
                acc.cover(s, s)
            prev[road.cfg.id] = (t, s, start)

    # ------------------------------------------------------------------ clock

    def tick(self, now: datetime, *, only: Collection[str] | None = None,
             exclude: Collection[str] = ()) -> list[DetectorOutput]:
        """Offline detection and shift-end coverage reports; call every few seconds.

        `only` / `exclude` name terminals (as positions spell them) whose clock this is: a replay that
        keeps its recorded times ticks its own vehicles with recorded time, and the wall-clock tick
        leaves them out (otherwise an old recording would look offline on every tick)."""
        vehicles: Iterable[_Vehicle] = self._by_id.values()
        if only is not None:
            vehicles = {id(v): v for v in map(self._vehicle_of, only) if v is not None}.values()
        elif exclude:
            skip = {id(v) for v in map(self._vehicle_of, exclude) if v is not None}
            vehicles = [v for v in vehicles if id(v) not in skip]
        ts = now.timestamp()
        if self._first_tick is None:
            self._first_tick = ts
        self._now = ts if self._now is None else max(self._now, ts)
        out: list[DetectorOutput] = []
        local, minute = self._local_minute(ts)
        rules = self.rules
        ticked = set()
        for v in vehicles:
            ticked.add(v.cfg.id)
            st = v.state
            if rules.offline.enabled and not st.offline_open:
                self._offline(v, st, now, ts, local, minute, out)
            if v.roads and rules.coverage.enabled:
                for road in v.roads:  # open an empty record so a vehicle that never came still gets a report
                    inst = self._shift(v, road, local, minute)
                    if inst is not None and (v.cfg.id, road.cfg.id, inst[0]) not in self._coverage:
                        self._coverage[(v.cfg.id, road.cfg.id, inst[0])] = ShiftCoverage(
                            v.cfg.id, road.cfg.id, inst[0], inst[1], road.line.length, rules.coverage.bin_m)
        for key, acc in list(self._coverage.items()):
            if acc.end_ts <= ts and acc.vehicle_id in ticked:
                del self._coverage[key]
                out.append(self._report(acc))
        return out

    def _offline(self, v: _Vehicle, st: _State, now: datetime, ts: float, local: datetime, minute: int,
                 out: list[DetectorOutput]) -> None:
        if not v.hours_mask[minute]:
            return
        last = st.last_t if st.last_t is not None else self._first_tick
        assert last is not None
        # silence counts only inside working hours: a terminal asleep overnight is not offline at 06:00
        for w in v.hours:
            inst = w.instance(local)
            if inst is not None:
                last = max(last, inst[0].timestamp())
                break
        silent = ts - last
        if silent >= self.rules.offline.min_minutes * 60:
            st.offline_open = True
            seen = st.last_t is not None
            out.append(self._alert(
                self.rules.offline, v, "open", now, lon=st.last_lon if seen else None,
                lat=st.last_lat if seen else None,
                facts={"silent_s": round(silent),
                       "last_fix": datetime.fromtimestamp(st.last_t, self.tz).isoformat() if seen else None},
                message=f"terminal of {v.cfg.plate or v.cfg.id} silent for {round(silent / 60)} min in working hours"))
            out.append(HealthChange("vehicle", v.cfg.id, False, now))

    def _report(self, acc: ShiftCoverage) -> Alert:
        rule = self.rules.coverage
        v = self._by_id[acc.vehicle_id]
        road = self._roads[acc.road_id]
        share = acc.share
        low = share < rule.min_share
        mid = road.line.line.interpolate(0.5, normalized=True)
        lon, lat = self.plane.lonlat(mid.x, mid.y)  # type: ignore[union-attr]
        start, end = datetime.fromtimestamp(acc.start_ts, self.tz), datetime.fromtimestamp(acc.end_ts, self.tz)
        return self._alert(
            rule, v, "open" if low else "closed", end, place=acc.road_id, lon=lon, lat=lat,
            severity=rule.low_severity if low else rule.severity,
            facts={"share": round(share, 3), "covered_m": round(acc.covered_m), "road_length_m": round(acc.length),
                   "road_name": road.cfg.name, "shift_start": start.isoformat(), "shift_end": end.isoformat(),
                   "min_share": rule.min_share},
            message=f"{v.cfg.plate or v.cfg.id} covered {share:.0%} of road {road.cfg.name or road.cfg.id} "
                    f"during shift {start:%H:%M}-{end:%H:%M}")
