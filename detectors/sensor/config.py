"""Config for water and rain sensing (城市防汛): devices, level / rise / rain rules, sensor health.

Ladders: a level rule has any number of named levels (e.g. 15 / 27 / 40 cm), a rain rule a ladder of
named window totals (default: the national rainstorm warning signals, 暴雨预警信号 blue / yellow /
orange / red, GB/T 27962 and the 2007 CMA signal rules: blue 12 h >= 50 mm, yellow 6 h >= 50 mm,
orange 3 h >= 50 mm, red 3 h >= 100 mm). One episode per (rule, device): it opens at the first level
reached, and every change of level is a new "open" alert with the same (rule, subject, place) key,
its level's severity and `facts["level"]` / `facts["change"]` (opened, escalated, deescalated); the
episode closes once, below the lowest level's clear point. List order is the ladder's order: a level
later in the list ranks higher, and severities must not decrease along it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from core.model import SEVERITIES, Severity
from core.schema import FieldError, StrictModel, repeated

SensorKind = Literal["water_level", "rain_gauge"]


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


class SensorDeviceConfig(StrictModel):
    id: str = Field(description="Device id as the readings carry it (MQTT topic id, Modbus name, CSV 'device').")
    profile: str = Field(
        "generic-water-level-json", description="Device profile name (device_profiles/<name>.yaml) that decodes it."
    )
    name: str = Field("", description="Human-readable name shown in alerts (e.g. 'Renmin Rd underpass').")
    kind: SensorKind = Field("water_level", description="water_level or rain_gauge: decides which rules apply by default.")
    lon: float = Field(ge=-180, le=180, description="Longitude (WGS-84 degrees) put on alerts and cases.")
    lat: float = Field(ge=-90, le=90, description="Latitude (WGS-84 degrees) put on alerts and cases.")
    address: str = Field("", description="Street address shown in alerts and cases.")
    report_interval_s: float | None = Field(
        None, gt=0, description="Expected seconds between reports; offline after health.offline_after_intervals of "
        "them. Empty = the profile's interval (health.report_intervals), else health.offline_after_s.",
    )
    group: str = Field("", description="Neighbour group (e.g. a catchment): devices of one group are neighbours for the "
                       "flat-line check, besides those within health.neighbour_radius_m.")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Plausible [min, max] per field, e.g. {level_cm: [0, 500]}; values outside are sensor faults, "
        "kept out of the rules (and alerted if health.range_alert).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> SensorDeviceConfig:
        for name, (lo, hi) in self.ranges.items():
            if lo > hi:
                raise FieldError(("ranges", name), f"device {self.id!r}: range of {name!r} is [{lo}, {hi}]; min must be <= max")
        return self


class LevelStep(StrictModel):
    """One rung of a water-level ladder."""

    name: str = Field(min_length=1, description="Level name put on alerts as facts.level (e.g. 'yellow', 'deep').")
    at: float = Field(description="Level (cm) at or above which this level is reached.")
    severity: Severity = Field("warning", description="Severity of the alerts at this level.")
    clear_at: float | None = Field(
        None, description="The episode leaves this level below this value (hysteresis); empty = at - the rule's "
        "clear_below_margin.",
    )
    min_duration_s: float | None = Field(
        None, ge=0, description="The level must stay at or above `at` this long before it is reached; empty = the "
        "rule's min_duration_s.",
    )
    label: str = Field("", description="Text shown in messages and on the evidence chart (e.g. '积水 27 cm').")


@dataclass(frozen=True)
class Level:
    """A level with the rule's defaults filled in (what the monitor runs on)."""

    name: str
    at: float
    severity: str
    clear_at: float
    min_duration_s: float
    label: str


