"""Device profiles: one YAML per device model says how its uplinks become Readings/Positions.

```yaml
name: generic-water-level-json
kind: sensor                          # sensor -> Reading, vehicle -> Position
transport: mqtt                       # mqtt | http (push from an IoT platform) | modbus (polled)
topic: "city/+/water/{device_id}/up"  # mqtt only; {device_id} is one whole topic level; + and a final # allowed
payload: json                         # json | binary | registers (modbus)
fields:                               # value = raw * scale + offset, then checked against range
  level_cm: {path: "$.data.level", scale: 0.1, unit: cm, range: [0, 500]}
  battery_v: {path: "$.bat", unit: V, optional: true}
timestamp: {path: "$.ts", format: epoch_ms}   # epoch_ms | epoch_s | iso8601; absent = time received
```

Where a field's raw value comes from depends on the payload:

- ``json``: ``path``, a small JSONPath subset: ``$`` then ``.name``, ``[index]`` or ``["name"]`` steps,
  e.g. ``$.data.level``, ``$.sensors[0].value``, ``$["level.cm"]``.
- ``binary``: ``byte`` (position of the first byte), ``type`` (u8 i8 u16 i16 u32 i32 u64 i64 f32 f64),
  ``endian`` (big/little) and optionally ``bits: [first, count]`` (a bit field of the integer, bit 0 =
  least significant). ``offset`` stays what it is for every field: a number added after scaling.
- ``registers`` (Modbus): ``address`` (of the first register), ``table`` (holding/input), ``type`` (16-bit registers
  per value: 1 for 16-bit types, 2 for 32-bit, 4 for 64-bit), ``word_order`` (big = the first register
  holds the most significant word, "ABCD"; little = "CDAB"); each register is big-endian, as Modbus says.

A field with ``counter: true`` is a device's cumulative counter (e.g. bucket tips). Decoding is pure
and reports the raw count in ``DecodeResult.counters``; turning it into an increment needs the
previous count of that device, which a ``CounterTracker`` held by the source keeps (see there).

An ``envelope`` wraps the device payload in JSON, as LoRaWAN network servers and NB-IoT platforms do:
``format: chirpstack_v4`` fills in ChirpStack v4's uplink event (``application/<app>/device/<devEUI>/
event/up``: base64 ``data``, the codec's ``object``, ``time``, ``deviceInfo.devEui``, rssi/snr of the
first gateway); ``format: json`` names the paths itself (``device_id``, ``data`` + ``encoding``,
``object``, ``records`` for platforms that batch uplinks, ``time``).

Vehicle profiles must define ``lat`` and ``lon``; ``speed_kmh``, ``course``, ``altitude_m`` and ``valid``
fill the Position's attributes; any other field goes to ``Position.extras``.

A value that is missing (non-optional), not a number or out of range is left out of the observation
and reported in ``DecodeResult.problems``; when nothing usable remains (no value at all, no lat/lon,
bad JSON, a truncated binary payload, a bad or future timestamp) decoding raises ``PayloadError``
naming the device, profile and field (and byte offset). Decoding never raises anything else.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import json
import math
import re
import struct
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from core.model import Position, Reading
from core.schema import StrictModel

__all__ = ["CounterTracker", "DecodeResult", "DeviceProfile", "EnvelopeSpec", "FieldSpec", "PayloadError",
           "ProfileError", "TimestampSpec", "compile_path", "load_profile", "load_profiles"]

VEHICLE_ATTRS = ("lat", "lon", "speed_kmh", "course", "altitude_m", "valid")
_DEFAULT_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "speed_kmh": (0.0, 400.0),
                   "course": (0.0, 360.0)}
BinaryType = Literal["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"]
_STRUCT = {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q",
           "f32": "f", "f64": "d"}
MAX_REGISTERS_PER_READ = 125  # Modbus limit of one "read holding/input registers" request


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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    for step in steps:  # names (str) and list indexes (int >= 0), as compile_path makes them
        if isinstance(doc, dict):
            doc = doc.get(step, _MISSING) if step.__class__ is str else _MISSING
        elif isinstance(doc, list) and step.__class__ is int and step < len(doc):
            doc = doc[step]
        else:
            return _MISSING
    return doc


def _path_ok(v: str | None) -> str | None:
    if v is not None:
        compile_path(v)
    return v


# -- profile schema ------------------------------------------------------------------------------
class FieldSpec(StrictModel):
    path: str | None = Field(None, description="JSON payloads: where the raw value is, e.g. $.data.level.")
    byte: int | None = Field(None, ge=0, description="Binary payloads: position of the value's first byte.")
    address: int | None = Field(None, ge=0, le=65535, description="Modbus: address of the value's first register.")
    table: Literal["holding", "input"] = Field("holding", description="Modbus: holding or input registers.")
    type: BinaryType = Field("u16", description="Binary / Modbus: the raw value's type (u16 = unsigned 16-bit).")
    endian: Literal["big", "little"] = Field("big", description="Binary: byte order of the value.")
    word_order: Literal["big", "little"] = Field(
        "big", description="Modbus: big = first register is the most significant word (ABCD), little = CDAB.")
    bits: tuple[int, int] | None = Field(
        None, description="Binary / Modbus: [first bit, bit count] of an integer (bit 0 = least significant).")
    counter: bool = Field(False, description="A cumulative counter (e.g. bucket tips): the reading gets the "
                          "increment since the device's previous report, times scale.")
    wrap: int | None = Field(None, gt=1, description="Counter: value at which it wraps to 0; empty = 2^(bits).")
    scale: float = Field(1.0, description="Multiplier from the raw value to the unit (value = raw*scale+offset).")
    offset: float = Field(0.0, description="Added after scaling.")
    unit: str = Field("", description="Unit of the scaled value (cm, mm, V, km/h, ...).")
    range: tuple[float, float] | None = Field(
        None, description="[min, max] of plausible scaled values; outside = dropped and reported."
    )
    optional: bool = Field(False, description="A missing value is normal (not reported as a problem).")

    _path_parses = field_validator("path")(classmethod(lambda cls, v: _path_ok(v)))

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"range min {v[0]} is above max {v[1]}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        given = [k for k in ("path", "byte", "address") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path (JSON), byte (binary) or address (Modbus register)"
                             + (f"; got {', '.join(given)}" if given else ""))
        integer = not self.type.startswith("f")
        if self.bits is not None:
            first, count = self.bits
            if not integer or first < 0 or count < 1 or first + count > self.width:
                raise ValueError(f"bits {list(self.bits)} do not fit a {self.type}")
        if self.counter and not integer:
            raise ValueError("a counter must be an integer type")
        return self

    @property
    def width(self) -> int:
        """Bits of the raw type."""
        return struct.calcsize(_STRUCT[self.type]) * 8

    @property
    def register_count(self) -> int:
        return max(1, self.width // 16)

    @property
    def modulus(self) -> int:
        return self.wrap or 2 ** (self.bits[1] if self.bits else self.width)


class TimestampSpec(StrictModel):
    path: str = Field(description="Where the device's timestamp is in the JSON payload.")
    format: Literal["epoch_ms", "epoch_s", "iso8601"] = Field(
        "epoch_ms", description="epoch_ms / epoch_s = UNIX time; iso8601 = text like 2026-11-23T09:41:07+08:00."
    )
    timezone: str = Field("UTC", description="Zone for iso8601 text without an offset, e.g. Asia/Shanghai.")
    max_future_s: float = Field(300.0, ge=0, description="A time further than this after its arrival is refused "
                                "(a device clock gone wrong must not date readings in the future).")

    _path_parses = field_validator("path")(classmethod(lambda cls, v: _path_ok(v)))

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


_CHIRPSTACK_V4 = {
    "device_id": "$.deviceInfo.devEui", "data": "$.data", "encoding": "base64", "object": "$.object",
    "time": {"path": "$.time", "format": "iso8601"},
    "fields": {"rssi_dbm": {"path": "$.rxInfo[0].rssi", "unit": "dBm", "range": [-200, 50], "optional": True},
               "snr_db": {"path": "$.rxInfo[0].snr", "unit": "dB", "range": [-50, 50], "optional": True}},
}


class EnvelopeSpec(StrictModel):
    format: Literal["chirpstack_v4", "json"] = Field(
        "json", description="chirpstack_v4 = ChirpStack v4 uplink event (defaults for every path below).")
    device_id: str | None = Field(None, description="Path of the device id; empty = the topic's {device_id}. "
                                  "ChirpStack: $.deviceInfo.devEui, or $.deviceInfo.deviceName.")
    data: str | None = Field(None, description="Path of the encoded device payload (binary profiles).")
    encoding: Literal["base64", "hex"] = Field("base64", description="Encoding of the payload at `data`.")
    object: str | None = Field(None, description="Path of the already decoded JSON object (json profiles): "
                               "field paths start there.")
    records: str | None = Field(None, description="Path of a list of uplinks in one message (batching "
                                "platforms); each element is an envelope.")
    time: TimestampSpec | None = Field(None, description="Uplink time; a payload timestamp takes precedence.")
    fields: dict[str, FieldSpec] = Field(default_factory=dict, description="Envelope values kept as optional "
                                         "reading values (radio quality: rssi_dbm, snr_db).")

    @model_validator(mode="before")
    @classmethod
    def _presets(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") == "chirpstack_v4":
            return {**_CHIRPSTACK_V4, **data}
        return data

    _paths_parse = field_validator("device_id", "data", "object", "records")(
        classmethod(lambda cls, v: _path_ok(v)))

    @field_validator("fields")
    @classmethod
    def _json_fields(cls, v: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        for name, spec in v.items():
            if spec.path is None or spec.counter:
                raise ValueError(f"envelope field {name!r} needs a JSON path (and cannot be a counter)")
        return v


class DecodeResult(NamedTuple):
    """A decoded observation and the problems met on the way (values left out, with the reason)."""

    observation: Reading | Position
    device: str
    problems: list[str]
    counters: Mapping[str, int] = MappingProxyType({})  # raw counts of counter fields, see CounterTracker


class _Field(NamedTuple):
    """One field as decoding uses it: its spec's values copied out once per profile. Reading an attribute
    of a pydantic model costs ten times a plain one (its __getattr__ hook defeats the interpreter's
    attribute caches), and a message reads a dozen of them."""

    name: str
    spec: FieldSpec  # binary and register layouts are read from it
    steps: tuple[str | int, ...]  # the compiled JSON path; () for binary and register fields
    path: str | None
    optional: bool
    counter: bool
    scale: float
    offset: float
    bounds: tuple[float, float] | None  # the range, or a vehicle attribute's default range
    unit: str


class _Clock(NamedTuple):
    """A TimestampSpec's values, copied out as for _Field."""

    path: str
    steps: tuple[str | int, ...]
    format: str
    timezone: str
    max_future_s: float


