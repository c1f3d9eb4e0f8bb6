"""Overspeed: over the vehicle's limit (plus tolerance) for long enough; the peak speed is reported."""

from __future__ import annotations

from ..config import OverspeedRule
from .base import Fix, Hold, Outputs, Rule, Vehicle


class SpeedState(Hold):
    __slots__ = ("limit_kmh",)

    def __init__(self, limit_kmh: float) -> None:
        super().__init__()
        self.limit_kmh = limit_kmh


class Overspeed(Rule):
    config: OverspeedRule

    def state_for(self, v: Vehicle) -> SpeedState:
        return SpeedState(v.cfg.speed_limit_kmh or self.config.default_limit_kmh)

    def process(self, h: SpeedState, f: Fix, out: Outputs) -> None:
        limit = h.limit_kmh
        if f.speed <= limit and h.since is None and not h.open:  # h.idle, inlined: every fix
            return
        rule, v, p, t = self.config, f.v, f.p, f.t
        cond = p.speed_kmh > limit + rule.tolerance_kmh
        if cond:
            h.peak = p.speed_kmh if h.idle else max(h.peak, p.speed_kmh)
        change = h.update(cond, t, rule.min_duration_s, rule.clear_after_s)
        if change > 0:
            out.append(self.alert(
                v, "open", p.time, lon=p.lon, lat=p.lat,
                facts={"speed_kmh": p.speed_kmh, "limit_kmh": limit, "max_speed_kmh": h.peak,
                       "duration_s": round(t - (h.since or t))},
                message=f"{v.label} at {p.speed_kmh:.0f} km/h over its {limit:.0f} km/h limit",
                evidence=self.evidence(v, [], p.lon, p.lat, {"rule": rule.name, "speed_kmh": p.speed_kmh})))
        elif change < 0:
            out.append(self.alert(v, "closed", p.time, lon=p.lon, lat=p.lat, facts={"max_speed_kmh": h.peak}))
