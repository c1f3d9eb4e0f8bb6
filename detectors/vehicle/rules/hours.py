"""Outside hours: a vehicle moving outside its working hours for long enough (working when it should not)."""

from __future__ import annotations

from ..config import OutsideHoursRule
from .base import Fix, Hold, Outputs, Rule, Vehicle


class OutsideHours(Rule):
    config: OutsideHoursRule

    def state_for(self, v: Vehicle) -> Hold:
        return Hold()

    def process(self, h: Hold, f: Fix, out: Outputs) -> None:
        if f.in_hours and h.since is None and not h.open:  # h.idle, inlined: every fix
            return
        rule, v, p, t = self.config, f.v, f.p, f.t
        cond = not f.in_hours and p.speed_kmh >= rule.moving_kmh
        if cond and h.idle:
            h.where = (p.lon, p.lat)
        change = h.update(cond, t, rule.min_duration_s, 0.0 if f.in_hours else rule.clear_after_s)
        if change > 0:
            lon, lat = h.where or (p.lon, p.lat)
            route = [self.world.route_place(v.cfg.route)] if v.cfg.route else []
            out.append(self.alert(
                v, "open", p.time, lon=p.lon, lat=p.lat,
                facts={"working_hours": list(v.cfg.working_hours), "speed_kmh": p.speed_kmh,
                       "moving_since": self.world.iso(h.since or t), "started_at": [lon, lat]},
                message=f"{v.label} working outside its hours {', '.join(v.cfg.working_hours)}",
                evidence=self.evidence(v, route, p.lon, p.lat, {"rule": rule.name})))
        elif change < 0:
            out.append(self.alert(v, "closed", p.time, lon=p.lon, lat=p.lat))
