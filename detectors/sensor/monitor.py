"""Water and rain sensing rules (城市防汛): Reading in, Alert out. Pure: no I/O, no clock reads.

Times come only from the readings and from `tick(now)`, which must be on the same clock as the
readings' times (the runtime passes wall-clock time live, and the replay clock when replaying).

Episodes: one per (rule, device). It opens at the first level of the rule's ladder that holds for
its minimum duration; every change of level after that (up: escalated, down below the level's clear
point: deescalated) is one more "open" alert with the same key, and the episode closes once, below
the lowest level's clear point, or when its device goes offline (a silent probe must not hold a
case open for ever). Never one alert per reading.

Input hygiene, in this order: unknown devices, readings dated in the future, out-of-order and
duplicate readings, non-finite and out-of-range values, single-sample spikes (see `_despike`).
`export_state` / `restore_state` carry open episodes, rain windows and last values across a restart,
per device: `take_dirty()` names the devices whose state changed since it was last asked, so a save
writes only those. `adopt_episode` / `forget_episode` square a restored state with the case desk at
start-up (an open case's episode the last save missed; an episode whose clear it missed).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal

from core.model import Alert, DetectorOutput, Evidence, HealthChange, Reading

from .chart import ChartLine, render_level_chart
from .config import (
    Level,
    LevelRuleConfig,
    RainRuleConfig,
    RiseRuleConfig,
    SensorDeviceConfig,
    SensorsConfig,
)
from .windows import MinuteSeries, RollingSums, minute_start

STAT_KEYS = ("readings", "unknown_device", "future", "out_of_order", "duplicate", "out_of_range", "non_finite",
             "missing_field", "negative_rain", "counter_reset", "spike_dropped", "restore_dropped")
# Rain totals always reported in facts (besides the ladder's own windows): 1, 3, 6, 12 and 24 h.
STANDARD_RAIN_WINDOWS = (3600.0, 10800.0, 21600.0, 43200.0, 86400.0)
STATE_VERSION = 2  # 2: one entry per device (1 was one document of rule-wide lists)


@dataclass
class _Episode:
    """An open episode: the ladder level it stands at (index), since when it is open, its peak, and
    whether it reached the level that files a case."""

    level: int
    opened_at: datetime
    peak: float
    case: bool = False


@dataclass
class _LevelState:
    since: list[datetime | None]  # per level: the value is at or above it since
    open: _Episode | None = None


@dataclass
class _RiseState:
    history: deque[tuple[datetime, float]] = field(default_factory=deque)
    open: _Episode | None = None


@dataclass
class _RainState:
    sums: RollingSums
    last_counter: float | None = None  # cumulative mode
    open: _Episode | None = None


@dataclass
class _Spike:
    accepted: float  # the last value let through
    pending: float | None = None  # a jump waiting for the next reading to confirm it


_VALUE = itemgetter(1)  # of a (time, value) pair


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


def _distance_m(a: SensorDeviceConfig, b: SensorDeviceConfig) -> float:
    """Haversine distance in metres."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(h)))


