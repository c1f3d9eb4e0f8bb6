"""Every shipped MQTT profile through the real Mosquitto, ChirpStack v4 envelopes, and malformed input:
each bad message is counted and logged once per device and interval, and the good one right behind it
still arrives."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import UTC, datetime, timedelta

from conftest import REPO
from test_mqtt_source import WAIT, cfg, collector, publisher, running, until

from core.model import Position, Reading
from gateway.profiles import load_profiles
from gateway.sources.mqtt import MqttSource

PROFILES = load_profiles(REPO / "device_profiles")
MQTT_PROFILES = [p for p in PROFILES.values() if p.transport == "mqtt"]
NOW = datetime.now(UTC).replace(microsecond=0)
LDDS75 = "a84041000181af4f"
RAIN = "a840410000000777"


def chirpstack_up(dev_eui: str, data: bytes, *, name: str = "", when: datetime = NOW) -> dict:
    """A ChirpStack v4 uplink event as its MQTT integration publishes it (trimmed to what matters)."""
    return {"deduplicationId": "3e2a4f0c-0000-4000-8000-000000000001", "time": when.isoformat(),
            "deviceInfo": {"tenantName": "city", "applicationId": "0b5f-app", "applicationName": "flood",
                           "deviceProfileName": "LDDS75", "deviceName": name or dev_eui, "devEui": dev_eui},
            "devAddr": "01f2a3b4", "adr": True, "dr": 3, "fCnt": 42, "fPort": 2, "confirmed": False,
            "data": base64.b64encode(data).decode(),
            "rxInfo": [{"gatewayId": "0016c001ff10a235", "rssi": -97, "snr": 7.5}],
            "txInfo": {"frequency": 486300000}}


def up_topic(dev_eui: str) -> str:
    return f"application/0b5f-app/device/{dev_eui}/event/up"


async def test_each_shipped_mqtt_profile_arrives_decoded_with_units(broker):
    inbox, on_obs = collector()
    devices = {"WL-0042": "generic-water-level-json", "RG-007": "generic-rain-gauge-json",
               "860123456789012": "generic-gps-tracker-json", LDDS75: "dragino-ldds75-chirpstack",
               RAIN: "lorawan-rain-gauge-counter-chirpstack"}
    assert {p.name for p in MQTT_PROFILES} == set(devices.values())  # a new profile needs a case here
    source = MqttSource(cfg(broker.port), MQTT_PROFILES, on_obs, known_devices=devices)
    ms = int(NOW.timestamp() * 1000)
    async with running(source), publisher(broker.port) as send:
        await send("city/hd/water/WL-0042/up", {"ts": ms, "data": {"level": 1234, "temp": 18.5}, "bat": 3.61})
        await send("city/rain/RG-007/data", {"time": NOW.isoformat(), "tips": 3, "total_mm": 41.6})
        await send("trackers/860123456789012/gps", {"t": NOW.timestamp(), "gps": {"lat": 39.9, "lng": 116.4}})
        await send(up_topic(LDDS75), chirpstack_up(LDDS75, bytes.fromhex("0B4505DC0000EB01")))
        await send(up_topic(RAIN), chirpstack_up(RAIN, bytes.fromhex("0CE4FFFE")))  # primes the counter
        await send(up_topic(RAIN), chirpstack_up(RAIN, bytes.fromhex("0CE40003")))  # 65534 -> 3: wrapped
        got = {(o.device, getattr(o, "values", {}).get("rain_tips_total")): o
               for o in [await asyncio.wait_for(inbox.get(), WAIT) for _ in range(6)]}
    water = got[("WL-0042", None)]
    assert water.values == {"level_cm": 123.4, "water_temp_c": 18.5, "battery_v": 3.61}
    assert water.units == {"level_cm": "cm", "water_temp_c": "°C", "battery_v": "V"}
    rain = got[("RG-007", None)]
    assert rain.values == {"rain_mm": 0.6, "rain_total_mm": 41.6} and rain.units["rain_mm"] == "mm"
    assert isinstance(got[("860123456789012", None)], Position)
    level = got[(LDDS75, None)]
    assert isinstance(level, Reading) and level.profile == "dragino-ldds75-chirpstack"
    assert level.values == {"level_cm": 150.0, "distance_mm": 1500.0, "battery_v": 2.885, "probe_temp_c": 23.5,
                            "probe_connected": 1.0, "rssi_dbm": -97.0, "snr_db": 7.5}
    assert level.units["level_cm"] == "cm" and level.time == NOW
    counter = got[(RAIN, 3.0)]
    assert counter.values["rain_mm"] == 1.0  # 5 tips across the wrap at 65536, 0.2 mm each
    assert source.stats()["counter_primed"] == 1 and source.stats()["observations"] == 6


async def test_chirpstack_object_and_device_name(broker):
    """A json profile reads ChirpStack's already decoded `object`; the device id may be the device name."""
    from gateway.profiles import DeviceProfile

    profile = DeviceProfile.model_validate({
        "name": "lsn-object", "kind": "sensor", "topic": "application/+/device/{device_id}/event/up",
        "envelope": {"format": "chirpstack_v4", "device_id": "$.deviceInfo.deviceName"},
        "fields": {"level_cm": {"path": "$.distance_mm", "scale": -0.1, "offset": 300, "unit": "cm"}}})
    inbox, on_obs = collector()
    source = MqttSource(cfg(broker.port), [profile], on_obs, known_devices={"underpass-3": "lsn-object"})
    up = chirpstack_up(LDDS75, b"", name="underpass-3")
    async with running(source), publisher(broker.port) as send:
        await send(up_topic(LDDS75), {**up, "object": {"distance_mm": 2582}})
        reading = await asyncio.wait_for(inbox.get(), WAIT)
    assert (reading.device, reading.values["level_cm"], reading.values["rssi_dbm"]) == ("underpass-3", 41.8, -97.0)


