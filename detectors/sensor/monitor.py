"""Water and rain sensing rules (城市防汛): Reading in, Alert out. Pure: no I/O, no clock reads.

Times come only from the readings and from `tick(now)`, which must be on the same clock as the
readings' times (the runtime passes wall-clock time live, and the replay clock when replaying).

One condition per (rule, device): it opens at the rule's lowest threshold, may escalate (a second
"open" alert, same key, higher severity, facts["escalated_from"]), steps down silently once the
value falls below the higher threshold's hysteresis point (so a renewed rise escalates again),
and closes once, below the lowest threshold's hysteresis point.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.model import SEVERITIES, Alert, DetectorOutput, HealthChange, Reading

from .config import (
    LevelRuleConfig,
    RainRuleConfig,
    RiseRuleConfig,
    SensorDeviceConfig,
    SensorsConfig,
    severity_rank,
)

STAT_KEYS = ("readings", "unknown_device", "out_of_order", "duplicate", "out_of_range", "non_finite",
             "missing_field", "negative_rain", "counter_reset")


@dataclass
class _Open:
    """An open condition: the severity it stands at now and when it opened."""

    severity: str
    opened_at: datetime
    peak: float


@dataclass
class _LevelState:
    warn_since: datetime | None = None
    crit_since: datetime | None = None
    open: _Open | None = None


@dataclass
class _RiseState:
    history: deque[tuple[datetime, float]] = field(default_factory=deque)
    open: _Open | None = None


@dataclass
class _RainState:
    increments: deque[tuple[datetime, float]] = field(default_factory=deque)
    last_counter: float | None = None  # cumulative mode
    open: _Open | None = None


def _seconds(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


def window_label(seconds: float) -> str:
    """3600 -> '1h', 600 -> '10min', 90 -> '90s': short names for window totals in facts."""
    s = int(seconds)
    if s == seconds and s % 3600 == 0:
        return f"{s // 3600}h"
    if s == seconds and s % 60 == 0:
        return f"{s // 60}min"
    return f"{seconds:g}s"


class SensorMonitor:
    def __init__(self, cfg: SensorsConfig) -> None:
        self.cfg = cfg
        self.devices: dict[str, SensorDeviceConfig] = {d.id: d for d in cfg.devices}
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._level_rules = [(r, set(cfg.devices_for(r))) for r in cfg.level_rules]
        self._rise_rules = [(r, set(cfg.devices_for(r))) for r in cfg.rise_rules]
        self._rain_rules = [(r, set(cfg.devices_for(r))) for r in cfg.rain_rules]
        self._level: dict[tuple[str, str], _LevelState] = {}
        self._rise: dict[tuple[str, str], _RiseState] = {}
        self._rain: dict[tuple[str, str], _RainState] = {}
        self._last_time: dict[str, datetime] = {}
        self._epoch: datetime | None = None  # first time seen: devices silent since then go offline too
        self._offline: dict[str, datetime] = {}  # device -> when it went offline
        self._same: dict[tuple[str, str], tuple[float, datetime]] = {}  # (device, field) -> value, unchanged since
        self._stuck: set[tuple[str, str]] = set()
        self._bad_range: set[tuple[str, str]] = set()

    # -- public ------------------------------------------------------------------------------

    def process(self, reading: Reading) -> list[DetectorOutput]:
        """Run every rule that watches this reading's device; returns the alerts it causes."""
        dev = self.devices.get(reading.device)
        if dev is None:
            self.stats["unknown_device"] += 1
            return []
        last = self._last_time.get(dev.id)
        if last is not None and reading.time <= last:
            self.stats["out_of_order" if reading.time < last else "duplicate"] += 1
            return []
        self.stats["readings"] += 1
        self._last_time[dev.id] = reading.time
        if self._epoch is None:
            self._epoch = reading.time
        alerts = self._back_online(dev, reading.time)
        values, range_alerts = self._clean_values(dev, reading)
        alerts += range_alerts
        alerts += self._check_stuck(dev, reading.time, values)
        for rules, check in ((self._level_rules, self._level_rule), (self._rise_rules, self._rise_rule),
                             (self._rain_rules, self._rain_rule)):
            for rule, ids in rules:
                if dev.id not in ids:
                    continue
                value = values.get(rule.value_field)
                if value is None:  # this report lacks the rule's field: the rule skips it
                    self.stats["missing_field"] += 1
                    continue
                alerts += check(rule, dev, reading, value)
        return alerts

    def tick(self, now: datetime, *, only: Collection[str] | None = None,
             exclude: Collection[str] = ()) -> list[DetectorOutput]:
        """Time passing without readings: devices go offline, rain windows drain and clear.

        `only` / `exclude` name the devices whose clock this is (see FleetMonitor.tick)."""
        if self._epoch is None:
            self._epoch = now
        alerts: list[DetectorOutput] = []
        devices = [d for d in self.devices.values()
                   if (only is None or d.id in only) and d.id not in exclude]
        limit = self.cfg.health.offline_after_s
        if limit is not None:
            for dev in devices:
                seen = self._last_time.get(dev.id)
                silent = _seconds(now, seen or self._epoch)
                if dev.id not in self._offline and silent >= limit:
                    self._offline[dev.id] = now
                    facts = {"last_seen": seen.isoformat() if seen else None, "silent_s": round(silent, 1)}
                    what = f"no report for {silent:.0f} s" if seen else f"never reported in {silent:.0f} s"
                    alerts.append(self._health_alert(dev, "open", now, "offline", f"{self._who(dev)}: offline, {what}",
                                                     facts))
                    alerts.append(HealthChange("sensor", dev.id, False, now))
        for rule, ids in self._rain_rules:
            for dev_id in sorted(ids):
                if (only is not None and dev_id not in only) or dev_id in exclude:
                    continue
                st = self._rain.get((rule.name, dev_id))
                if st is not None and st.open is not None:
                    alerts += self._rain_evaluate(rule, self.devices[dev_id], st, now, unit="mm")
        return alerts

    # -- health ------------------------------------------------------------------------------

    def _who(self, dev: SensorDeviceConfig) -> str:
        return f"{dev.id} ({dev.name})" if dev.name else dev.id

    def _health_alert(self, dev: SensorDeviceConfig, state: str, time: datetime, place: str, message: str,
                      facts: dict[str, Any]) -> Alert:
        h = self.cfg.health
        return self._alert(h.name, dev, state, time, h.severity, message, h.category, place, facts)

    def _back_online(self, dev: SensorDeviceConfig, time: datetime) -> list[DetectorOutput]:
        since = self._offline.pop(dev.id, None)
        if since is None:
            return []
        facts = {"offline_since": since.isoformat(), "offline_s": round(_seconds(time, since), 1)}
        return [self._health_alert(dev, "closed", time, "offline", f"{self._who(dev)}: back online", facts),
                HealthChange("sensor", dev.id, True, time)]

    def _clean_values(self, dev: SensorDeviceConfig, reading: Reading) -> tuple[dict[str, float], list[Alert]]:
        """The reading's values that the rules may use: finite and inside the device's ranges."""
        values: dict[str, float] = {}
        alerts: list[Alert] = []
        for name, raw in reading.values.items():
            value = float(raw)
            if not math.isfinite(value):
                self.stats["non_finite"] += 1
                continue
            bounds = dev.ranges.get(name)
            key = (dev.id, name)
            if bounds is not None and not (bounds[0] <= value <= bounds[1]):
                self.stats["out_of_range"] += 1
                if self.cfg.health.range_alert and key not in self._bad_range:
                    self._bad_range.add(key)
                    facts = {"field": name, "value": value, "range": list(bounds)}
                    msg = f"{self._who(dev)}: {name} = {value:g} is outside [{bounds[0]:g}, {bounds[1]:g}]"
                    alerts.append(self._health_alert(dev, "open", reading.time, f"range:{name}", msg, facts))
                continue
            if key in self._bad_range:
                self._bad_range.discard(key)
                msg = f"{self._who(dev)}: {name} back in range"
                alerts.append(self._health_alert(dev, "closed", reading.time, f"range:{name}", msg,
                                                 {"field": name, "value": value}))
            values[name] = value
        return values, alerts

    def _check_stuck(self, dev: SensorDeviceConfig, time: datetime, values: dict[str, float]) -> list[Alert]:
        limit = self.cfg.health.stuck_after_s
        if limit is None:
            return []
        alerts: list[Alert] = []
        for name in self.cfg.health.stuck_fields:
            value = values.get(name)
            if value is None:
                continue
            key = (dev.id, name)
            prev = self._same.get(key)
            if prev is None or prev[0] != value:
                self._same[key] = (value, time)
                if key in self._stuck:
                    self._stuck.discard(key)
                    alerts.append(self._health_alert(dev, "closed", time, f"stuck:{name}",
                                                     f"{self._who(dev)}: {name} changes again",
                                                     {"field": name, "value": value}))
                continue
            same_s = _seconds(time, prev[1])
            if value != 0 and same_s >= limit and key not in self._stuck:
                self._stuck.add(key)
                msg = f"{self._who(dev)}: {name} stuck at {value:g} for {same_s:.0f} s"
                alerts.append(self._health_alert(dev, "open", time, f"stuck:{name}", msg,
                                                 {"field": name, "value": value, "unchanged_s": round(same_s, 1)}))
        return alerts

    # -- water level thresholds ---------------------------------------------------------------

    def _level_rule(self, rule: LevelRuleConfig, dev: SensorDeviceConfig, reading: Reading,
                    value: float) -> list[Alert]:
        t = reading.time
        st = self._level.setdefault((rule.name, dev.id), _LevelState())
        st.warn_since = (st.warn_since or t) if value >= rule.warn_at else None
        st.crit_since = (st.crit_since or t) if value >= rule.critical_at else None

        def held(since: datetime | None) -> bool:
            return since is not None and _seconds(t, since) >= rule.min_duration_s

        unit = reading.units.get(rule.field, "cm")
        margin = rule.clear_below_margin
        if st.open is not None:
            st.open.peak = max(st.open.peak, value)
        if st.open is None or st.open.severity == "warning":
            if held(st.crit_since):
                return [self._level_open(rule, dev, st, t, value, unit, "critical", rule.critical_at, st.crit_since)]
            if st.open is None and held(st.warn_since):
                return [self._level_open(rule, dev, st, t, value, unit, "warning", rule.warn_at, st.warn_since)]
        if st.open is None:
            return []
        if value < rule.warn_at - margin:
            opened = st.open
            st.open = None
            facts = {"value": value, "unit": unit, "threshold": rule.warn_at - margin, "peak": opened.peak,
                     "duration_s": round(_seconds(t, opened.opened_at), 1), "level": opened.severity}
            msg = (f"{self._who(dev)}: water level {value:g} {unit} is below {rule.warn_at - margin:g} {unit}; "
                   f"cleared after peak {opened.peak:g} {unit}")
            return [self._alert(rule.name, dev, "closed", t, opened.severity, msg, rule.category, rule.name, facts)]
        if st.open.severity == "critical" and value < rule.critical_at - margin:
            st.open.severity = "warning"  # silent step down: a renewed rise escalates again
        return []

    def _level_open(self, rule: LevelRuleConfig, dev: SensorDeviceConfig, st: _LevelState, t: datetime,
                    value: float, unit: str, severity: str, threshold: float, since: datetime | None) -> Alert:
        previous = st.open
        facts: dict[str, Any] = {"value": value, "unit": unit, "threshold": threshold, "level": severity,
                                 "duration_s": round(_seconds(t, since), 1) if since else 0.0}
        if previous is None:
            st.open = _Open(severity, t, value)
        else:
            facts["escalated_from"] = previous.severity
            facts["open_since"] = previous.opened_at.isoformat()
            previous.severity = severity
        msg = (f"{self._who(dev)}: water level {value:g} {unit} >= {severity} level {threshold:g} {unit} "
               f"for {facts['duration_s']:g} s")
        return self._alert(rule.name, dev, "open", t, severity, msg, rule.category, rule.name, facts)

    # -- rate of rise ------------------------------------------------------------------------

    def _rise_rule(self, rule: RiseRuleConfig, dev: SensorDeviceConfig, reading: Reading,
                   value: float) -> list[Alert]:
        t = reading.time
        st = self._rise.setdefault((rule.name, dev.id), _RiseState())
        st.history.append((t, value))
        while _seconds(t, st.history[0][0]) > rule.window_s:
            st.history.popleft()
        low_t, low = min(st.history, key=lambda p: p[1])
        rise = value - low
        unit = reading.units.get(rule.field, "cm")
        span = _seconds(t, low_t)
        facts: dict[str, Any] = {"value": value, "unit": unit, "rise": round(rise, 2), "window_s": rule.window_s,
                                 "threshold": rule.rise_cm,
                                 "rate_per_h": round(rise / span * 3600, 1) if span > 0 else None}
        if st.open is None and rise >= rule.rise_cm:
            st.open = _Open(rule.severity, t, value)
            msg = (f"{self._who(dev)}: water rose {rise:.1f} {unit} in {span:.0f} s "
                   f"(>= {rule.rise_cm:g} {unit} within {rule.window_s:g} s), now {value:g} {unit}")
            return [self._alert(rule.name, dev, "open", t, rule.severity, msg, rule.category, rule.name, facts)]
        if st.open is not None and rise < rule.rise_cm * rule.clear_ratio:
            facts["duration_s"] = round(_seconds(t, st.open.opened_at), 1)
            st.open = None
            msg = f"{self._who(dev)}: water no longer rising fast ({rise:.1f} {unit} within {rule.window_s:g} s)"
            return [self._alert(rule.name, dev, "closed", t, rule.severity, msg, rule.category, rule.name, facts)]
        return []

    # -- accumulated rainfall ----------------------------------------------------------------

    def _rain_rule(self, rule: RainRuleConfig, dev: SensorDeviceConfig, reading: Reading,
                   value: float) -> list[Alert]:
        st = self._rain.setdefault((rule.name, dev.id), _RainState())
        if rule.mode == "cumulative":
            prev, st.last_counter = st.last_counter, value
            if prev is None:
                increment = 0.0  # first value is only the baseline
            elif value < prev:
                self.stats["counter_reset"] += 1
                increment = value  # the counter restarted from zero: all of it fell since the reset
            else:
                increment = value - prev
        else:
            if value < 0:
                self.stats["negative_rain"] += 1
                return []
            increment = value
        st.increments.append((reading.time, increment))
        return self._rain_evaluate(rule, dev, st, reading.time, reading.units.get(rule.value_field, "mm"))

    def _rain_evaluate(self, rule: RainRuleConfig, dev: SensorDeviceConfig, st: _RainState, t: datetime,
                       unit: str) -> list[Alert]:
        longest = max(th.window_s for th in rule.thresholds)
        while st.increments and _seconds(t, st.increments[0][0]) >= longest:
            st.increments.popleft()
        # an increment reported at time ti covers the rain just before ti, so (t - w, t] is "within w"
        totals = [sum(mm for ti, mm in st.increments if _seconds(t, ti) < th.window_s) for th in rule.thresholds]
        reached = [th for th, total in zip(rule.thresholds, totals, strict=True) if total >= th.mm]
        held = [th for th, total in zip(rule.thresholds, totals, strict=True) if total >= th.mm * rule.clear_ratio]
        window_totals = {window_label(th.window_s): round(total, 2) for th, total in zip(rule.thresholds, totals,
                                                                                          strict=True)}
        facts: dict[str, Any] = {"unit": unit, "window_totals": window_totals}
        top = max(reached, key=lambda th: severity_rank(th.severity), default=None)
        if top is not None and (st.open is None or severity_rank(top.severity) > severity_rank(st.open.severity)):
            previous = st.open
            if previous is None:
                st.open = _Open(top.severity, t, 0.0)
            else:
                facts["escalated_from"] = previous.severity
                previous.severity = top.severity
                facts["open_since"] = previous.opened_at.isoformat()
            label = window_label(top.window_s)
            facts.update(threshold=f"{label} >= {top.mm:g} {unit}", level=top.severity,
                         value=window_totals[label])
            msg = f"{self._who(dev)}: {window_totals[label]:g} {unit} of rain within {label} (>= {top.mm:g} {unit})"
            return [self._alert(rule.name, dev, "open", t, top.severity, msg, rule.category, rule.name, facts)]
        if st.open is None:
            return []
        if not held:
            opened = st.open
            st.open = None
            facts.update(duration_s=round(_seconds(t, opened.opened_at), 1), level=opened.severity)
            totals_text = ", ".join(f"{k} {v:g} {unit}" for k, v in window_totals.items())
            msg = f"{self._who(dev)}: rain eased ({totals_text})"
            return [self._alert(rule.name, dev, "closed", t, opened.severity, msg, rule.category, rule.name, facts)]
        still = max(severity_rank(th.severity) for th in held)
        if still < severity_rank(st.open.severity):
            st.open.severity = SEVERITIES[still]  # silent step down: renewed heavy rain escalates again
        return []

    # -- alert building ----------------------------------------------------------------------

    def _alert(self, rule: str, dev: SensorDeviceConfig, state: str, time: datetime, severity: str, message: str,
               category: str | None, place: str, facts: dict[str, Any]) -> Alert:
        return Alert(rule=rule, subject_kind="sensor", subject_id=dev.id, state=state,  # type: ignore[arg-type]
                     time=time, source="sensor", severity=severity, message=message,  # type: ignore[arg-type]
                     category=category, place=place, lon=dev.lon, lat=dev.lat,
                     facts={**facts, "address": dev.address, "device_name": dev.name})