class LevelRuleConfig(StrictModel):
    name: str = Field("water-level", description="Rule name: the alert's rule and place.")
    devices: list[str] = Field(default_factory=list, description="Device ids it watches; empty = all water_level devices.")
    field: str = Field("level_cm", description="Reading field holding the water level.")
    levels: list[LevelStep] | None = Field(
        None, min_length=1, description="The ladder, lowest first (e.g. 15 / 27 / 40 cm). Empty = two levels from "
        "warn_at (warning) and critical_at (critical).",
    )
    warn_at: float = Field(20.0, description="Without `levels`: level (cm) that opens a warning alert.")
    critical_at: float = Field(
        35.0, description="Without `levels`: level (cm) that opens, or escalates to, a critical alert; >= warn_at."
    )
    clear_below_margin: float = Field(
        5.0, ge=0, description="Hysteresis (cm): a level X is left only below X - margin (unless it sets clear_at)."
    )
    min_duration_s: float = Field(
        60.0, ge=0, description="A level must hold this long before it is reached (debounces waves), unless it sets "
        "its own.",
    )
    category: str | None = Field("road_flooding", description="Catalog key for the case; empty = alert only.")
    case_from: str | None = Field(
        None, description="Name of the lowest level that files a case (道路积水); empty = the first level. Alerts "
        "below it carry no category.",
    )
    chart_hours: float = Field(3.0, gt=0, le=24, description="Hours of readings drawn on the case's evidence chart.")

    @model_validator(mode="after")
    def _order(self) -> LevelRuleConfig:
        if self.levels is not None:
            legacy = {"warn_at", "critical_at"} & self.model_fields_set
            if legacy:
                raise FieldError("levels", f"level rule {self.name!r}: give either levels or {'/'.join(sorted(legacy))}, "
                                 "not both")
        elif self.critical_at < self.warn_at:
            raise FieldError("critical_at", f"level rule {self.name!r}: critical_at ({self.critical_at}) is below "
                             f"warn_at ({self.warn_at})")
        steps = self.ladder
        where = f"level rule {self.name!r}"
        if twice := repeated([s.name for s in steps]):
            raise FieldError("levels", f"{where}: each level name must be unique; repeated: {', '.join(twice)}")
        for low, high in zip(steps, steps[1:], strict=False):
            if high.at <= low.at:
                raise FieldError("levels", f"{where}: level {high.name!r} (at {high.at:g}) must be above {low.name!r} "
                                 f"(at {low.at:g}): list levels lowest first")
            if severity_rank(high.severity) < severity_rank(low.severity):
                raise FieldError("levels", f"{where}: level {high.name!r} has a lower severity than {low.name!r}")
        for step in steps:
            if step.clear_at > step.at:
                raise FieldError("levels", f"{where}: level {step.name!r} clears at {step.clear_at:g}, above its level "
                                 f"{step.at:g}")
        if self.case_from is not None and self.case_from not in {s.name for s in steps}:
            raise FieldError("levels", f"{where}: case_from {self.case_from!r} is not one of its levels "
                             f"({', '.join(s.name for s in steps)})")
        return self

    @property
    def ladder(self) -> list[Level]:
        """The levels lowest first, defaults filled in (warn_at / critical_at become 'warning' / 'critical')."""
        steps = self.levels or [LevelStep(name="warning", at=self.warn_at, severity="warning"),
                                LevelStep(name="critical", at=self.critical_at, severity="critical")]
        return [Level(s.name, s.at, s.severity, s.at - self.clear_below_margin if s.clear_at is None else s.clear_at,
                      self.min_duration_s if s.min_duration_s is None else s.min_duration_s, s.label or s.name)
                for s in steps]

    @property
    def case_index(self) -> int:
        """Index in the ladder of the first level that files a case."""
        if self.case_from is None:
            return 0
        return [s.name for s in self.ladder].index(self.case_from)

    @property
    def value_field(self) -> str:
        """The reading field this rule watches (the same name on every sensor rule)."""
        return self.field


class RiseRuleConfig(StrictModel):
    name: str = Field("water-rising", description="Rule name: the alert's rule and place.")
    devices: list[str] = Field(default_factory=list, description="Device ids it watches; empty = all water_level devices.")
    field: str = Field("level_cm", description="Reading field holding the water level.")
    rise_cm: float = Field(10.0, gt=0, description="Rise (from the lowest value in the window to now) that opens.")
    window_s: float = Field(600.0, gt=0, description="Sliding window (s) the rise is measured over.")
    clear_ratio: float = Field(
        0.5, ge=0, lt=1, description="Closes when the rise over the window falls below rise_cm x this (hysteresis)."
    )
    severity: Severity = Field("warning", description="Severity of the early-warning alert.")
    category: str | None = Field(None, description="Catalog key for a case; empty (default) = early-warning alert only.")

    @property
    def value_field(self) -> str:
        """The reading field this rule watches (the same name on every sensor rule)."""
        return self.field