async def test_no_payload_takes_the_source_down_and_the_good_one_behind_still_arrives(broker, caplog):
    inbox, on_obs = collector()
    devices = {"WL-1": "generic-water-level-json", "WL-2": "generic-water-level-json",
               "T-1": "generic-gps-tracker-json", "WL-X": "generic-rain-gauge-json", LDDS75: "dragino-ldds75-chirpstack"}
    source = MqttSource(cfg(broker.port), MQTT_PROFILES, on_obs, known_devices=devices, log_interval_s=3600)
    ms = int(NOW.timestamp() * 1000)
    good = {"ts": ms, "data": {"level": 500}}
    bad_water = [
        b"{not json",                                       # malformed JSON
        b"[" * 20_000 + b"]" * 20_000,                        # nested past the recursion limit
        b'{"ts": 1, "data": {"level": ' + b"9" * 5000 + b"}}",  # too many digits for Python's int()
        json.dumps({"ts": ms, "data": {"level": int("9" * 400)}}).encode(),  # beyond a float
        json.dumps({"ts": ms, "data": {"level": {"deep": [1]}}}).encode(),   # wrong type
        json.dumps({"ts": ms, "data": {"level": 99999}}).encode(),           # out of range
        json.dumps({"ts": ms + 86_400_000, "data": {"level": 500}}).encode(),  # a day in the future
        json.dumps({"ts": "soon", "data": {"level": 500}}).encode(),         # bad timestamp
        b"\xff" * 70_000,                                    # over the payload limit
    ]
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        async with running(source), publisher(broker.port) as send:
            for body in bad_water:
                await send("city/hd/water/WL-1/up", body)
                await send("city/hd/water/WL-2/up", good)
            await send(up_topic(LDDS75), chirpstack_up(LDDS75, b"\x0b\x45\x05"))  # truncated binary payload
            await send(up_topic(LDDS75), {**chirpstack_up(LDDS75, b""), "data": "%%%"})  # not base64
            await send("trackers/T-1/gps", {"t": NOW.timestamp(), "gps": {"lat": "north", "lng": 116.4}})
            await send("trackers/T-stranger/gps", {"t": NOW.timestamp(), "gps": {"lat": 39.9, "lng": 116.4}})
            await send("city/hd/water/WL-X/up", good)  # a rain gauge posing as a water-level sensor
            await send("city/hd/water/WL-1/up", good)
            await send(up_topic(LDDS75), chirpstack_up(LDDS75, bytes.fromhex("0B4505DC0000EB01")))
            await send("trackers/T-1/gps", {"t": NOW.timestamp(), "gps": {"lat": 39.9, "lng": 116.4}})
            got = [await asyncio.wait_for(inbox.get(), WAIT) for _ in range(len(bad_water) + 3)]
            await until(lambda: source.stats()["received"] == 2 * len(bad_water) + 8, what="every message")
    assert [o.device for o in got[:len(bad_water)]] == ["WL-2"] * len(bad_water)
    assert [o.device for o in got[len(bad_water):]] == ["WL-1", LDDS75, "T-1"]
    assert got[len(bad_water)].values == {"level_cm": 50.0}
    stats = source.stats()
    assert stats["undecodable"] == 11 and stats["oversize"] == 1 and stats["decoder_errors"] == 0
    assert stats["values_dropped"] == 0  # the out-of-range level was the only value: nothing usable
    assert stats["unknown_device"] == 1 and stats["wrong_profile"] == 1
    assert source.device_problems["WL-1"] == len(bad_water) and source.device_problems[LDDS75] == 2
    lines = [r.getMessage() for r in caplog.records]
    assert sum("'WL-1'" in line for line in lines) == 1, lines  # once per device and interval
    assert any("truncated" in line and "offset 2" in line for line in lines)
    assert sum("unknown device" in line for line in lines) == 1
    assert any("configured with profile 'generic-rain-gauge-json'" in line for line in lines)


