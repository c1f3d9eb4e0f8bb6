"""Binary layouts, envelopes, counters and the new profile checks; Hypothesis over the binary decoder."""

from __future__ import annotations

import base64
import json
import struct
import textwrap
from datetime import UTC, datetime

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model import Reading
from gateway.config import ConfigError, load_config
from gateway.deployment import load_deployment
from gateway.profiles import CounterTracker, DeviceProfile, PayloadError, load_profiles

PROFILES = load_profiles(REPO / "device_profiles")
RECEIVED = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def binary(fields: dict, **over) -> DeviceProfile:
    return DeviceProfile.model_validate({"name": "b", "kind": "sensor", "topic": "d/{device_id}/up",
                                         "payload": "binary", "fields": fields, **over})


def test_types_endianness_scale_and_bit_fields():
    p = binary({"u8": {"byte": 0, "type": "u8"}, "i8": {"byte": 1, "type": "i8"},
                "u16le": {"byte": 2, "type": "u16", "endian": "little"}, "i16": {"byte": 4, "type": "i16", "scale": 0.1},
                "u32": {"byte": 6, "type": "u32"}, "i32le": {"byte": 10, "type": "i32", "endian": "little"},
                "f32": {"byte": 14, "type": "f32"}, "f64le": {"byte": 18, "type": "f64", "endian": "little"},
                "flag": {"byte": 0, "type": "u8", "bits": [7, 1]}, "nibble": {"byte": 0, "type": "u8", "bits": [0, 4]},
                "add": {"byte": 1, "type": "i8", "scale": 2, "offset": 100}})
    data = (bytes([0x8A, 0xFE]) + struct.pack("<H", 513) + struct.pack(">h", -25) + struct.pack(">I", 70000)
            + struct.pack("<i", -7) + struct.pack(">f", 1.5) + struct.pack("<d", -2.25))
    values = p.decode("d/X/up", data, received=RECEIVED).observation.values
    assert values == {"u8": 138.0, "i8": -2.0, "u16le": 513.0, "i16": -2.5, "u32": 70000.0, "i32le": -7.0,
                      "f32": 1.5, "f64le": -2.25, "flag": 1.0, "nibble": 10.0, "add": 96.0}


def test_truncated_payload_names_field_and_offset_optional_tail_may_be_missing():
    p = binary({"level": {"byte": 0, "type": "u16"}, "temp": {"byte": 2, "type": "i16", "optional": True},
                "bat": {"byte": 4, "type": "u16"}})
    with pytest.raises(PayloadError, match=r"field 'bat': payload of 3 bytes is truncated: needs bytes 4..5 \(u16\) "
                                           r"at offset 4") as err:
        p.decode("d/D1/up", b"\x00\x01\x02", received=RECEIVED)
    assert err.value.device == "D1" and err.value.field == "bat"
    short = binary({"level": {"byte": 0, "type": "u16"}, "temp": {"byte": 2, "type": "i16", "optional": True}})
    assert short.decode("d/D1/up", b"\x00\x07", received=RECEIVED).observation.values == {"level": 7.0}


def test_envelope_errors_are_payload_errors():
    p = PROFILES["dragino-ldds75-chirpstack"]
    topic = "application/a/device/e1/event/up"
    up = {"time": RECEIVED.isoformat(), "deviceInfo": {"devEui": "e1"}, "data": base64.b64encode(bytes(8)).decode()}
    cases = {"no device id at": {**up, "deviceInfo": {}}, "is not base64": {**up, "data": "@@"},
             "no base64 payload": {**up, "data": None}, "bad timestamp": {**up, "time": "noon"},
             "truncated": {**up, "data": "AAE="}}
    for message, doc in cases.items():
        with pytest.raises(PayloadError, match=message):
            p.decode(topic, json.dumps(doc).encode(), received=RECEIVED)
    with pytest.raises(PayloadError, match="no device id"):  # a JSON array, not an uplink event
        p.decode(topic, b"[]", received=RECEIVED)


@pytest.mark.parametrize("doc, message", [
    ({"payload": "binary", "fields": {"l": {"path": "$.l"}}}, "a binary payload reads values by 'byte'"),
    ({"fields": {"l": {"byte": 0}}}, "a json payload reads values by 'path'"),
    ({"fields": {"l": {"path": "$.l", "byte": 0}}}, "exactly one of path"),
    ({"payload": "binary", "fields": {"l": {"byte": 0, "type": "u8", "bits": [4, 5]}}}, r"bits \[4, 5\] do not fit"),
    ({"payload": "binary", "fields": {"l": {"byte": 0, "type": "f32", "counter": True}}}, "counter must be an integer"),
    ({"transport": "modbus", "payload": "registers", "fields": {"l": {"address": 0}}}, "has no topic"),
    ({"topic": None, "transport": "http", "fields": {"l": {"path": "$.l"}}}, "envelope with the device_id"),
    ({"topic": None, "transport": "modbus", "payload": "registers",
      "fields": {"a": {"address": 0}, "b": {"address": 200}}}, "span 201, more than one read"),
    ({"payload": "binary", "envelope": {"format": "json"}, "fields": {"l": {"byte": 0}}}, "envelope.data"),
])
def test_profile_checks(doc, message):
    from pydantic import ValidationError

    base = {"name": "x", "kind": "sensor", "topic": "a/{device_id}"}
    with pytest.raises(ValidationError, match=message):
        DeviceProfile.model_validate({**base, **doc})


