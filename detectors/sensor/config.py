"""Config for water and rain sensing (城市防汛): devices, level / rise / rain rules, sensor health.

Severity ladder: every rule opens at its lowest threshold and may escalate. An escalation is a
second "open" alert with the same (rule, subject, place) key and a higher severity, with
`facts["escalated_from"]`; the case desk files it as a recurrence of the open case, and alert
subscribers (MQTT, webhook) see the critical alert at once. A condition closes once, at the
lowest threshold's hysteresis point, whatever severity it reached.

Rain defaults follow the hourly and 3-hour rainstorm figures used in China: 1 h >= 16 mm is
rainstorm-intensity rain (暴雨强度, GB/T 28592 grades), 3 h >= 50 mm is the 3-hour figure of the
orange rainstorm signal (暴雨橙色预警: 3 h >= 50 mm). Cities tune these to their drainage design.
"""

from __future__ import annotations

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


class LevelRuleConfig(StrictModel):
    name: str = Field("water-level", description="Rule name: the alert's rule and place.")
    devices: list[str] = Field(default_factory=list, description="Device ids it watches; empty = all water_level devices.")
    field: str = Field("level_cm", description="Reading field holding the water level.")
    warn_at: float = Field(20.0, description="Level (cm) that opens a warning alert.")
    critical_at: float = Field(35.0, description="Level (cm) that opens, or escalates to, a critical alert; >= warn_at.")
    clear_below_margin: float = Field(
        5.0, ge=0, description="Hysteresis (cm): an alert at threshold X steps down or clears only below X - margin."
    )
    min_duration_s: float = Field(
        60.0, ge=0, description="The level must stay at or above a threshold this long before it opens (debounces waves)."
    )
    category: str | None = Field("road_flooding", description="Catalog key for the case; empty = alert only.")

    @model_validator(mode="after")
    def _order(self) -> LevelRuleConfig:
        if self.critical_at < self.warn_at:
            raise FieldError("critical_at", f"level rule {self.name!r}: critical_at ({self.critical_at}) is below warn_at ({self.warn_at})")
        return self

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
    window_s: float = Field(gt=0, description="Sliding window (s) the rain is summed over.")
    mm: float = Field(gt=0, description="Rain (mm) within the window that reaches this threshold.")
    severity: Severity = Field("warning", description="Severity of an alert at this threshold.")


def _default_rain_thresholds() -> list[RainThreshold]:
    return [RainThreshold(window_s=3600, mm=16, severity="warning"),
            RainThreshold(window_s=10800, mm=50, severity="critical")]


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
        description="Window totals that open / escalate; default 1 h >= 16 mm warning, 3 h >= 50 mm critical.",
    )
    clear_ratio: float = Field(
        0.8, ge=0, le=1, description="A threshold stays held until its window total falls below mm x this (hysteresis)."
    )
    category: str | None = Field(None, description="Catalog key for a case; empty (default) = early-warning alert only.")

    @property
    def value_field(self) -> str:
        return self.field or ("rain_mm" if self.mode == "increment" else "rain_total_mm")


class SensorHealthConfig(StrictModel):
    name: str = Field("sensor-health", description="Rule name of health alerts; place is offline / stuck:<field> / range:<field>.")
    offline_after_s: float | None = Field(900.0, gt=0, description="Silence (s) after which a device is offline; empty = off.")
    stuck_after_s: float | None = Field(
        3600.0, gt=0, description="A nonzero value repeated unchanged this long (s) means a stuck sensor; empty = off."
    )
    stuck_fields: list[str] = Field(
        default_factory=lambda: ["level_cm"],
        description="Fields checked for stuck values (not rain counters: they rightly stay flat when dry).",
    )
    range_alert: bool = Field(True, description="Alert when a value is outside the device's configured range.")
    severity: Severity = Field("warning", description="Severity of health alerts.")
    category: str | None = Field(None, description="Catalog key for a case (e.g. a facility fault); empty = alert only.")


class SensorsConfig(StrictModel):
    devices: list[SensorDeviceConfig] = Field(default_factory=list, description="Water-level and rain-gauge devices.")
    level_rules: list[LevelRuleConfig] = Field(default_factory=list, description="Water-level threshold rules.")
    rise_rules: list[RiseRuleConfig] = Field(default_factory=list, description="Rate-of-rise early-warning rules.")
    rain_rules: list[RainRuleConfig] = Field(default_factory=list, description="Accumulated-rainfall rules.")
    health: SensorHealthConfig = Field(default_factory=SensorHealthConfig, description="Offline / stuck / range checks.")

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