class RainThreshold(StrictModel):
    window_s: float = Field(gt=0, description="Sliding window (s) the rain is summed over (whole minutes: rounded up).")
    mm: float = Field(gt=0, description="Rain (mm) within the window that reaches this level.")
    severity: Severity = Field("warning", description="Severity of an alert at this level.")
    name: str = Field("", description="Level name put on alerts as facts.level (e.g. 'orange'); empty = the severity.")
    signal: str = Field("", description="Signal text put on alerts as facts.signal (e.g. '暴雨橙色预警').")

    @property
    def level_name(self) -> str:
        return self.name or self.severity


def _default_rain_thresholds() -> list[RainThreshold]:
    """The national rainstorm warning signals (暴雨预警信号), lowest first."""
    return [RainThreshold(window_s=43200, mm=50, severity="info", name="blue", signal="暴雨蓝色预警"),
            RainThreshold(window_s=21600, mm=50, severity="warning", name="yellow", signal="暴雨黄色预警"),
            RainThreshold(window_s=10800, mm=50, severity="critical", name="orange", signal="暴雨橙色预警"),
            RainThreshold(window_s=10800, mm=100, severity="critical", name="red", signal="暴雨红色预警")]


class RainRuleConfig(StrictModel):
    name: str = Field("heavy-rain", description="Rule name: the alert's rule and place.")
    devices: list[str] = Field(default_factory=list, description="Device ids it watches; empty = all rain_gauge devices.")
    mode: Literal["increment", "cumulative"] = Field(
        "increment", description="increment: each report carries the rain since the last one; cumulative: a running "
        "counter (a drop is taken as a counter reset: the new value is the rain since the reset).",
    )
    field: str | None = Field(None, description="Reading field; empty = rain_mm (increment) or rain_total_mm (cumulative).")
    thresholds: list[RainThreshold] = Field(
        default_factory=_default_rain_thresholds, min_length=1,
        description="The ladder, lowest first: window totals that open / escalate. Default: the national rainstorm "
        "signals blue 12 h >= 50 mm (info), yellow 6 h >= 50 mm (warning), orange 3 h >= 50 mm (critical), red "
        "3 h >= 100 mm (critical).",
    )
    clear_ratio: float = Field(
        0.8, ge=0, le=1, description="A threshold stays held until its window total falls below mm x this (hysteresis)."
    )
    category: str | None = Field(None, description="Catalog key for a case; empty (default) = early-warning alert only.")

    @model_validator(mode="after")
    def _ladder(self) -> RainRuleConfig:
        for low, high in zip(self.thresholds, self.thresholds[1:], strict=False):
            if severity_rank(high.severity) < severity_rank(low.severity):
                raise ValueError(f"rain rule {self.name!r}: level {high.level_name!r} has a lower severity than "
                                 f"{low.level_name!r}: list levels lowest first")
        return self

    @property
    def value_field(self) -> str:
        return self.field or ("rain_mm" if self.mode == "increment" else "rain_total_mm")


