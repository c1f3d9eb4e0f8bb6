"""Device profiles: one YAML per device model says how its MQTT JSON payloads become Readings/Positions.

```yaml
name: generic-water-level-json
kind: sensor                          # sensor -> Reading, vehicle -> Position
transport: mqtt
topic: "city/+/water/{device_id}/up"  # {device_id} is one whole topic level; + and a final # allowed
payload: json
fields:                               # value = raw * scale + offset, then checked against range
  level_cm: {path: "$.data.level", scale: 0.1, unit: cm, range: [0, 500]}
  battery_v: {path: "$.bat", unit: V, optional: true}
timestamp: {path: "$.ts", format: epoch_ms}   # epoch_ms | epoch_s | iso8601; absent = time received
```

Paths are a small JSONPath subset: ``$`` then ``.name``, ``[index]`` or ``["name"]`` steps, e.g.
``$.data.level``, ``$.sensors[0].value``, ``$["level.cm"]``.

Vehicle profiles must define ``lat`` and ``lon``; ``speed_kmh``, ``course``, ``altitude_m`` and ``valid``
fill the Position's attributes; any other field goes to ``Position.extras``.

A value that is missing (non-optional), not a number or out of range is left out of the observation
and reported in ``DecodeResult.problems``; when nothing usable remains (no value at all, no lat/lon,
bad JSON, bad timestamp) ``decode`` raises ``PayloadError`` naming the device, profile and field.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from core.model import Position, Reading
from core.schema import StrictModel

__all__ = ["DecodeResult", "DeviceProfile", "FieldSpec", "PayloadError", "ProfileError", "TimestampSpec",
           "compile_path", "load_profile", "load_profiles"]

VEHICLE_ATTRS = ("lat", "lon", "speed_kmh", "course", "altitude_m", "valid")
_DEFAULT_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "speed_kmh": (0.0, 400.0),
                   "course": (0.0, 360.0)}


class ProfileError(ValueError):
    """A profile file is invalid; the message names the file and the field path."""


class PayloadError(ValueError):
    """A payload cannot be turned into an observation."""

    def __init__(self, message: str, *, profile: str, device: str | None = None, field: str | None = None):
        where = f"profile {profile!r}" + (f", device {device!r}" if device else "")
        where += f", field {field!r}" if field else ""
        super().__init__(f"{where}: {message}")
        self.profile, self.device, self.field = profile, device, field


# -- tiny path resolver ---------------------------------------------------------------------------
_STEP = re.compile(r"""\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\s*(?:"([^"]*)"|'([^']*)')\s*\]""")
_MISSING = object()


@functools.lru_cache(maxsize=1024)
def compile_path(path: str) -> tuple[str | int, ...]:
    """'$.data.items[0]["a.b"]' -> ('data', 'items', 0, 'a.b'); ValueError on bad syntax."""
    if not path.startswith("$"):
        raise ValueError(f"path {path!r} must start with '$'")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            raise ValueError(f"path {path!r}: cannot parse at position {pos} ({path[pos:]!r})")
        name, index, dq, sq = m.groups()
        steps.append(int(index) if index is not None else (name if name is not None else (dq if dq is not None
                                                                                               else sq)))
        pos = m.end()
    return tuple(steps)


def resolve(doc: Any, steps: tuple[str | int, ...]) -> Any:
    """The value at `steps` in a JSON document, or _MISSING."""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(doc, list) or step >= len(doc):
                return _MISSING
        elif not isinstance(doc, dict) or step not in doc:
            return _MISSING
        doc = doc[step]
    return doc


# -- profile schema ------------------------------------------------------------------------------
class FieldSpec(StrictModel):
    path: str = Field(description="Where the raw value is in the JSON payload, e.g. $.data.level.")
    scale: float = Field(1.0, description="Multiplier from the raw value to the unit (value = raw*scale+offset).")
    offset: float = Field(0.0, description="Added after scaling.")
    unit: str = Field("", description="Unit of the scaled value (cm, mm, V, km/h, ...).")
    range: tuple[float, float] | None = Field(
        None, description="[min, max] of plausible scaled values; outside = dropped and reported."
    )
    optional: bool = Field(False, description="A missing value is normal (not reported as a problem).")

    @field_validator("path")
    @classmethod
    def _path_parses(cls, v: str) -> str:
        compile_path(v)
        return v

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"range min {v[0]} is above max {v[1]}")
        return v