class _Plan(NamedTuple):
    """What decoding a message needs from its profile, worked out on first use (profiles are immutable)."""

    name: str
    kind: str
    payload: str
    envelope: EnvelopeSpec | None
    fields: tuple[_Field, ...]
    envelope_fields: tuple[_Field, ...]
    units: dict[str, str]  # field -> unit, for the fields that have one
    clock: _Clock | None  # the payload's timestamp
    envelope_clock: _Clock | None  # the envelope's time
    topic: tuple[str, ...]  # the topic's levels
    device_level: int  # index of {device_id} in them


class DeviceProfile(StrictModel):
    name: str = Field(description="Unique profile name, referenced from the deployment config.")
    kind: Literal["sensor", "vehicle"] = Field(description="sensor -> Reading, vehicle -> Position.")
    transport: Literal["mqtt", "http", "modbus"] = Field(
        "mqtt", description="mqtt = subscribed topic; http = pushed to POST /ingest/<profile>; modbus = polled.")
    topic: str | None = Field(None, description="MQTT topic with {device_id} as one whole level; + and a final # "
                              "allowed.")
    payload: Literal["json", "binary", "registers"] = Field(
        "json", description="json, binary (fixed layout) or registers (Modbus).")
    envelope: EnvelopeSpec | None = Field(None, description="JSON wrapper around the payload (ChirpStack, NB-IoT "
                                          "platforms); empty = the message is the payload.")
    fields: dict[str, FieldSpec] = Field(description="Output name -> where and how to read the value.")
    timestamp: TimestampSpec | None = Field(None, description="Device time (json payloads); absent = the "
                                            "envelope's time, else the time received.")
    description: str = Field("", description="Free text: device model, vendor, notes.")

    @field_validator("topic")
    @classmethod
    def _topic_shape(cls, v: str | None) -> str | None:
        if v is None:
            return v
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
    def _consistent(self) -> DeviceProfile:
        if self.kind == "vehicle":
            missing = [k for k in ("lat", "lon") if k not in self.fields]
            if missing:
                raise ValueError(f"a vehicle profile must define fields {missing}")
        key = {"json": "path", "binary": "byte", "registers": "address"}[self.payload]
        for name, spec in self.fields.items():
            if getattr(spec, key) is None:
                raise ValueError(f"field {name!r}: a {self.payload} payload reads values by {key!r}")
        env = self.envelope
        if (self.transport == "modbus") != (self.payload == "registers"):
            raise ValueError("transport modbus goes with payload registers, and only with it")
        if self.transport == "mqtt" and self.topic is None:
            raise ValueError("an MQTT profile needs a topic")
        if self.transport != "mqtt" and self.topic is not None:
            raise ValueError(f"a {self.transport} profile has no topic")
        if self.transport == "http" and (env is None or env.device_id is None):
            raise ValueError("an HTTP profile needs an envelope with the device_id path")
        if self.transport == "modbus" and (env is not None or self.timestamp is not None):
            raise ValueError("a Modbus profile has no envelope or timestamp (the poll time is the reading's time)")
        if self.payload == "binary" and self.timestamp is not None:
            raise ValueError("a binary profile takes its time from the envelope, not from timestamp")
        if env is not None and self.payload == "binary" and env.data is None:
            raise ValueError("envelope.data: a binary profile needs the path of the encoded payload")
        if env is not None and self.payload == "json" and env.object is None:
            raise ValueError("envelope.object: a json profile needs the path of the decoded object")
        for table, _, count in self.register_blocks():
            if count > MAX_REGISTERS_PER_READ:
                raise ValueError(f"the {table} registers span {count}, more than one read ({MAX_REGISTERS_PER_READ})")
        return self

    def register_blocks(self) -> list[tuple[str, int, int]]:
        """Modbus: one (table, first address, count) read per table covers every field."""
        blocks = []
        for table in ("holding", "input"):
            spans = [(s.address, s.address + s.register_count) for s in self.fields.values()
                     if s.address is not None and s.table == table]
            if spans:
                first = min(a for a, _ in spans)
                blocks.append((table, first, max(e for _, e in spans) - first))
        return blocks

    @functools.cached_property
    def _plan(self) -> _Plan:
        def fields(specs: Mapping[str, FieldSpec]) -> tuple[_Field, ...]:
            return tuple(_Field(name, spec, compile_path(spec.path) if spec.path is not None else (), spec.path,
                                spec.optional, spec.counter, spec.scale, spec.offset,
                                spec.range or (_DEFAULT_RANGES.get(name) if self.kind == "vehicle" else None),
                                spec.unit)
                         for name, spec in specs.items())

        def clock(spec: TimestampSpec | None) -> _Clock | None:
            return None if spec is None else _Clock(spec.path, compile_path(spec.path), spec.format, spec.timezone,
                                                    spec.max_future_s)

        env = self.envelope
        env_fields = env.fields if env else {}
        topic = tuple((self.topic or "").split("/"))
        return _Plan(self.name, self.kind, self.payload, env, fields(self.fields), fields(env_fields),
                     {k: s.unit for k, s in {**env_fields, **self.fields}.items() if s.unit}, clock(self.timestamp),
                     clock(env.time if env else None), topic,
                     topic.index("{device_id}") if "{device_id}" in topic else -1)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> DeviceProfile:
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("_plan", "device_id_in_payload"):  # worked out from the copy's own fields when used
            copy.__dict__.pop(cached, None)
        return copy

    # -- topics ----------------------------------------------------------------------------------
    def topic_filter(self) -> str:
        """The MQTT subscription for all devices of this profile."""
        if self.topic is None:
            raise ValueError(f"profile {self.name!r} is not an MQTT profile")
        return self.topic.replace("{device_id}", "+")

    def device_id_from_topic(self, topic: str) -> str | None:
        """The device id in a concrete topic, or None when the topic is not this profile's."""
        if self.topic is None:
            return None
        plan = self._plan
        pattern = plan.topic
        levels = topic.split("/")
        if len(levels) == len(pattern) and pattern[-1] != "#":  # the usual shape: compare level by level
            for want, level in zip(pattern, levels, strict=True):
                if want != level and want != "+" and want != "{device_id}":
                    return None
            return levels[plan.device_level] or None
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

    @functools.cached_property
    def device_id_in_payload(self) -> bool:
        """The device id is known only after parsing the payload (not from the topic)."""
        return self.envelope is not None and self.envelope.device_id is not None

    # -- decoding --------------------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes, *, received: datetime | None = None) -> DecodeResult:
        """Decode one MQTT message. Raises PayloadError when no usable observation can be made."""
        device = self.device_id_from_topic(topic)
        if device is None:
            raise PayloadError(f"topic {topic!r} does not match {self.topic!r}", profile=self.name)
        results = self.decode_message(payload, device=device, received=received)
        if len(results) != 1:
            raise PayloadError(f"{len(results)} uplinks in one MQTT message; one expected", profile=self.name,
                               device=device)
        if isinstance(results[0], PayloadError):
            raise results[0]
        return results[0]

    def decode_message(self, payload: bytes, *, device: str | None = None,
                       received: datetime | None = None) -> list[DecodeResult | PayloadError]:
        """Decode a message that may carry several uplinks (an HTTP push batch): one outcome each.

        Raises PayloadError when the message itself is unusable (not JSON, no uplink)."""
        received = received or datetime.now(UTC)
        plan = self._plan
        env = plan.envelope
        if env is None:
            if plan.payload == "binary":
                return [_finish(plan, _binary_values(plan, payload, device), device, received, None)]
            doc = _json(plan, payload, device)
            return [_finish(plan, _json_values(plan.fields, doc), device, received, doc)]
        doc = _json(plan, payload, device)
        if env.records is None:
            return [self._decode_envelope(plan, doc, device, received)]
        records = resolve(doc, compile_path(env.records))
        if not isinstance(records, list) or not records:
            raise PayloadError(f"no uplinks: {env.records} is not a non-empty list", profile=self.name,
                               device=device, field="records")
        outcomes: list[DecodeResult | PayloadError] = []
        for record in records:
            try:
                outcomes.append(self._decode_envelope(plan, record, device, received))
            except PayloadError as exc:
                outcomes.append(exc)
        return outcomes

    def decode_registers(self, device: str, registers: Mapping[tuple[str, int], int], *,
                         received: datetime) -> DecodeResult:
        """Decode one Modbus poll: (table, address) -> 16-bit register value."""
        plan = self._plan
        values: dict[str, float] = {}
        problems: list[str] = []
        counts: dict[str, int] = {}
        for f in plan.fields:
            spec = f.spec
            assert spec.address is not None
            words = [registers.get((spec.table, spec.address + i)) for i in range(spec.register_count)]
            if any(w is None or not 0 <= w <= 0xFFFF for w in words):
                problems.append(f"field {f.name!r}: {spec.table} register {spec.address} was not read")
                continue
            if spec.word_order == "little":
                words.reverse()
            raw = _unpack(b"".join(w.to_bytes(2, "big") for w in words), 0, spec, "big")
            _keep(f, raw, values, problems, counts)
        return _finish(plan, (values, problems, counts), device, received, None)

    # -- internals ---------------------------------------------------------------------------------
    def _decode_envelope(self, plan: _Plan, doc: Any, device: str | None, received: datetime) -> DecodeResult:
        env = plan.envelope
        assert env is not None
        if env.device_id is not None:
            raw_id = resolve(doc, compile_path(env.device_id))
            if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or not str(raw_id).strip():
                raise PayloadError(f"no device id at {env.device_id}", profile=self.name, device=device,
                                   field="device_id")
            device = str(raw_id).strip()[:128]
        if plan.payload == "binary":
            assert env.data is not None
            encoded = resolve(doc, compile_path(env.data))
            if not isinstance(encoded, str):
                raise PayloadError(f"no {env.encoding} payload at {env.data}", profile=self.name, device=device,
                                   field="data")
            try:
                data = base64.b64decode(encoded, validate=True) if env.encoding == "base64" \
                    else bytes.fromhex(encoded)
            except (binascii.Error, ValueError) as exc:
                raise PayloadError(f"{env.data} is not {env.encoding} ({exc})", profile=self.name, device=device,
                                   field="data") from None
            values, problems, counts = _binary_values(plan, data, device)
            payload_doc = None
        else:
            assert env.object is not None
            payload_doc = resolve(doc, compile_path(env.object))
            if not isinstance(payload_doc, dict | list):
                raise PayloadError(f"no decoded object at {env.object}", profile=self.name, device=device,
                                   field="object")
            values, problems, counts = _json_values(plan.fields, payload_doc)
        if values or counts:  # radio quality only goes with a real measurement
            extra, _, _ = _json_values(plan.envelope_fields, doc)
            values.update({k: v for k, v in extra.items() if k not in values})
        time = None
        if plan.envelope_clock is not None and (plan.clock is None or payload_doc is None):
            time = _time(plan.envelope_clock, plan.name, doc, device, received)
        return _finish(plan, (values, problems, counts), device, received, payload_doc, time)


