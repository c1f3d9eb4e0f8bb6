"""Off route: a vehicle with a permitted route (a corridor around a line) off it for long enough, or far
enough. By default only in its working hours. The corridor test starts at the segment matched last time,
so a vehicle on its route costs a few multiplications."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import OffRouteRule
from ..world import Line, World
from .base import Fix, Outputs, Rule, Vehicle


@dataclass(slots=True)
class RouteState:
    route: Line
    half_width: float
    hint: int = 0  # segment of the line matched last time
    off_since: float | None = None
    off_where: tuple[float, float] | None = None  # lon, lat where it left
    off_dist: float = 0.0  # metres driven off the corridor
    open: bool = False


class OffRoute(Rule):
    config: OffRouteRule

    def __init__(self, config: OffRouteRule, world: World) -> None:
        super().__init__(config, world)
        self._always = not config.working_hours_only

    def state_for(self, v: Vehicle) -> RouteState | None:
        if v.cfg.route is None:
            return None
        route = self.world.routes[v.cfg.route]
        return RouteState(route, route.cfg.width_m / 2)

    def process(self, st: RouteState, f: Fix, out: Outputs) -> None:
        off = False
        if f.in_hours or self._always:
            d, _, st.hint = st.route.line.locate(f.x, f.y, st.hint, st.half_width)
            off = d > st.half_width
        if not off and st.off_since is None:
            return
        rule, v, p, t = self.config, f.v, f.p, f.t
        route_id = st.route.cfg.id
        if not off:
            if st.open:
                out.append(self.alert(v, "closed", p.time, place=route_id, lon=p.lon, lat=p.lat,
                                      facts={"route": route_id, "duration_s": round(t - st.off_since)}))
            st.off_since, st.open, st.off_dist = None, False, 0.0
            return
        if st.off_since is None:
            st.off_since, st.off_where, st.off_dist = t, (p.lon, p.lat), 0.0
        elif v.last_t is not None:
            st.off_dist += math.hypot(f.x - v.last_x, f.y - v.last_y)
        if st.open:
            return
        long_enough = t - st.off_since >= rule.min_duration_s
        far_enough = rule.min_distance_m is not None and st.off_dist >= rule.min_distance_m
        if long_enough or far_enough:
            st.open = True
            out.append(self.alert(
                v, "open", p.time, place=route_id, lon=p.lon, lat=p.lat,
                facts={"route": route_id, "off_since": self.world.iso(st.off_since),
                       "duration_s": round(t - st.off_since), "distance_off_m": round(st.off_dist),
                       "left_at": list(st.off_where or ()), "speed_kmh": p.speed_kmh},
                message=f"{v.label} left its permitted route {route_id}",
                evidence=self.evidence(v, [self.world.route_place(route_id)], p.lon, p.lat,
                                       {"rule": rule.name, "route": route_id})))
