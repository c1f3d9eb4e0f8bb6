"""Illegal dumping: a loaded vehicle reporting empty (JT/T 808 status bits 8-9) outside every approved
unloading site; it clears when the vehicle is loaded again. Either end of the segment in which it
unloaded may lie in the site (with GNSS slack)."""

from __future__ import annotations

from ..config import IllegalDumpingRule
from ..world import World
from .base import Fix, Outputs, Rule, Vehicle

LOAD_SHIFT = 8  # JT/T 808 status bits 8-9: 00 empty, 01 half, 11 full


class DumpState:
    __slots__ = ("load", "open")

    def __init__(self) -> None:
        self.load: int | None = None  # the load bits of the previous fix
        self.open = False


class IllegalDumping(Rule):
    config: IllegalDumpingRule

    def __init__(self, config: IllegalDumpingRule, world: World) -> None:
        super().__init__(config, world)
        slack = config.site_tolerance_m
        self.layer = world.layer(world.grown(a, slack) for a in world.sites.values()
                                 if a.cfg.kind in config.allowed_site_kinds)

    def state_for(self, v: Vehicle) -> DumpState:
        return DumpState()

    def process(self, st: DumpState, f: Fix, out: Outputs) -> None:
        p = f.p
        load = (p.status >> LOAD_SHIFT) & 3
        prev = st.load
        if load == prev:
            return
        st.load = load
        if prev is None:
            return
        v = f.v
        if load and st.open:  # loaded again: a new cycle begins
            st.open = False
            out.append(self.alert(v, "closed", p.time, lon=p.lon, lat=p.lat))
            return
        if not (prev and not load):
            return
        # unloaded somewhere between the last fix and this one: either end inside a dump site is fine
        if self.layer.any_covers(f.x, f.y) or (f.seg and self.layer.any_covers(f.x0, f.y0)):
            return
        st.open = True
        out.append(self.alert(
            v, "open", p.time, lon=p.lon, lat=p.lat,
            facts={"load_before": "full" if prev == 3 else "half", "speed_kmh": p.speed_kmh},
            message=f"{v.label} unloaded outside approved dump sites (suspected illegal dumping)",
            evidence=self.evidence(v, self.world.sites_near(f.x, f.y), p.lon, p.lat, {"rule": self.config.name})))