class SensorHealthConfig(StrictModel):
    name: str = Field("sensor-health", description="Rule name of health alerts; place is offline / stuck:<field> / "
                      "flatline:<field> / range:<field> / battery:<field>.")
    offline_after_s: float | None = Field(
        900.0, gt=0, description="Silence (s) after which a device without a known report interval is offline; "
        "empty = off.",
    )
    offline_after_intervals: float = Field(
        3.0, gt=0, description="A device with a report interval (its own report_interval_s or its profile's in "
        "report_intervals) is offline after this many intervals without a report.",
    )
    report_intervals: dict[str, float] = Field(
        default_factory=dict, description="Expected seconds between reports per device profile name.",
    )
    stuck_after_s: float | None = Field(
        3600.0, gt=0, description="A nonzero value repeated unchanged this long (s) means a stuck sensor; empty = off."
    )
    stuck_fields: list[str] = Field(
        default_factory=lambda: ["level_cm"],
        description="Fields checked for stuck and flat-lined values (not rain counters: they rightly stay flat when dry).",
    )
    flatline_after_s: float | None = Field(
        1800.0, gt=0, description="A value unchanged this long (s), zero included, while a neighbouring rain gauge "
        "measured flatline_rain_mm or a neighbouring level rose flatline_rise_cm in that time: a blocked or dead "
        "probe. Empty = off.",
    )
    flatline_rain_mm: float = Field(10.0, gt=0, description="Neighbours' rain (mm) within flatline_after_s that "
                                    "should have moved the level.")
    flatline_rise_cm: float = Field(10.0, gt=0, description="A neighbour's rise (cm) within flatline_after_s that "
                                    "should have moved the level.")
    neighbour_radius_m: float = Field(1500.0, ge=0, description="Devices within this distance are neighbours "
                                      "(besides those of the same group).")
    spike_jump: dict[str, float] = Field(
        default_factory=lambda: {"level_cm": 30.0},
        description="Single-sample spike filter (confirm-next-sample): a value further than this from the last "
        "accepted one is held until the next reading confirms it (within the same distance of it); a 3 -> 180 -> 3 "
        "reading is dropped. Adds one report interval of latency, to jumps only.",
    )
    future_tolerance_s: float = Field(
        900.0, gt=0, description="A reading dated more than this (s) after the device's clock (the last tick, or its "
        "last good reading) is counted and dropped, never taken as its last time.",
    )
    low_battery: dict[str, float] = Field(
        default_factory=lambda: {"battery_v": 3.3},
        description="Field -> value below which the battery is low; clears 5 % above it.",
    )
    range_alert: bool = Field(True, description="Alert when a value is outside the device's configured range.")
    severity: Severity = Field("warning", description="Severity of health alerts.")
    category: str | None = Field(None, description="Catalog key for a case (e.g. a facility fault); empty = alert only.")


class SensorsConfig(StrictModel):
    devices: list[SensorDeviceConfig] = Field(default_factory=list, description="Water-level and rain-gauge devices.")
    level_rules: list[LevelRuleConfig] = Field(default_factory=list, description="Water-level threshold rules.")
    rise_rules: list[RiseRuleConfig] = Field(default_factory=list, description="Rate-of-rise early-warning rules.")
    rain_rules: list[RainRuleConfig] = Field(default_factory=list, description="Accumulated-rainfall rules.")
    health: SensorHealthConfig = Field(default_factory=SensorHealthConfig,
                                       description="Offline / stuck / flat-line / spike / range / battery checks.")
    state_save_s: float = Field(30.0, gt=0, description="Seconds between saves of the rules' state (open episodes, "
                                "rain windows, rain-gauge counters) to data_dir/sensor_rules.sqlite3, of the devices "
                                "that changed; also within a second of a sensor alert that touched a case, and at "
                                "shutdown. A kill -9 loses what the rules saw since the last save.")

    @model_validator(mode="after")
    def _references(self) -> SensorsConfig:
        ids = [d.id for d in self.devices]
        if twice := repeated(ids):
            raise FieldError("devices", f"each device id must be unique; repeated: {', '.join(twice)}")
        names = [r.name for r in (*self.level_rules, *self.rise_rules, *self.rain_rules)] + [self.health.name]
        if twice := repeated(names):
            raise ValueError(f"each sensor rule name (and health.name) must be unique; repeated: {', '.join(twice)}")
        known = set(ids)
        for section in ("level_rules", "rise_rules", "rain_rules"):
            for i, rule in enumerate(getattr(self, section)):
                missing = [d for d in rule.devices if d not in known]
                if missing:
                    raise FieldError((section, i, "devices"),
                                     f"rule {rule.name!r} names devices {missing} that are not in devices")
        return self

    def devices_for(self, rule: LevelRuleConfig | RiseRuleConfig | RainRuleConfig) -> list[str]:
        """The device ids a rule watches: its own list, or every device of the matching kind."""
        if rule.devices:
            return list(rule.devices)
        kind = "rain_gauge" if isinstance(rule, RainRuleConfig) else "water_level"
        return [d.id for d in self.devices if d.kind == kind]