class TimestampSpec(StrictModel):
    path: str = Field(description="Where the device's timestamp is in the JSON payload.")
    format: Literal["epoch_ms", "epoch_s", "iso8601"] = Field(
        "epoch_ms", description="epoch_ms / epoch_s = UNIX time; iso8601 = text like 2026-11-23T09:41:07+08:00."
    )
    timezone: str = Field("UTC", description="Zone for iso8601 text without an offset, e.g. Asia/Shanghai.")

    @field_validator("path")
    @classmethod
    def _path_parses(cls, v: str) -> str:
        compile_path(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _zone_known(cls, v: str) -> str:
        _zone(v)
        return v


def _zone(name: str) -> timezone | ZoneInfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """A decoded observation and the problems met on the way (values left out, with the reason)."""

    observation: Reading | Position
    device: str
    problems: list[str]


class DeviceProfile(StrictModel):
    name: str = Field(description="Unique profile name, referenced from the deployment config.")
    kind: Literal["sensor", "vehicle"] = Field(description="sensor -> Reading, vehicle -> Position.")
    transport: Literal["mqtt"] = Field("mqtt", description="How the device sends data.")
    topic: str = Field(description="MQTT topic with {device_id} as one whole level; + and a final # allowed.")
    payload: Literal["json"] = Field("json", description="Payload encoding.")
    fields: dict[str, FieldSpec] = Field(description="Output name -> where and how to read the value.")
    timestamp: TimestampSpec | None = Field(None, description="Device time; absent = the time received.")
    description: str = Field("", description="Free text: device model, vendor, notes.")

    @field_validator("topic")
    @classmethod
    def _topic_shape(cls, v: str) -> str:
        levels = v.split("/")
        if levels.count("{device_id}") != 1:
            raise ValueError(f"topic {v!r} must contain {{device_id}} exactly once, as a whole level")
        for i, level in enumerate(levels):
            if level == "#" and i != len(levels) - 1:
                raise ValueError(f"topic {v!r}: '#' may only be the last level")
            if level not in ("+", "#", "{device_id}") and any(c in level for c in "+#{}"):
                raise ValueError(f"topic {v!r}: level {level!r} mixes wildcards or braces with text")
        return v

    @field_validator("fields")
    @classmethod
    def _some_fields(cls, v: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        if not v:
            raise ValueError("a profile needs at least one field")
        return v

    @model_validator(mode="after")
    def _vehicle_has_lat_lon(self) -> DeviceProfile:
        if self.kind == "vehicle":
            missing = [k for k in ("lat", "lon") if k not in self.fields]
            if missing:
                raise ValueError(f"a vehicle profile must define fields {missing}")
        return self

    # -- topics ----------------------------------------------------------------------------------
    def topic_filter(self) -> str:
        """The MQTT subscription for all devices of this profile."""
        return self.topic.replace("{device_id}", "+")

    def device_id_from_topic(self, topic: str) -> str | None:
        """The device id in a concrete topic, or None when the topic is not this profile's."""
        pattern = self.topic.split("/")
        levels = topic.split("/")
        device = None
        for i, want in enumerate(pattern):
            if want == "#":
                return device if len(levels) >= i else None
            if i >= len(levels):
                return None
            if want == "{device_id}":
                device = levels[i]
            elif want != "+" and want != levels[i]:
                return None
        return device if len(levels) == len(pattern) and device else None

    # -- decoding --------------------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes, *, received: datetime | None = None) -> DecodeResult:
        """Decode one message. Raises PayloadError when no usable observation can be made."""
        device = self.device_id_from_topic(topic)
        if device is None:
            raise PayloadError(f"topic {topic!r} does not match {self.topic!r}", profile=self.name)
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PayloadError(f"payload is not JSON ({exc}): {payload[:60]!r}", profile=self.name,
                               device=device) from None
        values, problems = self._values(doc, device)
        time = self._time(doc, device, received)
        if self.kind == "sensor":
            if not values:
                raise PayloadError("no usable value: " + "; ".join(problems), profile=self.name, device=device)
            units = {k: self.fields[k].unit for k in values if self.fields[k].unit}
            return DecodeResult(Reading(device=device, time=time, values=values, profile=self.name, units=units),
                                device, problems)
        for key in ("lat", "lon"):
            if key not in values:
                raise PayloadError("no usable position: " + "; ".join(problems), profile=self.name,
                                   device=device, field=key)
        attrs = {k: values.pop(k) for k in VEHICLE_ATTRS if k in values}
        if "valid" in attrs:
            attrs["valid"] = bool(attrs["valid"])
        return DecodeResult(Position(time=time, device=device, extras=values, **attrs), device, problems)

    def _values(self, doc: Any, device: str) -> tuple[dict[str, float], list[str]]:
        values: dict[str, float] = {}
        problems: list[str] = []
        for name, spec in self.fields.items():
            raw = resolve(doc, compile_path(spec.path))
            if raw is _MISSING or raw is None:
                if not spec.optional:
                    problems.append(f"field {name!r}: missing at {spec.path}")
                continue
            number = _number(raw)
            if number is None:
                problems.append(f"field {name!r}: {raw!r} at {spec.path} is not a number")
                continue
            value = round(number * spec.scale + spec.offset, 9)  # 3 * 0.2 -> 0.6, not 0.6000000000000001
            lo_hi = spec.range or (_DEFAULT_RANGES.get(name) if self.kind == "vehicle" else None)
            if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
                problems.append(f"field {name!r}: {value:g}{(' ' + spec.unit) if spec.unit else ''} "
                                f"out of range [{lo_hi[0]:g}, {lo_hi[1]:g}]")
                continue
            values[name] = value
        return values, problems

    def _time(self, doc: Any, device: str, received: datetime | None) -> datetime:
        spec = self.timestamp
        if spec is None:
            return received or datetime.now(UTC)
        raw = resolve(doc, compile_path(spec.path))
        try:
            if raw is _MISSING or raw is None:
                raise ValueError(f"missing at {spec.path}")
            if spec.format == "iso8601":
                if not isinstance(raw, str):
                    raise ValueError(f"{raw!r} is not ISO 8601 text")
                t = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
                return t if t.tzinfo else t.replace(tzinfo=_zone(spec.timezone))
            number = _number(raw)
            if number is None:
                raise ValueError(f"{raw!r} is not a number")
            seconds = number / 1000.0 if spec.format == "epoch_ms" else number
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        except (ValueError, OverflowError) as exc:
            raise PayloadError(f"bad timestamp ({spec.format}): {exc}", profile=self.name, device=device,
                               field="timestamp") from None


def _number(raw: Any) -> float | None:
    """JSON numbers, booleans and numeric strings ("12.5") are accepted; NaN/inf are not."""
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


# -- loading -------------------------------------------------------------------------------------
def load_profile(path: str | Path) -> DeviceProfile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{path}: {loc}: {err['msg']}")
        raise ProfileError("\n".join(lines)) from None


def load_profiles(directory: str | Path) -> dict[str, DeviceProfile]:
    """All *.yaml / *.yml profiles of a directory by name; a duplicate name is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileError(f"device profile directory {directory} does not exist")
    profiles: dict[str, DeviceProfile] = {}
    origin: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        profile = load_profile(path)
        if profile.name in profiles:
            raise ProfileError(f"{path}: name: profile {profile.name!r} is already defined in {origin[profile.name]}")
        profiles[profile.name] = profile
        origin[profile.name] = path
    return profiles