class Neighbourhood:
    """Which devices are neighbours (for the flat-line check): those of the same group, and those within
    `radius_m`. Found on first use per device, from a grid of radius-sized cells, so 10,000 devices
    cost neither 10^8 distances nor anything at start-up."""

    def __init__(self, devices: list[SensorDeviceConfig], radius_m: float) -> None:
        self.devices = {d.id: d for d in devices}
        self.radius_m = radius_m
        self._cell = radius_m / 111_000 + 1e-9  # degrees of latitude; longitude cells are narrower, never wider
        self._groups: dict[str, list[str]] = {}
        self._grid: dict[tuple[int, int], list[SensorDeviceConfig]] = {}
        for d in devices:
            if d.group:
                self._groups.setdefault(d.group, []).append(d.id)
            self._grid.setdefault(self._key(d), []).append(d)
        self._found: dict[str, list[str]] = {}

    def _key(self, d: SensorDeviceConfig) -> tuple[int, int]:
        return int(d.lat // self._cell), int(d.lon // self._cell)

    def of(self, device: str) -> list[str]:
        found = self._found.get(device)
        if found is not None:
            return found
        d = self.devices[device]
        near = {x for x in self._groups.get(d.group, ()) if x != device} if d.group else set()
        if self.radius_m > 0:
            ci, cj = self._key(d)
            reach = max(1, math.ceil(1 / max(math.cos(math.radians(d.lat)), 0.01)))
            for i in range(ci - 1, ci + 2):
                for j in range(cj - reach, cj + reach + 1):
                    near.update(o.id for o in self._grid.get((i, j), ())
                                if o.id != device and _distance_m(d, o) <= self.radius_m)
        found = self._found[device] = sorted(near)
        return found


class SensorMonitor:
    def __init__(self, cfg: SensorsConfig) -> None:
        self.cfg = cfg
        self.devices: dict[str, SensorDeviceConfig] = {d.id: d for d in cfg.devices}
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        h = cfg.health
        self._level_rules = [(r, set(cfg.devices_for(r))) for r in cfg.level_rules]
        self._rise_rules = [(r, set(cfg.devices_for(r))) for r in cfg.rise_rules]
        self._rain_rules = [(r, set(cfg.devices_for(r))) for r in cfg.rain_rules]
        self._ladders: dict[str, list[Level]] = {r.name: r.ladder for r in cfg.level_rules}
        self._offline_limit = {d.id: self._offline_after(d) for d in cfg.devices}
        self._near = Neighbourhood(cfg.devices, h.neighbour_radius_m)
        self._series_fields = {r.field for r in cfg.level_rules} | set(h.stuck_fields)
        self._series_span = max([r.chart_hours * 3600 for r in cfg.level_rules] + [h.flatline_after_s or 0, 3600.0])
        # what every reading needs, copied out of the config once: reading a pydantic model's attribute costs
        # ten times a plain one (its __getattr__ hook defeats the interpreter's attribute caches)
        self._checks = self._rules_by_device()
        self._ranges = {d.id: d.ranges for d in cfg.devices if d.ranges}
        self._future_tolerance_s = h.future_tolerance_s
        self._spike_jump = list(h.spike_jump.items())
        self._battery_low = list(h.low_battery.items())
        self._stuck_fields = list(h.stuck_fields) if h.stuck_after_s is not None or h.flatline_after_s is not None \
            else []
        self._level: dict[tuple[str, str], _LevelState] = {}
        self._rise: dict[tuple[str, str], _RiseState] = {}
        self._rain: dict[tuple[str, str], _RainState] = {}
        self._series: dict[tuple[str, str], MinuteSeries] = {}  # (device, field) -> per-minute highs
        self._spikes: dict[tuple[str, str], _Spike] = {}
        self._last_time: dict[str, datetime] = {}
        self._ahead: dict[str, Reading] = {}  # a reading far ahead of its device's last one, awaiting the next
        self._wall: datetime | None = None  # the latest wall-clock tick
        self._recorded: set[str] = set()  # devices ticked on a recording's clock (tick(only=...))
        self._epoch: datetime | None = None  # first time seen: devices silent since then go offline too
        self._offline: dict[str, datetime] = {}  # device -> when it went offline
        self._same: dict[tuple[str, str], tuple[float, datetime]] = {}  # (device, field) -> value, unchanged since
        self._stuck: set[tuple[str, str]] = set()
        self._flat: set[tuple[str, str]] = set()
        self._bad_range: set[tuple[str, str]] = set()
        self._low_battery: set[tuple[str, str]] = set()
        self._dirty: set[str] = set()  # devices whose state changed since take_dirty(): what the next save writes

    def _rules_by_device(self) -> dict[str, tuple[tuple[Any, Callable[..., list[Alert]], str], ...]]:
        """Per device, the (rule, check, field) of every rule that watches it, in rule order (level, rise,
        rain); devices watched by the same rules share one tuple."""
        watched = [(rule, ids, check) for rules, check in ((self._level_rules, self._level_rule),
                                                           (self._rise_rules, self._rise_rule),
                                                           (self._rain_rules, self._rain_rule)) for rule, ids in rules]
        shared: dict[tuple[bool, ...], tuple[tuple[Any, Callable[..., list[Alert]], str], ...]] = {}
        checks = {}
        for dev_id in self.devices:
            shape = tuple(dev_id in ids for _, ids, _ in watched)
            if shape not in shared:
                shared[shape] = tuple((rule, check, rule.value_field)
                                      for (rule, _, check), on in zip(watched, shape, strict=True) if on)
            checks[dev_id] = shared[shape]
        return checks

    def _offline_after(self, dev: SensorDeviceConfig) -> float | None:
        h = self.cfg.health
        interval = dev.report_interval_s or h.report_intervals.get(dev.profile)
        return interval * h.offline_after_intervals if interval else h.offline_after_s

    # -- public ------------------------------------------------------------------------------

    def process(self, reading: Reading) -> list[DetectorOutput]:
        """Run every rule that watches this reading's device; returns what it causes."""
        dev = self.devices.get(reading.device)
        if dev is None:
            self.stats["unknown_device"] += 1
            return []
        held = self._ahead.pop(reading.device, None) if self._ahead else None
        if held is None:
            return self._judge(dev, reading)
        out: list[DetectorOutput] = []
        if reading.time >= held.time:  # the next reading follows it: the gap was real
            out += self._accept(dev, held)
        else:  # the next reading is back in the past: the held one was dated in the future
            self.stats["future"] += 1
        return out + self._judge(dev, reading)

    def _judge(self, dev: SensorDeviceConfig, reading: Reading) -> list[DetectorOutput]:
        """Readings dated in the future never become the device's last time (which would make every later
        reading "out of order"). Live, the wall-clock tick is the reference: a reading more than
        future_tolerance_s ahead of it is dropped. On a recording's clock, or before any tick, a reading
        that far ahead of the device's last one is held until the next reading shows which was wrong."""
        tolerance = self._future_tolerance_s
        if self._wall is not None and reading.device not in self._recorded:
            if _seconds(reading.time, self._wall) > tolerance:
                self.stats["future"] += 1
                return []
        else:
            last = self._last_time.get(reading.device)
            if last is not None and _seconds(reading.time, last) > tolerance:
                self._ahead[reading.device] = reading
                return []
        return self._accept(dev, reading)

    def _accept(self, dev: SensorDeviceConfig, reading: Reading) -> list[DetectorOutput]:
        dev_id = reading.device  # dev.id, the key of `dev` in self.devices
        last = self._last_time.get(dev_id)
        if last is not None and reading.time <= last:
            self.stats["out_of_order" if reading.time < last else "duplicate"] += 1
            return []
        self.stats["readings"] += 1
        t = reading.time
        self._last_time[dev_id] = t
        self._dirty.add(dev_id)  # every state change of a device comes from an accepted reading or a tick
        if self._epoch is None:
            self._epoch = t
        alerts = self._back_online(dev, t)
        values = self._clean_values(dev, reading, alerts)
        spiking = self._despike(dev_id, values)
        for name in self._series_fields:
            if name in values:
                series = self._series.get((dev_id, name))
                if series is None:
                    series = self._series[(dev_id, name)] = MinuteSeries(self._series_span)
                series.add(t, values[name])
        if self._battery_low:
            self._check_battery(dev, t, values, alerts)
        if self._stuck_fields:
            self._check_stuck(dev, dev_id, t, values, alerts)
        for rule, check, name in self._checks[dev_id]:
            value = values.get(name)
            if value is None:  # this report lacks the rule's field (or holds back a spike): the rule skips it
                if name not in spiking:
                    self.stats["missing_field"] += 1
                continue
            if found := check(rule, dev, reading, value):
                alerts += found
        return alerts

    def tick(self, now: datetime, *, only: Collection[str] | None = None,
             exclude: Collection[str] = ()) -> list[DetectorOutput]:
        """Time passing without readings: devices go offline (closing their episodes), rain windows drain.

        `only` / `exclude` name the devices whose clock this is (see FleetMonitor.tick): a tick without
        `only` is the wall clock; devices ticked with `only` run on a recording's clock."""
        if self._epoch is None:
            self._epoch = now
        if only is None:
            self._wall = now
        else:
            self._recorded.update(only)
        alerts: list[DetectorOutput] = []
        devices = [d for d in self.devices.values()
                   if (only is None or d.id in only) and d.id not in exclude]
        for dev in devices:
            limit = self._offline_limit[dev.id]
            if limit is None or dev.id in self._offline:
                continue
            seen = self._last_time.get(dev.id)
            silent = _seconds(now, seen or self._epoch)
            if silent >= limit:
                self._offline[dev.id] = now
                self._dirty.add(dev.id)
                facts = {"last_seen": seen.isoformat() if seen else None, "silent_s": round(silent, 1),
                         "limit_s": limit}
                what = f"no report for {silent:.0f} s" if seen else f"never reported in {silent:.0f} s"
                alerts.append(self._health_alert(dev, "open", now, "offline", f"{self._who(dev)}: offline, {what}",
                                                 facts))
                alerts.append(HealthChange("sensor", dev.id, False, now))
                alerts += self._close_episodes(dev, now)
        for rule, ids in self._rain_rules:
            for dev_id in sorted(ids):
                if (only is not None and dev_id not in only) or dev_id in exclude:
                    continue
                st = self._rain.get((rule.name, dev_id))
                if st is not None and st.open is not None:
                    self._dirty.add(dev_id)
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
        since = self._offline.pop(dev.id, None) if self._offline else None
        if since is None:
            return []
        facts = {"offline_since": since.isoformat(), "offline_s": round(_seconds(time, since), 1)}
        return [self._health_alert(dev, "closed", time, "offline", f"{self._who(dev)}: back online", facts),
                HealthChange("sensor", dev.id, True, time)]

    def _close_episodes(self, dev: SensorDeviceConfig, now: datetime) -> list[Alert]:
        """A device gone offline closes its level and rise episodes: nobody can see the water any more,
        and its next reading opens a fresh episode if the water is still there."""
        alerts: list[Alert] = []
        for rule, ids in self._level_rules:
            st = self._level.get((rule.name, dev.id))
            if dev.id in ids and st is not None:
                if st.open is not None:
                    alerts.append(self._level_close(rule, dev, st, now, None, "cm", reason="offline"))
                st.since = [None] * len(st.since)
        for rule, ids in self._rise_rules:
            rst = self._rise.get((rule.name, dev.id))
            if dev.id in ids and rst is not None:
                rst.history.clear()
                if rst.open is not None:
                    facts = {"duration_s": round(_seconds(now, rst.open.opened_at), 1), "reason": "offline"}
                    rst.open = None
                    alerts.append(self._alert(rule.name, dev, "closed", now, rule.severity,
                                              f"{self._who(dev)}: offline, rise episode closed", rule.category,
                                              rule.name, facts))
        self._spikes = {k: v for k, v in self._spikes.items() if k[0] != dev.id}
        return alerts

    def _clean_values(self, dev: SensorDeviceConfig, reading: Reading, alerts: list[DetectorOutput]
                      ) -> dict[str, float]:
        """The reading's values that the rules may use: finite and inside the device's ranges (alerts about
        ranges go to `alerts`)."""
        values: dict[str, float] = {}
        ranges, bad_range = self._ranges.get(reading.device), self._bad_range
        for name, raw in reading.values.items():
            value = float(raw)
            if not math.isfinite(value):
                self.stats["non_finite"] += 1
                continue
            bounds = ranges.get(name) if ranges else None
            if bounds is not None and not (bounds[0] <= value <= bounds[1]):
                key = (dev.id, name)
                self.stats["out_of_range"] += 1
                if self.cfg.health.range_alert and key not in self._bad_range:
                    self._bad_range.add(key)
                    facts = {"field": name, "value": value, "range": list(bounds)}
                    msg = f"{self._who(dev)}: {name} = {value:g} is outside [{bounds[0]:g}, {bounds[1]:g}]"
                    alerts.append(self._health_alert(dev, "open", reading.time, f"range:{name}", msg, facts))
                continue
            if bad_range and (dev.id, name) in bad_range:
                bad_range.discard((dev.id, name))
                msg = f"{self._who(dev)}: {name} back in range"
                alerts.append(self._health_alert(dev, "closed", reading.time, f"range:{name}", msg,
                                                 {"field": name, "value": value}))
            values[name] = value
        return values

    def _despike(self, dev_id: str, values: dict[str, float]) -> set[str]:
        """Confirm-next-sample: a value further than spike_jump from the last accepted one is held back;
        the next reading decides. Near the held value: the jump was real, the next value goes through.
        Near the old one: the held value was a single-sample spike (3 -> 180 -> 3 cm), dropped and
        counted. Latency: one report interval, and only for jumps; ordinary changes pass at once.
        Held values are taken out of `values`; returns their names."""
        spiking: set[str] = set()
        for name, limit in self._spike_jump:
            value = values.get(name)
            if value is None:
                continue
            key = (dev_id, name)
            st = self._spikes.get(key)
            if st is None:
                self._spikes[key] = _Spike(value)
                continue
            if st.pending is not None:
                pending, st.pending = st.pending, None
                if abs(value - pending) > limit and abs(value - st.accepted) <= limit:
                    self.stats["spike_dropped"] += 1
                elif abs(value - pending) > limit:  # yet another jump: it waits in turn
                    self.stats["spike_dropped"] += 1
                    st.pending = value
                    spiking.add(name)
                    del values[name]
                    continue
                st.accepted = value
                continue
            if abs(value - st.accepted) > limit:
                st.pending = value
                spiking.add(name)
                del values[name]
                continue
            st.accepted = value
        return spiking

    def _check_battery(self, dev: SensorDeviceConfig, time: datetime, values: dict[str, float],
                       alerts: list[DetectorOutput]) -> None:
        for name, low in self._battery_low:
            value = values.get(name)
            if value is None or (value >= low and not self._low_battery):  # fine, and nothing to clear
                continue
            key = (dev.id, name)
            if key not in self._low_battery and value < low:
                self._low_battery.add(key)
                alerts.append(self._health_alert(dev, "open", time, f"battery:{name}",
                                                 f"{self._who(dev)}: battery low ({name} = {value:g} < {low:g})",
                                                 {"field": name, "value": value, "threshold": low}))
            elif key in self._low_battery and value >= low * 1.05:  # 5 % hysteresis: voltage sags and recovers
                self._low_battery.discard(key)
                alerts.append(self._health_alert(dev, "closed", time, f"battery:{name}",
                                                 f"{self._who(dev)}: battery recovered ({name} = {value:g})",
                                                 {"field": name, "value": value, "threshold": low}))

    def _check_stuck(self, dev: SensorDeviceConfig, dev_id: str, time: datetime, values: dict[str, float],
                     alerts: list[DetectorOutput]) -> None:
        for name in self._stuck_fields:
            value = values.get(name)
            if value is None:
                continue
            key = (dev_id, name)
            prev = self._same.get(key)
            if prev is None or prev[0] != value:
                self._same[key] = (value, time)
                if key not in self._stuck and key not in self._flat:
                    continue
                for opened, place, what in ((self._stuck, "stuck", "changes again"),
                                            (self._flat, "flatline", "follows the water again")):
                    if key in opened:
                        opened.discard(key)
                        alerts.append(self._health_alert(dev, "closed", time, f"{place}:{name}",
                                                         f"{self._who(dev)}: {name} {what}",
                                                         {"field": name, "value": value}))
                continue
            h = self.cfg.health
            same_s = _seconds(time, prev[1])
            if h.stuck_after_s is not None and value != 0 and same_s >= h.stuck_after_s and key not in self._stuck:
                self._stuck.add(key)
                msg = f"{self._who(dev)}: {name} stuck at {value:g} for {same_s:.0f} s"
                alerts.append(self._health_alert(dev, "open", time, f"stuck:{name}", msg,
                                                 {"field": name, "value": value, "unchanged_s": round(same_s, 1)}))
            if h.flatline_after_s is not None and same_s >= h.flatline_after_s and key not in self._flat:
                why = self._flat_evidence(dev, name, time)
                if why is not None:
                    self._flat.add(key)
                    msg = f"{self._who(dev)}: {name} flat at {value:g} for {same_s:.0f} s while {why['because']}"
                    alerts.append(self._health_alert(dev, "open", time, f"flatline:{name}", msg,
                                                     {"field": name, "value": value,
                                                      "unchanged_s": round(same_s, 1), **why}))

    def _flat_evidence(self, dev: SensorDeviceConfig, name: str, time: datetime) -> dict[str, Any] | None:
        """Why an unchanged value is suspicious: rain fell on a neighbouring gauge, or a neighbour rose."""
        h = self.cfg.health
        window = h.flatline_after_s or 0.0
        for other in self._near.of(dev.id):
            for rule, _ in self._rain_rules:
                st = self._rain.get((rule.name, other))
                if st is not None:
                    rain = st.sums.total_over(time, window)
                    if rain >= h.flatline_rain_mm:
                        return {"neighbour": other, "neighbour_rain_mm": rain,
                                "because": f"{other} measured {rain:g} mm of rain"}
                    break
            series = self._series.get((other, name))
            if series is not None:
                rise = series.rise(time, window)
                if rise >= h.flatline_rise_cm:
                    return {"neighbour": other, "neighbour_rise": round(rise, 2),
                            "because": f"{other} rose {rise:g}"}
        return None

    # -- water level ladder --------------------------------------------------------------------

    def _level_rule(self, rule: LevelRuleConfig, dev: SensorDeviceConfig, reading: Reading,
                    value: float) -> list[Alert]:
        t = reading.time
        ladder = self._ladders[rule.name]
        st = self._level.get((rule.name, reading.device))
        if st is None:
            st = self._level[(rule.name, reading.device)] = _LevelState([None] * len(ladder))
        since = st.since
        reached = -1  # the highest level the value has stayed at for its minimum duration
        for i, lv in enumerate(ladder):
            if value >= lv.at:
                since[i] = start = since[i] or t
                if _seconds(t, start) >= lv.min_duration_s:
                    reached = i
            else:
                since[i] = None
        ep = st.open
        if ep is None and reached < 0:
            return []  # the usual reading: below the ladder, no episode
        unit = reading.units.get(rule.field, "cm")
        if ep is not None:
            ep.peak = max(ep.peak, value)
        current = ep.level if ep is not None else -1
        if reached > current:
            return [self._level_change(rule, dev, st, t, value, unit, reached)]
        if ep is None:
            return []
        held = max((i for i in range(current + 1) if value >= ladder[i].clear_at), default=-1)
        if held < 0:
            return [self._level_close(rule, dev, st, t, value, unit)]
        if held < current:
            return [self._level_change(rule, dev, st, t, value, unit, held)]
        return []

    def _level_change(self, rule: LevelRuleConfig, dev: SensorDeviceConfig, st: _LevelState, t: datetime,
                      value: float, unit: str, to: int) -> Alert:
        ladder = self._ladders[rule.name]
        lv = ladder[to]
        ep = st.open
        since = st.since[to]
        facts: dict[str, Any] = {"value": value, "unit": unit, "threshold": lv.at, "clear_at": lv.clear_at,
                                 "level": lv.name, "label": lv.label, "rank": to,
                                 "duration_s": round(_seconds(t, since), 1) if since else 0.0}
        if ep is None:
            ep = st.open = _Episode(to, t, value)
            facts["change"] = "opened"
            msg = f"{self._who(dev)}: water level {value:g} {unit} reached {lv.label} ({lv.at:g} {unit})"
        else:
            up = to > ep.level
            facts["change"] = "escalated" if up else "deescalated"
            facts["escalated_from" if up else "deescalated_from"] = ladder[ep.level].name
            facts["open_since"] = ep.opened_at.isoformat()
            ep.level = to
            msg = (f"{self._who(dev)}: water level {value:g} {unit} "
                   + (f"rose to {lv.label} ({lv.at:g} {unit})" if up else f"eased back to {lv.label}"))
        facts["peak"] = ep.peak
        if to >= rule.case_index:
            ep.case = True
        category = rule.category if ep.case else None
        render = None
        if category is not None and facts["change"] != "deescalated":
            render = self._chart_renderer(rule, dev, t, value, unit, lv)
        return self._alert(rule.name, dev, "open", t, lv.severity, msg, category, rule.name, facts, render)

    def _level_close(self, rule: LevelRuleConfig, dev: SensorDeviceConfig, st: _LevelState, t: datetime,
                     value: float | None, unit: str, reason: str = "receded") -> Alert:
        ladder = self._ladders[rule.name]
        ep = st.open
        assert ep is not None
        st.open = None
        lv = ladder[ep.level]
        facts = {"value": value, "unit": unit, "threshold": ladder[0].clear_at, "peak": ep.peak, "level": lv.name,
                 "change": "cleared", "reason": reason, "duration_s": round(_seconds(t, ep.opened_at), 1)}
        if reason == "offline":
            msg = f"{self._who(dev)}: offline; water-level episode closed after peak {ep.peak:g} {unit}"
        else:
            msg = (f"{self._who(dev)}: water level {value:g} {unit} is below {ladder[0].clear_at:g} {unit}; "
                   f"cleared after peak {ep.peak:g} {unit}")
        return self._alert(rule.name, dev, "closed", t, lv.severity, msg, rule.category if ep.case else None,
                           rule.name, facts)

    def _chart_renderer(self, rule: LevelRuleConfig, dev: SensorDeviceConfig, t: datetime, value: float,
                        unit: str, lv: Level):
        """The evidence chart, drawn later and only for a new case: captures a copy of what it draws."""
        series = self._series.get((dev.id, rule.field))
        tz = t.tzinfo
        points = [(minute_start(m, tz), v) for m, v in series.since(t, rule.chart_hours * 3600)] if series else []
        lines = [ChartLine(s.label, s.at, s.severity) for s in self._ladders[rule.name]]
        title = f"{dev.name or dev.id} 道路积水 水位（{unit}）"
        label = f"{t.strftime('%H:%M')} {value:g} {unit} ≥ {lv.label}"

        def render() -> tuple[Evidence, ...]:
            png = render_level_chart(title=title, unit=unit, points=points, lines=lines, crossing=(t, value),
                                     crossing_label=label)
            return (Evidence("level-chart.png", "image/png", png),)

        return render

    # -- rate of rise ------------------------------------------------------------------------

    def _rise_rule(self, rule: RiseRuleConfig, dev: SensorDeviceConfig, reading: Reading,
                   value: float) -> list[Alert]:
        t = reading.time
        st = self._rise.get((rule.name, reading.device))
        if st is None:
            st = self._rise[(rule.name, reading.device)] = _RiseState()
        history = st.history
        history.append((t, value))
        while _seconds(t, history[0][0]) > rule.window_s:
            history.popleft()
        low_t, low = min(history, key=_VALUE)  # the first of the lowest
        rise = value - low
        if (rise < rule.rise_cm) if st.open is None else (rise >= rule.rise_cm * rule.clear_ratio):
            return []  # the usual reading: no episode opens or closes
        unit = reading.units.get(rule.field, "cm")
        span = _seconds(t, low_t)
        facts: dict[str, Any] = {"value": value, "unit": unit, "rise": round(rise, 2), "window_s": rule.window_s,
                                 "threshold": rule.rise_cm,
                                 "rate_per_h": round(rise / span * 3600, 1) if span > 0 else None}
        if st.open is None and rise >= rule.rise_cm:
            st.open = _Episode(0, t, value)
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

    def _rain_windows(self, rule: RainRuleConfig) -> list[float]:
        return [th.window_s for th in rule.thresholds] + list(STANDARD_RAIN_WINDOWS)

    def _rain_state(self, rule: RainRuleConfig, dev_id: str) -> _RainState:
        st = self._rain.get((rule.name, dev_id))
        if st is None:
            st = self._rain[(rule.name, dev_id)] = _RainState(RollingSums(self._rain_windows(rule)))
        return st

    def _rain_rule(self, rule: RainRuleConfig, dev: SensorDeviceConfig, reading: Reading,
                   value: float) -> list[Alert]:
        st = self._rain_state(rule, dev.id)
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
        st.sums.add(reading.time, increment)
        return self._rain_evaluate(rule, dev, st, reading.time, reading.units.get(rule.value_field, "mm"))

    def _rain_evaluate(self, rule: RainRuleConfig, dev: SensorDeviceConfig, st: _RainState, t: datetime,
                       unit: str) -> list[Alert]:
        st.sums.advance_to(t)
        ladder = rule.thresholds
        totals = [st.sums.total(k) for k in range(len(ladder))]
        window_totals: dict[str, float] = {}
        for k, w in enumerate(self._rain_windows(rule)):
            window_totals.setdefault(window_label(w), round(st.sums.total(k), 2))
        ep = st.open
        current = ep.level if ep is not None else -1
        reached = max((i for i, th in enumerate(ladder) if totals[i] >= th.mm), default=-1)
        facts: dict[str, Any] = {"unit": unit, "window_totals": window_totals}
        if reached > current:
            return [self._rain_change(rule, dev, st, t, unit, reached, totals, facts)]
        if ep is None:
            return []
        held = max((i for i in range(current + 1) if totals[i] >= ladder[i].mm * rule.clear_ratio), default=-1)
        if held >= current:
            return []
        if held >= 0:
            return [self._rain_change(rule, dev, st, t, unit, held, totals, facts)]
        st.open = None
        th = ladder[ep.level]
        facts.update(duration_s=round(_seconds(t, ep.opened_at), 1), level=th.level_name, signal=th.signal,
                     change="cleared")
        totals_text = ", ".join(f"{k} {v:g} {unit}" for k, v in window_totals.items())
        msg = f"{self._who(dev)}: rain eased ({totals_text})"
        return [self._alert(rule.name, dev, "closed", t, th.severity, msg, rule.category, rule.name, facts)]

    def _rain_change(self, rule: RainRuleConfig, dev: SensorDeviceConfig, st: _RainState, t: datetime, unit: str,
                     to: int, totals: list[float], facts: dict[str, Any]) -> Alert:
        ladder = rule.thresholds
        th = ladder[to]
        label = window_label(th.window_s)
        ep = st.open
        if ep is None:
            st.open = _Episode(to, t, totals[to])
            facts["change"] = "opened"
        else:
            up = to > ep.level
            facts["change"] = "escalated" if up else "deescalated"
            facts["escalated_from" if up else "deescalated_from"] = ladder[ep.level].level_name
            facts["open_since"] = ep.opened_at.isoformat()
            ep.level = to
        facts.update(level=th.level_name, signal=th.signal, rank=to, threshold=f"{label} >= {th.mm:g} {unit}",
                     window=label, value=totals[to])
        name = f"{th.signal} ({th.level_name})" if th.signal else th.level_name
        verb = "eased to" if facts["change"] == "deescalated" else "reached"
        msg = f"{self._who(dev)}: {totals[to]:g} {unit} of rain within {label} — {verb} {name} (>= {th.mm:g} {unit})"
        return self._alert(rule.name, dev, "open", t, th.severity, msg, rule.category, rule.name, facts)

    # -- alert building ----------------------------------------------------------------------

    def _alert(self, rule: str, dev: SensorDeviceConfig, state: str, time: datetime, severity: str, message: str,
               category: str | None, place: str, facts: dict[str, Any],
               render: Callable[[], tuple[Evidence, ...]] | None = None) -> Alert:
        return Alert(rule=rule, subject_kind="sensor", subject_id=dev.id, state=state,  # type: ignore[arg-type]
                     time=time, source="sensor", severity=severity, message=message,  # type: ignore[arg-type]
                     category=category, place=place, lon=dev.lon, lat=dev.lat,
                     facts={**facts, "address": dev.address, "device_name": dev.name}, render_evidence=render)

    # -- state across restarts ---------------------------------------------------------------

    def take_dirty(self) -> set[str]:
        """The devices whose state changed since the last call, and forgets them: what a save writes."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def export_state(self, devices: Iterable[str] | None = None) -> dict[str, Any]:
        """What a restarted monitor needs to carry on, JSON-able, times as epoch seconds: the version,
        the epoch and one entry per device of `devices` (default: all) that has any state (open
        episodes, level debounce clocks, rise histories, rain windows, last times and values, open
        health conditions). An entry is one device's state at one moment; no entry refers to another
        device, so entries exported at different moments still make a valid state."""
        entries: dict[str, Any] = {}
        for device in self.devices if devices is None else devices:
            if device in self.devices and (entry := self._export_device(device)):
                entries[device] = entry
        return {"version": STATE_VERSION, "epoch": _epoch_s(self._epoch), "devices": entries}

    def _export_device(self, d: str) -> dict[str, Any]:
        h, dev = self.cfg.health, self.devices[d]
        entry: dict[str, Any] = {}
        if (t := self._last_time.get(d)) is not None:
            entry["last_time"] = t.timestamp()
        if (t := self._offline.get(d)) is not None:
            entry["offline"] = t.timestamp()
        if same := {f: [x[0], x[1].timestamp()] for f in h.stuck_fields if (x := self._same.get((d, f)))}:
            entry["same"] = same
        conditions = {name: found for name, opened, fields in self._conditions(dev)
                      if (found := [f for f in fields if (d, f) in opened])}
        if conditions:
            entry["conditions"] = conditions
        if spikes := {f: [s.accepted, s.pending] for f in h.spike_jump if (s := self._spikes.get((d, f)))}:
            entry["spikes"] = spikes
        if series := {f: s.export() for f in self._series_fields if (s := self._series.get((d, f)))}:
            entry["series"] = series
        level = {r.name: {"since": [_epoch_s(x) for x in st.since], "open": _export_episode(st.open)}
                 for r, ids in self._level_rules if d in ids and (st := self._level.get((r.name, d)))}
        rise = {r.name: {"history": [[t.timestamp(), v] for t, v in st.history], "open": _export_episode(st.open)}
                for r, ids in self._rise_rules if d in ids and (st := self._rise.get((r.name, d)))}
        rain = {r.name: {"sums": st.sums.export(), "last_counter": st.last_counter, "open": _export_episode(st.open)}
                for r, ids in self._rain_rules if d in ids and (st := self._rain.get((r.name, d)))}
        for name, rules in (("level", level), ("rise", rise), ("rain", rain)):
            if rules:
                entry[name] = rules
        return entry

    def _conditions(self, dev: SensorDeviceConfig) -> list[tuple[str, set[tuple[str, str]], Iterable[str]]]:
        """The open health conditions' sets, with the fields each can hold for this device."""
        h = self.cfg.health
        return [("stuck", self._stuck, h.stuck_fields), ("flat", self._flat, h.stuck_fields),
                ("bad_range", self._bad_range, dev.ranges), ("low_battery", self._low_battery, h.low_battery)]

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take over a state from `export_state` (of this or an earlier config), into a monitor that has
        seen no reading yet: all of it or, when an entry is malformed (ValueError), none of it. Devices
        or rules that are no longer configured are dropped and counted (`restore_dropped`); an episode
        of a device that has gone silent meanwhile is closed by the offline check on the next tick."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sensor rule state version {state.get('version')!r}; this gateway reads "
                             f"{STATE_VERSION}")
        rules = ({r.name: ids for r, ids in self._level_rules}, {r.name: ids for r, ids in self._rise_rules},
                 {r.name: (r, ids) for r, ids in self._rain_rules})
        parsed: list[tuple[Any, Any]] = []
        dropped = 0
        for device, entry in state.get("devices", {}).items():
            if device not in self.devices:
                dropped += 1
                continue
            try:
                dropped += self._parse_device(self.devices[device], entry, rules, parsed)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"device {device!r}: malformed rule state ({type(exc).__name__}: {exc})") from None
        self._epoch = _when(state.get("epoch"))
        for target, items in parsed:  # nothing is taken over before every entry has been read
            target.update(items)
        self.stats["restore_dropped"] += dropped

    def _parse_device(self, dev: SensorDeviceConfig, entry: dict[str, Any], rules: tuple[dict, dict, dict],
                      parsed: list[tuple[Any, Any]]) -> int:
        """One device's entry as (the monitor's dict or set, what to update it with), appended to
        `parsed`; returns how many of its rule entries were dropped (rule gone, or no longer watching
        this device)."""
        d = dev.id
        add = parsed.append
        if (t := entry.get("last_time")) is not None:
            add((self._last_time, {d: _when(float(t))}))
        if (t := entry.get("offline")) is not None:
            add((self._offline, {d: _when(float(t))}))
        add((self._same, {(d, f): (float(v), _when(float(t))) for f, (v, t) in entry.get("same", {}).items()}))
        conditions = entry.get("conditions", {})
        for name, opened, _ in self._conditions(dev):
            add((opened, [(d, str(f)) for f in conditions.get(name, [])]))
        add((self._spikes, {(d, f): _Spike(float(a), None if p is None else float(p))
                            for f, (a, p) in entry.get("spikes", {}).items()}))
        add((self._series, {(d, f): MinuteSeries.restore(self._series_span, points)
                            for f, points in entry.get("series", {}).items()}))
        levels, rises, rains = rules
        dropped = 0
        for rule, item in entry.get("level", {}).items():
            if d not in levels.get(rule, ()):
                dropped += 1
                continue
            n = len(self._ladders[rule])
            since = [_when(x) for x in item["since"]][:n]
            add((self._level, {(rule, d): _LevelState(since + [None] * (n - len(since)),
                                                      _restore_episode(item["open"], n))}))
        for rule, item in entry.get("rise", {}).items():
            if d not in rises.get(rule, ()):
                dropped += 1
                continue
            history = deque((_when(t), float(v)) for t, v in item["history"])
            add((self._rise, {(rule, d): _RiseState(history, _restore_episode(item["open"], 1))}))  # type: ignore[arg-type]
        for name, item in entry.get("rain", {}).items():
            rule, ids = rains.get(name, (None, ()))
            if rule is None or d not in ids:
                dropped += 1
                continue
            counter = item.get("last_counter")
            add((self._rain, {(name, d): _RainState(RollingSums.restore(self._rain_windows(rule), item["sums"]),
                                                    None if counter is None else float(counter),
                                                    _restore_episode(item["open"], len(rule.thresholds)))}))
        return dropped

    # -- the case desk's view at start-up (gateway/sensor_cases.py) -----------------------------

    def adopt_episode(self, device: str, rule: str, place: str, since: datetime, *, level: str | None = None,
                      value: float | None = None) -> Literal["adopted", "open", "unknown"]:
        """Take over the episode of a case the case desk holds open but the restored state does not know
        (its alert was committed after the last save): `rule` and `place` as on the case, `since` when the
        episode opened, `level` the level name of the case's latest alert (a level or rain ladder's; an
        unknown name: the lowest level that files a case), `value` its peak (a stuck value for stuck and
        flat-line conditions). From then on the episode is this monitor's own: its next change updates
        the case and what ends it (water below the clear point, rain windows drained, the device back
        online or gone silent) clears the case. Returns "adopted", "open" (the restored state had it open:
        it now counts as the case's episode at `level`) or "unknown" (no configured rule watches the
        device, or the device is gone: nothing here could ever clear that case)."""
        dev = self.devices.get(device)
        if dev is None:
            return "unknown"
        self._dirty.add(device)
        for r, ids in self._level_rules:
            if r.name == rule == place and device in ids:
                ladder = self._ladders[rule]
                at = next((i for i, lv in enumerate(ladder) if lv.name == level), None)
                lst = self._level.setdefault((rule, device), _LevelState([None] * len(ladder)))
                peak = ladder[r.case_index if at is None else at].at if value is None else value
                return _take_over(lst, at, r.case_index, since, peak)
        for r, ids in self._rise_rules:
            if r.name == rule == place and device in ids:
                return _take_over(self._rise.setdefault((rule, device), _RiseState()), 0, 0, since, value or 0.0)
        for r, ids in self._rain_rules:
            if r.name == rule == place and device in ids:
                at = next((i for i, th in enumerate(r.thresholds) if th.level_name == level), None)
                peak = r.thresholds[at or 0].mm if value is None else value
                return _take_over(self._rain_state(r, device), at, 0, since, peak)
        if rule == self.cfg.health.name:
            return self._adopt_condition(dev, place, since, value)
        return "unknown"

    def _adopt_condition(self, dev: SensorDeviceConfig, place: str, since: datetime,
                         value: float | None) -> Literal["adopted", "open", "unknown"]:
        """A health case: offline (closed by the next reading) or a per-field condition, when a check
        that can close it is still configured."""
        if place == "offline":
            known = dev.id in self._offline
            self._offline.setdefault(dev.id, since)
            return "open" if known else "adopted"
        h = self.cfg.health
        kind, _, name = place.partition(":")
        watching = name in h.stuck_fields and (h.stuck_after_s, h.flatline_after_s) != (None, None)
        opened = {"stuck": self._stuck if watching else None, "flatline": self._flat if watching else None,
                  "range": self._bad_range, "battery": self._low_battery if name in h.low_battery else None}.get(kind)
        if opened is None or not name:
            return "unknown"
        key = (dev.id, name)
        if kind in ("stuck", "flatline") and value is not None:
            self._same.setdefault(key, (value, since))  # the same value keeps it open, another closes it
        known = key in opened
        opened.add(key)
        return "open" if known else "adopted"

    def forget_episode(self, device: str, rule: str) -> bool:
        """Drop a restored open episode that the case desk saw end after the state was saved (its clear
        was committed, the save that would have recorded it was not), as its closing reading would
        have: no alert; the next readings judge afresh, and water that is back opens a new episode.
        False when no such episode is open."""
        for table in (self._level, self._rise, self._rain):
            st = table.get((rule, device))
            if st is not None and st.open is not None:
                st.open = None
                if isinstance(st, _LevelState):
                    st.since = [None] * len(st.since)  # the closing reading was below every level
                self._dirty.add(device)
                return True
        return False

    # -- read-only views (the console's devices page) ------------------------------------------

    def open_episodes(self) -> list[dict[str, Any]]:
        """Every episode open now: rule, device, kind (level, rise, rain), level name, severity, since
        (the episode's opening time), peak."""
        out: list[dict[str, Any]] = []
        for (rule, dev), st in self._level.items():
            if st.open is not None:
                lv = self._ladders[rule][st.open.level]
                out.append({"rule": rule, "device": dev, "kind": "level", "level": lv.name, "label": lv.label,
                            "severity": lv.severity, "since": st.open.opened_at, "peak": st.open.peak})
        rises = {r.name: r for r, _ in self._rise_rules}
        for (rule, dev), rise in self._rise.items():
            if rise.open is not None:
                out.append({"rule": rule, "device": dev, "kind": "rise", "level": "rising", "label": "",
                            "severity": rises[rule].severity, "since": rise.open.opened_at,
                            "peak": rise.open.peak})
        rains = {r.name: r for r, _ in self._rain_rules}
        for (rule, dev), rain in self._rain.items():
            if rain.open is not None:
                th = rains[rule].thresholds[rain.open.level]
                out.append({"rule": rule, "device": dev, "kind": "rain", "level": th.level_name,
                            "label": th.signal, "severity": th.severity, "since": rain.open.opened_at,
                            "peak": rain.open.peak})
        return out

    def recent_values(self, device: str, since: datetime) -> dict[str, list[tuple[float, float]]]:
        """A device's values per minute since `since` (minute start as epoch seconds): the highest of
        each minute for the level fields the rules keep a series of (the evidence chart's series), and
        each minute's rain for the fields of rain rules."""
        lo = math.floor(since.timestamp() / 60)  # windows.minute_of
        out = {name: [(m * 60.0, v) for m, v in series.points if m >= lo]
               for name in sorted(self._series_fields) if (series := self._series.get((device, name))) is not None}
        for rule, _ in self._rain_rules:
            st = self._rain.get((rule.name, device))
            if st is not None:
                out[rule.value_field] = [(m * 60.0, mm) for m, mm in st.sums.buckets if m >= lo]
        return out