def test_each_kind_of_bad_payload_is_named(caplog):
    source = MqttSource(cfg(1883), MQTT_PROFILES, lambda obs: None, log_interval_s=0)
    caplog.clear()  # the start-up warning about shared topic filters
    ms = int(NOW.timestamp() * 1000)
    cases = {
        "nested too deeply": b"[" * 50_000,
        "Exceeds the limit": b'{"data": {"level": ' + b"1" * 5000 + b"}}",
        "is not a number": json.dumps({"ts": ms, "data": {"level": int("9" * 400)}}).encode(),
        "after its arrival": json.dumps({"ts": ms + 3_600_000, "data": {"level": 1}}).encode(),
        "out of range [0, 500]": json.dumps({"ts": ms, "data": {"level": -50}}).encode(),
    }
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        for i, body in enumerate(cases.values()):
            assert source.decode(f"city/a/water/D{i}/up", body, received=NOW) == []
    for i, expected in enumerate(cases):
        assert expected in caplog.records[i].getMessage(), (expected, caplog.records[i].getMessage())
    future = NOW + timedelta(seconds=100)  # within max_future_s (clock skew) it is accepted
    ok = source.decode("city/a/water/D9/up", json.dumps({"ts": int(future.timestamp() * 1000),
                                                          "data": {"level": 10}}).encode(), received=NOW)
    assert ok[0].time == future


def test_a_decoder_bug_is_contained_counted_and_logged_with_its_traceback(monkeypatch, caplog):
    """The safety net under PayloadError: whatever a decoder raises stays with its message."""
    from gateway.profiles import DeviceProfile

    real = DeviceProfile.decode_message

    def flaky(self, payload, **kw):
        if b"boom" in payload:
            raise ZeroDivisionError("a decoder bug")
        return real(self, payload, **kw)

    monkeypatch.setattr(DeviceProfile, "decode_message", flaky)
    source = MqttSource(cfg(1883), MQTT_PROFILES, lambda obs: None, log_interval_s=3600)
    caplog.clear()  # the start-up warning about shared topic filters
    ms = int(NOW.timestamp() * 1000)
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        for _ in range(3):
            assert source.decode("city/a/water/WL-9/up", b'{"boom": 1}') == []
        (good,) = source.decode("city/a/water/WL-9/up", json.dumps({"ts": ms, "data": {"level": 10}}).encode())
    assert good.values == {"level_cm": 1.0}
    assert source.stats()["decoder_errors"] == 3 and source.device_problems["WL-9"] == 3
    (line,) = caplog.records
    assert "decoder failed" in line.getMessage() and line.exc_info[0] is ZeroDivisionError
