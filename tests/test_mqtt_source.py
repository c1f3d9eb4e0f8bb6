"""MQTT source end to end through the real Mosquitto: profiles decode, bad input is counted, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiomqtt
import pytest
from conftest import REPO

from core.model import Position, Reading
from gateway.profiles import load_profiles
from gateway.sinks.sink_config import MqttConfig
from gateway.sources.mqtt import MqttSource
from gateway.supervisor import Supervisor
from gateway.throttle import LogThrottle

WAIT = 20.0
PROFILES = load_profiles(REPO / "device_profiles")
WATER = {"ts": 1795400000000, "data": {"level": 1234}, "bat": 3.6}
GPS = {"t": 1795400000, "gps": {"lat": 39.9087, "lng": 116.3975, "spd": 32.5, "dir": 270}, "fix": True}


async def until(predicate, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def cfg(port: int) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.05, reconnect_max_s=0.5)


@contextlib.asynccontextmanager
async def running(source: MqttSource):
    """As the gateway runs it: under a supervisor, which reconnects with the source's backoff."""
    stop = asyncio.Event()
    supervisor = Supervisor()
    task = supervisor.spawn(source.name, lambda: source.run(stop), backoff=source.restart_backoff_s)
    try:
        await asyncio.wait_for(source.subscribed.wait(), WAIT)
        yield task
    finally:
        stop.set()
        assert await supervisor.wait([source.name], WAIT)


@contextlib.asynccontextmanager
async def publisher(port: int):
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        async def send(topic: str, body) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            await client.publish(topic, data, qos=1)
        yield send


def collector():
    inbox: asyncio.Queue = asyncio.Queue()
    return inbox, inbox.put_nowait


async def test_sensor_and_gps_payloads_become_reading_and_position(broker):
    inbox, on_obs = collector()
    source = MqttSource(cfg(broker.port), PROFILES.values(), on_obs)
    async with running(source), publisher(broker.port) as send:
        await send("city/hd/water/WL-0042/up", WATER)
        await send("trackers/860123456789012/gps", GPS)
        first = await asyncio.wait_for(inbox.get(), WAIT)
        second = await asyncio.wait_for(inbox.get(), WAIT)
    reading, position = sorted([first, second], key=lambda o: isinstance(o, Position))
    assert isinstance(reading, Reading)
    assert reading.device == "WL-0042" and reading.values == {"level_cm": 123.4, "battery_v": 3.6}
    assert reading.profile == "generic-water-level-json"
    assert isinstance(position, Position)
    assert (position.device, position.lat, position.lon, position.speed_kmh) == \
        ("860123456789012", 39.9087, 116.3975, 32.5)
    assert source.stats()["observations"] == 2 and source.stats()["undecodable"] == 0


async def test_garbage_is_counted_and_the_next_good_payload_still_arrives(broker):
    inbox, on_obs = collector()
    source = MqttSource(cfg(broker.port), PROFILES.values(), on_obs)
    async with running(source), publisher(broker.port) as send:
        await send("city/hd/water/WL-7/up", b"\xff\xfenot json at all")
        await send("city/hd/water/WL-7/up", {"ts": 1795400000000, "data": {"level": 99999}})  # nothing in range
        await send("city/hd/water/WL-7/up", {"ts": 1795400000000, "data": {"level": 6000}, "bat": 3.5})
        await send("city/hd/water/WL-7/up", WATER)
        partial = await asyncio.wait_for(inbox.get(), WAIT)
        good = await asyncio.wait_for(inbox.get(), WAIT)
    assert partial.values == {"battery_v": 3.5}  # the out-of-range level is kept out of the rules
    assert good.values["level_cm"] == 123.4
    assert source.stats()["undecodable"] == 2
    assert source.stats()["values_dropped"] == 1
    assert source.device_problems["WL-7"] == 3
    assert inbox.empty()


async def test_unknown_devices_and_callback_errors_are_counted_not_fatal(broker):
    received = []

    async def on_obs(obs):
        if obs.device == "T-bad":
            raise RuntimeError("rule engine hiccup")
        received.append(obs)

    source = MqttSource(cfg(broker.port), PROFILES.values(), on_obs, known_devices={"T-ok": None, "T-bad": None})
    async with running(source), publisher(broker.port) as send:
        await send("trackers/T-stranger/gps", GPS)
        await send("trackers/T-bad/gps", GPS)
        await send("trackers/T-ok/gps", GPS)
        await until(lambda: received, what="the known device's position")
    assert [p.device for p in received] == ["T-ok"]
    assert source.stats()["unknown_device"] == 1 and source.device_problems["T-stranger"] == 1
    assert source.stats()["callback_errors"] == 1


async def test_reconnects_after_broker_restart(broker):
    inbox, on_obs = collector()
    source = MqttSource(cfg(broker.port), [PROFILES["generic-water-level-json"]], on_obs)
    async with running(source):
        await asyncio.to_thread(broker.restart)
        await until(lambda: source.stats()["reconnects"] >= 1 and source.subscribed.is_set(), what="resubscribe")
        async with publisher(broker.port) as send:
            await send("city/x/water/WL-after/up", WATER)
            reading = await asyncio.wait_for(inbox.get(), WAIT)
    assert reading.device == "WL-after"