# -- decoding, from a profile's plan ---------------------------------------------------------------
def _json(plan: _Plan, payload: bytes, device: str | None) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, 4300+ digit integers, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise PayloadError(f"payload is not JSON ({reason}): {payload[:60]!r}", profile=plan.name,
                           device=device) from None


def _finish(plan: _Plan, decoded: tuple[dict[str, float], list[str], dict[str, int]], device: str | None,
            received: datetime, doc: Any, time: datetime | None = None) -> DecodeResult:
    values, problems, counts = decoded
    if not device:
        raise PayloadError("no device id", profile=plan.name)
    if doc is not None and plan.clock is not None:
        time = _time(plan.clock, plan.name, doc, device, received)
    time = time or received
    if plan.kind == "sensor":
        if not values and not counts:
            raise PayloadError("no usable value: " + "; ".join(problems), profile=plan.name, device=device)
        unit_of = plan.units
        units = {k: unit_of[k] for k in (*values, *counts) if k in unit_of}
        return DecodeResult(Reading(device, time, values, plan.name, units), device, problems, counts)
    for key in ("lat", "lon"):
        if key not in values:
            raise PayloadError("no usable position: " + "; ".join(problems), profile=plan.name,
                               device=device, field=key)
    attrs = {k: values.pop(k) for k in VEHICLE_ATTRS if k in values}
    if "valid" in attrs:
        attrs["valid"] = bool(attrs["valid"])
    return DecodeResult(Position(time=time, device=device, extras=values, **attrs), device, problems)


