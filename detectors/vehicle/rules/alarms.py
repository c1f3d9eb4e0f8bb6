"""Terminal alarms: the JT/T 808 alarm flag bits the config names, one episode per bit, open while the
terminal raises it. The terminal's own zone/route/overspeed extras are passed on as facts."""

from __future__ import annotations

from typing import Any

from ..config import TerminalAlarmRule
from .base import Fix, Outputs, Rule, Vehicle

_EXTRAS = ("zone_route_alarm", "overspeed_alarm", "route_time_alarm")


class AlarmState:
    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = 0  # the configured bits open now


class TerminalAlarms(Rule):
    config: TerminalAlarmRule

    def state_for(self, v: Vehicle) -> AlarmState:
        return AlarmState()

    def process(self, st: AlarmState, f: Fix, out: Outputs) -> None:
        p = f.p
        changed = (p.alarm ^ st.bits) & 0xFFFFFFFF
        if not changed:
            return
        v = f.v
        for bit, name in self.config.bits.items():
            mask = 1 << bit
            if not changed & mask:
                continue
            if p.alarm & mask:
                st.bits |= mask
                facts: dict[str, Any] = {"alarm_bit": bit, "alarm": name, "speed_kmh": p.speed_kmh}
                for key in _EXTRAS:
                    if key in p.extras:
                        facts[key] = p.extras[key]
                out.append(self.alert(v, "open", p.time, place=name, lon=p.lon, lat=p.lat, facts=facts,
                                      message=f"terminal of {v.label} raised {name}"))
            else:
                st.bits &= ~mask
                out.append(self.alert(v, "closed", p.time, place=name, lon=p.lon, lat=p.lat,
                                      facts={"alarm_bit": bit, "alarm": name}))