async def test_shared_subscription_hands_each_message_to_one_replica(broker):
    inbox, on_obs = collector()
    profile = PROFILES["generic-rain-gauge-json"]
    replicas = [MqttSource(cfg(broker.port), [profile], on_obs, shared_group="citygate") for _ in range(2)]
    assert replicas[0].subscriptions == ["$share/citygate/city/rain/+/data"]
    async with running(replicas[0]), running(replicas[1]), publisher(broker.port) as send:
        for i in range(20):
            await send(f"city/rain/RG-{i}/data", {"time": "2026-11-23T09:40:00+08:00", "tips": i})
        got = [await asyncio.wait_for(inbox.get(), WAIT) for _ in range(20)]
    assert sorted(r.device for r in got) == sorted(f"RG-{i}" for i in range(20))  # each exactly once
    assert sum(r.stats()["observations"] for r in replicas) == 20


def test_problems_are_logged_once_per_device_per_interval(caplog):
    source = MqttSource(cfg(1883), PROFILES.values(), lambda obs: None, log_interval_s=3600)
    caplog.clear()  # the start-up warning about shared topic filters
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        for _ in range(5):
            assert source.decode("city/a/water/WL-1/up", b"garbage") == []
        assert source.decode("city/a/water/WL-2/up", b"garbage") == []
        assert source.decode("nobody/listens/here", b"{}") == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "device 'WL-1'" in lines[0] and "not JSON" in lines[0]
    assert "device 'WL-2'" in lines[1]
    assert "matches no device profile" in lines[2]
    assert source.stats()["undecodable"] == 6 and source.device_problems["WL-1"] == 5
    assert source.stats()["unmatched"] == 1


def test_needs_a_profile():
    with pytest.raises(ValueError, match="profile"):
        MqttSource(cfg(1883), [], print)


def test_a_flood_of_made_up_device_ids_takes_bounded_memory_and_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(LogThrottle, "MAX_KEYS", 3)
    source = MqttSource(cfg(1883), PROFILES.values(), lambda obs: None, known_devices={})
    caplog.clear()  # the start-up warning about shared topic filters
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        for i in range(50):
            source.decode(f"trackers/fake-{i}/gps", json.dumps(GPS).encode())
    assert source.stats()["unknown_device"] == 50
    assert len(source.device_problems) == 4 and source.device_problems["(other devices)"] == 47
    assert len(caplog.records) == 1  # unknown ids share one line per interval
    assert "unknown device 'fake-0'" in caplog.records[0].getMessage()


def test_without_a_device_list_the_number_of_devices_is_bounded(caplog):
    source = MqttSource(cfg(1883), PROFILES.values(), lambda obs: None, max_devices=5)
    caplog.clear()  # the start-up warning about shared topic filters
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        got = [source.decode(f"trackers/t-{i}/gps", json.dumps(GPS).encode()) for i in range(20)]
        again = source.decode("trackers/t-0/gps", json.dumps(GPS).encode())
    assert sum(len(g) for g in got) == 5 and len(again) == 1  # the first five keep reporting
    assert source.stats()["device_limit"] == 15
    assert len(caplog.records) == 1


@pytest.mark.parametrize("persistent", [True, False])
async def test_messages_published_while_the_gateway_is_away(broker, persistent):
    """With a persistent session the broker keeps QoS 1 device messages for the gateway while it
    restarts; with a clean session they are gone."""
    config = cfg(broker.port).model_copy(update={"client_id": f"gw-persist-{persistent}",
                                                 "persistent_session": persistent})
    inbox, on = collector()
    source = MqttSource(config, [PROFILES["generic-water-level-json"]], on)
    async with running(source), publisher(broker.port) as send:
        await send("city/d1/water/wl-away/up", WATER)
        first = await asyncio.wait_for(inbox.get(), WAIT)
    assert first.device == "wl-away"
    async with publisher(broker.port) as send:  # the gateway is down now
        await send("city/d1/water/wl-away/up", {**WATER, "ts": WATER["ts"] + 60_000, "data": {"level": 2000}})
    async with running(source):
        if persistent:
            back = await asyncio.wait_for(inbox.get(), WAIT)
            assert back.values["level_cm"] == 200.0
        else:
            async with publisher(broker.port) as send:  # a later message arrives; the one sent while away did not
                await send("city/d1/water/wl-away/up", {**WATER, "ts": WATER["ts"] + 120_000, "data": {"level": 3000}})
            later = await asyncio.wait_for(inbox.get(), WAIT)
            assert later.values["level_cm"] == 300.0


async def test_qos_2_device_messages_arrive_once_and_are_acknowledged(broker):
    """With mqtt.qos 2 the source still subscribes at QoS 1 (acknowledged once handed on): a QoS 2
    publish arrives, and a new connection of the same session does not get it again."""
    config = cfg(broker.port).model_copy(update={"client_id": "gw-qos2", "qos": 2})
    inbox, on = collector()
    source = MqttSource(config, [PROFILES["generic-water-level-json"]], on)
    assert source.qos == 1
    async with running(source), aiomqtt.Client("127.0.0.1", broker.port, timeout=10) as client:
        await client.publish("city/d1/water/wl-q2/up", json.dumps(WATER).encode(), qos=2)
        reading = await asyncio.wait_for(inbox.get(), WAIT)
    assert reading.device == "wl-q2"
    async with running(MqttSource(config, [PROFILES["generic-water-level-json"]], on)):
        await asyncio.sleep(0.5)  # a redelivery would come at once
    assert inbox.empty()