def _json_values(fields: tuple[_Field, ...], doc: Any) -> tuple[dict[str, float], list[str], dict[str, int]]:
    values: dict[str, float] = {}
    problems: list[str] = []
    counts: dict[str, int] = {}
    for f in fields:
        raw = resolve(doc, f.steps)
        if raw is _MISSING or raw is None:
            if not f.optional:
                problems.append(f"field {f.name!r}: missing at {f.path}")
            continue
        number = _number(raw)
        if number is None:
            problems.append(f"field {f.name!r}: {_short(raw)} at {f.path} is not a number")
            continue
        if f.counter and (number != int(number) or number < 0):
            problems.append(f"field {f.name!r}: counter {number:g} at {f.path} is not a whole number")
            continue
        _keep(f, int(number) if f.counter else number, values, problems, counts)
    return values, problems, counts


def _binary_values(plan: _Plan, data: bytes, device: str | None) -> tuple[dict[str, float], list[str], dict[str, int]]:
    values: dict[str, float] = {}
    problems: list[str] = []
    counts: dict[str, int] = {}
    for f in plan.fields:
        spec = f.spec
        assert spec.byte is not None
        end = spec.byte + spec.width // 8
        if end > len(data):
            if f.optional:
                continue
            raise PayloadError(f"payload of {len(data)} bytes is truncated: needs bytes {spec.byte}..{end - 1} "
                               f"({spec.type}) at offset {spec.byte}", profile=plan.name, device=device,
                               field=f.name)
        _keep(f, _unpack(data, spec.byte, spec, spec.endian), values, problems, counts)
    return values, problems, counts