def _epoch_s(t: datetime | None) -> float | None:  # epoch seconds: ten times cheaper than isoformat
    return t.timestamp() if t is not None else None


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def _export_episode(ep: _Episode | None) -> dict[str, Any] | None:
    return None if ep is None else {"level": ep.level, "opened_at": ep.opened_at.timestamp(), "peak": ep.peak,
                                    "case": ep.case}


def _restore_episode(data: dict[str, Any] | None, levels: int) -> _Episode | None:
    if data is None:
        return None
    return _Episode(min(int(data["level"]), levels - 1), _when(data["opened_at"]),  # type: ignore[arg-type]
                    float(data["peak"]), bool(data.get("case", False)))


def _take_over(st: _LevelState | _RiseState | _RainState, level: int | None, lowest: int, since: datetime,
               peak: float) -> Literal["adopted", "open"]:
    """An open case's episode on a rule's state: a new one at the case's level, or the restored one set
    to it (the case's latest alert is newer than any save); a level the ladder no longer names: the
    lowest that files a case, or the restored one's if higher."""
    ep = st.open
    if ep is None:
        st.open = _Episode(lowest if level is None else level, since, peak, case=True)
        return "adopted"
    ep.level = max(ep.level, lowest) if level is None else level
    ep.case, ep.peak = True, max(ep.peak, peak)
    return "open"