def test_counter_increments_wrap_reset_and_bounded_state():
    p = PROFILES["lorawan-rain-gauge-counter-chirpstack"]
    tracker = CounterTracker(max_devices=2)

    def tips(device: str, count: int):
        up = {"time": RECEIVED.isoformat(), "deviceInfo": {"devEui": device},
              "data": base64.b64encode(struct.pack(">HH", 3300, count)).decode()}
        result = tracker.apply(p, p.decode(f"application/a/device/{device}/event/up", json.dumps(up).encode(),
                                           received=RECEIVED))
        return result.observation.values, result.problems

    assert "rain_mm" not in tips("g1", 100)[0] and tracker.primed == 1  # first report after a start: primes
    assert tips("g1", 103)[0]["rain_mm"] == 0.6
    assert tips("g1", 103)[0]["rain_mm"] == 0.0
    assert tips("g1", 2)[0]["rain_mm"] == 0.4  # a drop whose wrapped increment is absurd: the device was reset
    assert "rain_mm" not in tips("g2", 65534)[0]
    assert tips("g2", 3)[0]["rain_mm"] == 1.0  # 65534 -> 3 wraps at 65536: 5 tips of 0.2 mm
    values, problems = tips("g2", 40000)
    assert "rain_mm" not in values and problems == ["field 'rain_mm': counter went 3 -> 40000; increment out of range"]
    assert values["rain_tips_total"] == 40000.0
    tips("g3", 1)  # beyond max_devices: the least recently updated device (g1) is forgotten
    assert "rain_mm" not in tips("g1", 10)[0]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=24))
def test_random_bytes_give_a_reading_or_a_payload_error(data):
    p = binary({"a": {"byte": 0, "type": "u16"}, "b": {"byte": 2, "type": "f32", "range": [-100, 100]},
                "c": {"byte": 6, "type": "i64", "endian": "little", "scale": 1e-3, "optional": True},
                "d": {"byte": 1, "type": "u8", "bits": [3, 2]}, "e": {"byte": 14, "type": "f64", "optional": True},
                "n": {"byte": 4, "type": "u16", "counter": True}})
    try:
        result = p.decode("d/R/up", data, received=RECEIVED)
    except PayloadError as exc:
        assert "truncated" in str(exc) or "no usable value" in str(exc)
        return
    assert isinstance(result.observation, Reading) and len(data) >= 6
    assert all(isinstance(v, float) and v == v for v in result.observation.values.values())


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                    max_leaves=12))
def test_random_envelopes_give_a_reading_or_a_payload_error(obj):
    p = PROFILES["dragino-ldds75-chirpstack"]
    for doc in (obj, {"deviceInfo": {"devEui": obj}, "data": obj, "time": obj}):
        try:
            result = p.decode("application/a/device/e/event/up", json.dumps(doc).encode(), received=RECEIVED)
        except PayloadError:
            continue
        assert isinstance(result.observation, Reading)


def write_config(tmp_path, text: str):
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_config_sections_for_modbus_and_http_ingest(tmp_path):
    ok = load_config(write_config(tmp_path, f"""
        profiles_dir: {REPO / 'device_profiles'}
        sensors:
          devices:
            - {{id: radar-01, profile: radar-level-modbus-tcp, lon: 116.4, lat: 39.9}}
          modbus:
            - {{id: radar-01, host: 10.0.0.7, unit_id: 3, interval_s: 30}}
          http_ingest: {{enabled: true, port: 8091, token: abc}}
        """))
    assert ok.sensors.modbus[0].profile == "radar-level-modbus-tcp" and ok.sensors.http_ingest.token == "abc"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, f"""
            profiles_dir: {REPO / 'device_profiles'}
            sensors:
              devices:
                - {{id: radar-01, lon: 116.4, lat: 39.9}}
              modbus:
                - {{id: radar-01, host: 10.0.0.7, profile: nope}}
              http_ingest: {{enabled: true}}
            """))
    assert err.value.problems == [
        "sensors.http_ingest: http_ingest needs a token when enabled (anyone could push readings otherwise)"]
    with pytest.raises(ConfigError) as err:  # profiles are files: the deployment loader checks them
        load_deployment(write_config(tmp_path, f"""
            profiles_dir: {REPO / 'device_profiles'}
            sensors:
              devices:
                - {{id: radar-01, lon: 116.4, lat: 39.9}}
              modbus:
                - {{id: radar-01, host: 10.0.0.7, profile: nope}}
            """))
    assert err.value.problems == ["sensors.modbus[0].profile: no device profile named 'nope'",
                                  "sensors.modbus[0].profile: device 'radar-01' has profile "
                                  "'generic-water-level-json' in sensors.devices"]
