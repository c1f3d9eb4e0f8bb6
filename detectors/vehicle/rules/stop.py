"""Long stop: a vehicle stopped (below `stop_kmh`, within `radius_m` of where it stopped) for long enough
outside every approved site (with GNSS slack); it clears when it moves on."""

from __future__ import annotations

import math

from ..config import LongStopRule
from ..world import World
from .base import Fix, Outputs, Rule, Vehicle


class StopState:
    __slots__ = ("anchor", "in_site", "open")

    def __init__(self) -> None:
        self.anchor: tuple[float, float, float, float, float] | None = None  # where it stopped: t, x, y, lon, lat
        self.in_site: bool | None = None  # whether the anchor lies in a site (looked up once per stop)
        self.open = False


class LongStop(Rule):
    config: LongStopRule

    def __init__(self, config: LongStopRule, world: World) -> None:
        super().__init__(config, world)
        slack = config.site_tolerance_m
        self.layer = world.layer(world.grown(a, slack) for a in world.sites.values())
        self._stop_kmh = config.stop_kmh

    def state_for(self, v: Vehicle) -> StopState:
        return StopState()

    def process(self, st: StopState, f: Fix, out: Outputs) -> None:
        stopped = f.speed < self._stop_kmh
        a = st.anchor
        if not stopped and a is None and not st.open:
            return
        rule, v, p, t = self.config, f.v, f.p, f.t
        if stopped and a is not None and math.hypot(f.x - a[1], f.y - a[2]) <= rule.radius_m:
            if not st.open and t - a[0] >= rule.min_duration_s:
                if st.in_site is None:
                    st.in_site = self.layer.any_covers(a[1], a[2]) is not None
                if not st.in_site:
                    st.open = True
                    out.append(self.alert(
                        v, "open", p.time, lon=a[3], lat=a[4],
                        facts={"stopped_since": self.world.iso(a[0]), "duration_s": round(t - a[0])},
                        message=f"{v.label} stopped {round((t - a[0]) / 60)} min outside any site",
                        evidence=self.evidence(v, self.world.sites_near(a[1], a[2]), a[3], a[4],
                                               {"rule": rule.name})))
            return
        if st.open and a is not None:
            out.append(self.alert(v, "closed", p.time, lon=a[3], lat=a[4], facts={"duration_s": round(t - a[0])}))
        st.open, st.in_site = False, None
        st.anchor = (t, f.x, f.y, p.lon, p.lat) if stopped else None
