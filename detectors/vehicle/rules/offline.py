"""Offline: a terminal silent for `min_minutes` inside its vehicle's working hours (silence counts only
from the start of the hours: a terminal asleep overnight is not offline at 06:00). The vehicle's health
goes down with it and back up with its next live fix."""

from __future__ import annotations

from collections.abc import Iterable

from core.model import HealthChange

from ..config import OfflineRule
from ..world import World
from .base import Clock, Fix, Outputs, Rule, Vehicle


class OfflineState:
    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = False


class Offline(Rule):
    config: OfflineRule

    def __init__(self, config: OfflineRule, world: World) -> None:
        super().__init__(config, world)
        self.first_tick: float | None = None  # silence of a vehicle never seen counts from here

    def state_for(self, v: Vehicle) -> OfflineState:
        return OfflineState()

    def process(self, st: OfflineState, f: Fix, out: Outputs) -> None:
        if not st.open:
            return
        st.open = False
        v, p = f.v, f.p
        out.append(self.alert(v, "closed", p.time, lon=p.lon, lat=p.lat,
                              facts={"silent_s": round(f.t - (v.last_t or f.t))}))
        out.append(HealthChange("vehicle", v.id, True, p.time))

    def tick(self, clock: Clock, vehicles: Iterable[Vehicle], out: Outputs) -> None:
        if self.first_tick is None:
            self.first_tick = clock.ts
        for v in vehicles:
            st = self.states[v.id]
            if st.open or not v.hours_mask[clock.minute]:
                continue
            last = v.last_t if v.last_t is not None else self.first_tick
            for w in v.hours:
                inst = w.instance(clock.local)
                if inst is not None:
                    last = max(last, inst[0].timestamp())
                    break
            silent = clock.ts - last
            if silent < self.config.min_minutes * 60:
                continue
            st.open = True
            seen = v.last_t is not None
            out.append(self.alert(
                v, "open", clock.now, lon=v.last_lon if seen else None, lat=v.last_lat if seen else None,
                facts={"silent_s": round(silent), "last_fix": self.world.iso(v.last_t) if seen else None},  # type: ignore[arg-type]
                message=f"terminal of {v.label} silent for {round(silent / 60)} min in working hours"))
            out.append(HealthChange("vehicle", v.id, False, clock.now))