def _keep(f: _Field, raw: float, values: dict[str, float], problems: list[str], counts: dict[str, int]) -> None:
    if f.counter:
        counts[f.name] = int(raw)
        return
    if not math.isfinite(raw):  # a float32/64 NaN or inf from a binary payload
        problems.append(f"field {f.name!r}: {raw} is not a finite number")
        return
    value = round(raw * f.scale + f.offset, 9)  # 3 * 0.2 -> 0.6, not 0.6000000000000001
    lo_hi = f.bounds
    if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
        problems.append(f"field {f.name!r}: {value:g}{(' ' + f.unit) if f.unit else ''} "
                        f"out of range [{lo_hi[0]:g}, {lo_hi[1]:g}]")
        return
    values[f.name] = value


def _time(clock: _Clock, profile: str, doc: Any, device: str, received: datetime) -> datetime:
    raw = resolve(doc, clock.steps)
    try:
        if raw is _MISSING or raw is None:
            raise ValueError(f"missing at {clock.path}")
        if clock.format == "iso8601":
            if not isinstance(raw, str) or len(raw) > 64:
                raise ValueError(f"{_short(raw)} is not ISO 8601 text")
            t = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
            t = t if t.tzinfo else t.replace(tzinfo=_zone(clock.timezone))
        else:
            number = _number(raw)
            if number is None:
                raise ValueError(f"{_short(raw)} is not a number")
            seconds = number / 1000.0 if clock.format == "epoch_ms" else number
            t = _EPOCH + timedelta(seconds=seconds)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"bad timestamp ({clock.format}): {exc}", profile=profile, device=device,
                           field="timestamp") from None
    ahead = (t - received).total_seconds()
    if ahead > clock.max_future_s:
        raise PayloadError(f"timestamp {t.isoformat()} is {ahead:.0f} s after its arrival (a device clock "
                           f"in the future; at most {clock.max_future_s:g} s allowed)", profile=profile,
                           device=device, field="timestamp")
    return t


