"""Device profiles: the shipped YAML files, the path resolver, scaling, ranges, timestamps and errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import REPO

from core.model import Position, Reading
from gateway.profiles import (
    DeviceProfile,
    PayloadError,
    ProfileError,
    compile_path,
    load_profile,
    load_profiles,
    resolve,
)

SHIPPED = REPO / "device_profiles"
RECEIVED = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def profiles() -> dict[str, DeviceProfile]:
    return load_profiles(SHIPPED)


def payload(doc) -> bytes:
    return json.dumps(doc).encode()


def sensor(**over) -> DeviceProfile:
    doc = {"name": "t", "kind": "sensor", "topic": "s/{device_id}/up",
           "fields": {"level_cm": {"path": "$.data.level", "scale": 0.1, "unit": "cm", "range": [0, 500]},
                      "battery_v": {"path": "$.bat", "unit": "V", "optional": True}},
           "timestamp": {"path": "$.ts", "format": "epoch_ms"}}
    doc.update(over)
    return DeviceProfile.model_validate(doc)


def test_shipped_profiles_load(profiles):
    assert {"generic-water-level-json", "generic-rain-gauge-json", "generic-gps-tracker-json"} <= set(profiles)
    assert profiles["generic-gps-tracker-json"].kind == "vehicle"


def test_water_level_sample(profiles):
    p = profiles["generic-water-level-json"]
    doc = {"ts": 1795400000000, "data": {"level": 1234, "temp": 18.5}, "bat": 3.61, "rssi": -87}
    result = p.decode("city/hd/water/WL-0042/up", payload(doc))
    r = result.observation
    assert isinstance(r, Reading) and result.problems == []
    assert r.device == "WL-0042" and r.profile == "generic-water-level-json"
    assert r.values == {"level_cm": 123.4, "water_temp_c": 18.5, "battery_v": 3.61, "rssi_dbm": -87.0}
    assert r.units["level_cm"] == "cm"
    assert r.time == datetime.fromtimestamp(1795400000, UTC)


def test_rain_gauge_sample_local_iso_time(profiles):
    p = profiles["generic-rain-gauge-json"]
    r = p.decode("city/rain/RG-007/data", payload({"time": "2026-11-23T09:40:00", "tips": 3, "total_mm": 41.6}))
    assert r.observation.values == {"rain_mm": 0.6, "rain_total_mm": 41.6}
    # no offset in the text: the profile says the device clock is Beijing time (UTC+8)
    assert r.observation.time == datetime(2026, 11, 23, 1, 40, tzinfo=UTC)


def test_gps_tracker_sample(profiles):
    p = profiles["generic-gps-tracker-json"]
    doc = {"t": 1795400000, "gps": {"lat": 39.9087, "lng": 116.3975, "spd": 32.5, "dir": 270, "alt": 48},
           "fix": True, "odo": 12873.4, "fuel": 61.0}
    result = p.decode("trackers/860123456789012/gps", payload(doc))
    pos = result.observation
    assert isinstance(pos, Position) and result.problems == []
    assert (pos.device, pos.lat, pos.lon, pos.speed_kmh, pos.course, pos.altitude_m, pos.valid) == \
        ("860123456789012", 39.9087, 116.3975, 32.5, 270.0, 48.0, True)
    assert dict(pos.extras) == {"mileage_km": 12873.4, "fuel_l": 61.0}
    assert pos.time == datetime.fromtimestamp(1795400000, UTC)
    no_fix = p.decode("trackers/1/gps", payload({"t": 1, "gps": {"lat": 0, "lng": 0}, "fix": False}))
    assert no_fix.observation.valid is False and no_fix.observation.speed_kmh == 0.0


def test_topic_filter_and_device_id():
    p = sensor(topic="city/+/water/{device_id}/up")
    assert p.topic_filter() == "city/+/water/+/up"
    assert p.device_id_from_topic("city/hd/water/WL-1/up") == "WL-1"
    assert p.device_id_from_topic("city/hd/water/WL-1/down") is None
    assert p.device_id_from_topic("city/hd/water/WL-1/up/extra") is None
    assert p.device_id_from_topic("city/hd/water") is None
    deep = sensor(topic="gw/{device_id}/#")
    assert deep.topic_filter() == "gw/+/#"
    assert deep.device_id_from_topic("gw/D9/a/b") == "D9"
    assert deep.device_id_from_topic("other/D9/a") is None


def test_path_resolver():
    doc = {"a": {"b": [10, {"c": 5}]}, "x.y": 1, "k-1": 2}
    assert resolve(doc, compile_path("$.a.b[0]")) == 10
    assert resolve(doc, compile_path("$.a.b[1].c")) == 5
    assert resolve(doc, compile_path('$["x.y"]')) == 1
    assert resolve(doc, compile_path("$['x.y']")) == 1
    assert resolve(doc, compile_path("$.k-1")) == 2
    assert resolve(doc, compile_path("$")) == doc
    for bad in ("a.b", "$.a..b", "$.a[x]", "$.a["):
        with pytest.raises(ValueError, match="path"):
            compile_path(bad)


def test_scale_offset_range_and_numeric_strings():
    p = sensor(fields={"temp_c": {"path": "$.t", "scale": 0.1, "offset": -40, "range": [-40, 85]}})
    assert p.decode("s/D1/up", payload({"t": "650", "ts": 0})).observation.values == {"temp_c": 25.0}
    result = p.decode("s/D1/up", payload({"t": 65, "ts": 0}), received=RECEIVED)
    assert result.observation.values == {"temp_c": -33.5}


def test_timestamp_formats():
    def at(fmt, value, tz="UTC"):
        p = sensor(timestamp={"path": "$.ts", "format": fmt, "timezone": tz})
        return p.decode("s/D/up", payload({"ts": value, "data": {"level": 1}})).observation.time

    t = datetime(2026, 11, 23, 1, 41, 7, tzinfo=UTC)
    assert at("epoch_ms", int(t.timestamp() * 1000)) == t
    assert at("epoch_s", t.timestamp()) == t
    assert at("epoch_s", str(int(t.timestamp()))) == t
    assert at("iso8601", "2026-11-23T09:41:07+08:00") == t
    assert at("iso8601", "2026-11-23T01:41:07Z") == t
    assert at("iso8601", "2026-11-23T09:41:07", "Asia/Shanghai") == t
    no_ts = sensor(timestamp=None).decode("s/D/up", payload({"data": {"level": 1}}), received=RECEIVED)
    assert no_ts.observation.time == RECEIVED
    assert at("iso8601", "2026-11-23T09:41:07+08:00").utcoffset() == timezone(timedelta(hours=8)).utcoffset(None)


def test_out_of_range_value_is_left_out_and_reported():
    result = sensor().decode("s/D7/up", payload({"ts": 0, "data": {"level": 6120}, "bat": 3.5}))
    assert result.observation.values == {"battery_v": 3.5}
    assert result.problems == ["field 'level_cm': 612 cm out of range [0, 500]"]


def test_missing_required_field_reported_missing_optional_not():
    result = sensor().decode("s/D7/up", payload({"ts": 0, "data": {"level": 10}}))
    assert result.problems == [] and result.observation.values == {"level_cm": 1.0}
    result = sensor().decode("s/D7/up", payload({"ts": 0, "data": {}, "bat": 3.5}))
    assert result.observation.values == {"battery_v": 3.5}
    assert result.problems == ["field 'level_cm': missing at $.data.level"]


def test_payload_errors_name_device_profile_and_field(profiles):
    p = sensor()
    with pytest.raises(PayloadError, match=r"profile 't', device 'D7': payload is not JSON") as err:
        p.decode("s/D7/up", b"\x00garbage{")
    assert err.value.device == "D7" and err.value.profile == "t"
    with pytest.raises(PayloadError, match=r"no usable value: field 'level_cm': 'high' at \$\.data\.level is not a "):
        p.decode("s/D7/up", payload({"ts": 0, "data": {"level": "high"}}))
    with pytest.raises(PayloadError, match=r"field 'timestamp': bad timestamp \(epoch_ms\): missing at \$\.ts"):
        p.decode("s/D7/up", payload({"data": {"level": 1}}))
    with pytest.raises(PayloadError, match=r"does not match"):
        p.decode("other/D7/up", payload({}))
    gps = profiles["generic-gps-tracker-json"]
    with pytest.raises(PayloadError, match=r"field 'lat': no usable position: field 'lat': 91 deg out of range") as err:
        gps.decode("trackers/T9/gps", payload({"t": 1, "gps": {"lat": 91, "lng": 116}}))
    assert err.value.field == "lat"
    with pytest.raises(PayloadError, match=r"field 'lon'.*missing at \$\.gps\.lng"):
        gps.decode("trackers/T9/gps", payload({"t": 1, "gps": {"lat": 39}}))
    with pytest.raises(PayloadError, match="bad timestamp"):
        profiles["generic-rain-gauge-json"].decode("city/rain/R/data", payload({"time": "yesterday", "tips": 1}))


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_load_errors_name_file_and_field_path(tmp_path):
    bad = write(tmp_path, "bad.yaml", "name: x\nkind: sensor\ntopic: a/{device_id}\n"
                "fields:\n  level: {path: $.l, scale: lots}\n")
    with pytest.raises(ProfileError, match=r"bad\.yaml: fields\.level\.scale: Input should be a valid number"):
        load_profile(bad)
    typo = write(tmp_path, "typo.yaml", "name: x\nkind: sensor\ntopic: a/{device_id}\nfields:\n"
                 "  level: {path: $.l, unti: cm}\n")
    with pytest.raises(ProfileError, match=r"typo\.yaml: fields\.level\.unti: Extra inputs"):
        load_profile(typo)
    no_id = write(tmp_path, "noid.yaml", "name: x\nkind: sensor\ntopic: a/+/b\nfields:\n  l: {path: $.l}\n")
    with pytest.raises(ProfileError, match=r"noid\.yaml: topic: .*\{device_id\}"):
        load_profile(no_id)
    bad_path = write(tmp_path, "path.yaml", "name: x\nkind: sensor\ntopic: a/{device_id}\nfields:\n"
                     "  l: {path: data.l}\n")
    with pytest.raises(ProfileError, match=r"path\.yaml: fields\.l\.path: .*must start with"):
        load_profile(bad_path)
    car = write(tmp_path, "car.yaml", "name: x\nkind: vehicle\ntopic: a/{device_id}\nfields:\n  lat: {path: $.a}\n")
    with pytest.raises(ProfileError, match=r"car\.yaml: .*vehicle profile must define fields \['lon'\]"):
        load_profile(car)
    tz = write(tmp_path, "tz.yaml", "name: x\nkind: sensor\ntopic: a/{device_id}\nfields:\n  l: {path: $.l}\n"
               "timestamp: {path: $.t, format: iso8601, timezone: Mars/Olympus}\n")
    with pytest.raises(ProfileError, match=r"tz\.yaml: timestamp\.timezone: .*unknown time zone"):
        load_profile(tz)
    notyaml = write(tmp_path, "broken.yaml", "name: [x\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml: not valid YAML"):
        load_profile(notyaml)


def test_duplicate_profile_names_are_an_error(tmp_path):
    text = "name: same\nkind: sensor\ntopic: a/{device_id}\nfields:\n  l: {path: $.l}\n"
    write(tmp_path, "a.yaml", text)
    write(tmp_path, "b.yml", text)
    with pytest.raises(ProfileError, match=r"b\.yml: name: profile 'same' is already defined in .*a\.yaml"):
        load_profiles(tmp_path)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(tmp_path / "nope")