def _unpack(data: bytes, at: int, spec: FieldSpec, endian: str) -> float:
    (raw,) = struct.unpack_from(("<" if endian == "little" else ">") + _STRUCT[spec.type], data, at)
    if spec.bits is not None:
        first, count = spec.bits
        raw = ((raw & (2 ** spec.width - 1)) >> first) & ((1 << count) - 1)  # bit fields of the unsigned value
    return raw


def _short(raw: Any) -> str:
    text = repr(raw) if not isinstance(raw, dict | list) else f"a JSON {type(raw).__name__.replace('dict', 'object')}"
    return text if len(text) <= 40 else text[:37] + "..."


def _number(raw: Any) -> float | None:
    """JSON numbers, booleans and numeric strings ("12.5") are accepted; NaN/inf and huge ones are not."""
    kind = raw.__class__
    if kind is float:  # most values: checked first
        return raw if math.isfinite(raw) else None
    if kind is bool:
        return 1.0 if raw else 0.0
    try:
        if isinstance(raw, int | float):
            value = float(raw)  # OverflowError for integers beyond a float
        elif isinstance(raw, str) and len(raw) <= 64:
            value = float(raw.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


# -- counters --------------------------------------------------------------------------------------
class CounterTracker:
    """Turns cumulative counters (``counter: true`` fields) into increments since the previous report.

    The previous raw count per (device, field) is the only state; it belongs to the source that
    decodes the device's messages (one tracker per source), never to the rules. The gateway saves it
    with the rules' state (gateway/rule_state.py: ``take_changed`` names the devices to save, ``export`` /
    ``restore`` carry the counts), so after a restart a device's next count is taken against the one
    before the restart: the rain between the two is neither lost nor counted twice. A device without
    a previous count (its first report ever) only primes the tracker (its increment is unknown, so
    the reading has no value for that field). A count below the previous one is a wrap (mod
    ``wrap``, default 2^bits); if that wrapped increment is beyond the field's range the device was
    reset instead, and the new count itself is the increment since the reset. Bounded: the least
    recently updated devices are forgotten beyond ``max_devices``.
    """

    def __init__(self, max_devices: int = 100_000) -> None:
        self.max_devices = max_devices
        self.primed = 0  # counts seen without a previous count (a device's first report)
        self._changed: set[str] = set()  # devices whose counts changed since take_changed()
        self._last: collections.OrderedDict[str, dict[str, int]] = collections.OrderedDict()  # device -> field -> count

    def apply(self, profile: DeviceProfile, result: DecodeResult) -> DecodeResult:
        """The result with the counters turned into values; counters without a previous count are left out."""
        if not result.counters or not isinstance(result.observation, Reading):
            return result
        values = dict(result.observation.values)
        problems = list(result.problems)
        counts = self._last.pop(result.device, None) or {}
        self._last[result.device] = counts  # the most recently updated device last
        if len(self._last) > self.max_devices:
            self._last.popitem(last=False)
        self._changed.add(result.device)
        for name, count in result.counters.items():
            spec = profile.fields[name]
            previous = counts.get(name)
            counts[name] = count
            if previous is None:
                self.primed += 1
                continue
            increment = round(((count - previous) % spec.modulus) * spec.scale, 9)
            if spec.range and not spec.range[0] <= increment <= spec.range[1]:
                increment = round(count * spec.scale, 9)  # a reset, not a wrap: counted up from 0 since
                if not spec.range[0] <= increment <= spec.range[1]:
                    problems.append(f"field {name!r}: counter went {previous} -> {count}; increment out of range")
                    continue
            values[name] = increment
        return result._replace(observation=result.observation._replace(values=values), problems=problems,
                               counters={})

    def take_changed(self) -> set[str]:
        """The devices whose counts changed since the last call, and forgets them."""
        changed, self._changed = self._changed, set()
        return changed

    def export(self, device: str) -> dict[str, int] | None:
        """A copy of the device's last counts (field -> raw count), or None if it has none."""
        counts = self._last.get(device)
        return dict(counts) if counts else None

    def restore(self, device: str, counts: Mapping[str, int]) -> None:
        """Take over counts saved by `export` (before any report of the device)."""
        self._last[device] = {name: int(count) for name, count in counts.items()}
        if len(self._last) > self.max_devices:
            self._last.popitem(last=False)


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
