"""Backlogs through the real Mosquitto: nothing the broker kept for the gateway is lost on the way in.

The gateway acknowledges a QoS 1 message only once it has handed it on, and stops reading while it
holds `high_water` unhandled messages, so a backlog far beyond the broker's in-flight window and the
source's own bound drains completely through a slow pipeline; a kill -9 in the middle redelivers
what was in hand; a malformed message is counted and acknowledged, never redelivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from services import mosquitto
from test_mqtt_source import PROFILES, WAIT, cfg, running

from core.model import Position
from gateway.sources.mqtt import MqttSource

HERE = Path(__file__).resolve().parent
T0_MS = 1795400000000
SOURCE_PROFILES = [PROFILES["generic-water-level-json"], PROFILES["generic-gps-tracker-json"]]


def backlog(n: int, devices: int = 300) -> list[tuple[str, bytes]]:
    """n messages: water-level sensors, and every tenth a tracker's position, each (device, time) once."""
    messages = []
    for i in range(n):
        device, k = i % devices, i // devices
        if i % 10 == 9:
            body = {"t": T0_MS // 1000 + k * 60, "gps": {"lat": 39.9, "lng": 116.4, "spd": 30.0, "dir": 90},
                    "fix": True}
            messages.append((f"trackers/trk-{device:03d}/gps", json.dumps(body).encode()))
        else:
            body = {"ts": T0_MS + k * 60_000, "data": {"level": 1000 + k % 500}, "bat": 3.6}
            messages.append((f"city/d1/water/wl-{device:03d}/up", json.dumps(body).encode()))
    return messages


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 as fast as the broker takes them; returns once it has acknowledged them all."""
    done = threading.Semaphore(0)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"backlog-pub-{os.getpid()}")
    client.on_publish = lambda *_args: done.release()
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for i, (topic, payload) in enumerate(messages):
            if i >= 1000:  # paho scans its queue per acknowledgement: keep it short
                assert done.acquire(timeout=WAIT), f"the broker stopped acknowledging at message {i}"
            client.publish(topic, payload, qos=1)
        for _ in range(min(1000, len(messages))):
            assert done.acquire(timeout=WAIT), "the broker did not acknowledge the last messages"
    finally:
        client.loop_stop()
        client.disconnect()


def key(obs) -> tuple[str, int]:
    return obs.device, int(obs.time.timestamp())


def expected_keys(messages: list[tuple[str, bytes]]) -> set[tuple[str, int]]:
    keys = set()
    for topic, payload in messages:
        body = json.loads(payload)
        device = topic.split("/")[-2] if topic.startswith("city/") else topic.split("/")[1]
        keys.add((device, body["ts"] // 1000 if "ts" in body else body["t"]))
    return keys


async def drained(count: Callable[[], int], total: int, idle_s: float = 10.0) -> int:
    """Wait until `count()` reaches `total` or stops growing for idle_s (a loss); the count."""
    loop = asyncio.get_running_loop()
    last, since = -1, loop.time()
    while (now := count()) < total:
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since > idle_s:
            break
        await asyncio.sleep(0.05)
    return count()


class SlowPipeline:
    """The rules, slower than the broker: 2 ms of work every 25 observations (taking ~80 us each)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.positions = 0

    async def __call__(self, obs) -> None:
        self.seen.append(key(obs))
        self.positions += isinstance(obs, Position)
        if len(self.seen) % 25 == 0:
            time.sleep(0.002)  # a blocking stretch, as a heavy rule would be
            await asyncio.sleep(0)


async def away_then_back(port: int, client_id: str, messages, on_observation, **source_kw) -> MqttSource:
    """Subscribe with a persistent session, go away while `messages` are published, come back."""
    config = cfg(port).model_copy(update={"client_id": client_id})
    async with running(MqttSource(config, SOURCE_PROFILES, lambda obs: None)):
        pass
    await asyncio.to_thread(publish_all, port, messages)
    return MqttSource(config, SOURCE_PROFILES, on_observation, **source_kw)


async def test_a_backlog_far_beyond_the_in_flight_window_arrives_whole_through_a_slow_pipeline(tmp_path):
    """30,000 queued messages, a broker that sends without limit (max_inflight_messages 0: the worst
    case; Mosquitto 2.0.11 behaves so at its default of 20), a source that holds at most 200: every
    reading and position arrives, none twice, and the source never held more than 200."""
    messages = backlog(30_000)
    sink = SlowPipeline()
    with mosquitto(tmp_path, max_inflight_messages=0) as broker:
        source = await away_then_back(broker.port, "gw-backlog", messages, sink, high_water=200)
        async with running(source):
            assert await drained(lambda: len(sink.seen), len(messages)) == len(messages)
    assert len(set(sink.seen)) == len(messages)
    assert set(sink.seen) == expected_keys(messages)
    assert sink.positions == len(messages) // 10
    stats = source.stats()
    assert stats["observations"] == len(messages) and stats["undecodable"] == 0
    assert 0 < stats["most_held"] <= 200  # bounded memory: the rest waited in the broker
    assert stats["pauses"] > 0


async def test_malformed_messages_in_a_backlog_are_counted_acknowledged_and_do_not_block_the_rest(broker):
    messages = backlog(3_000)
    bad = {100: b"\xff\xfe not json", 1_500: b'{"ts": "yesterday"}', 2_999: b"[1, 2"}
    for i, payload in bad.items():
        messages[i] = ("city/d1/water/wl-bad/up", payload)
    sink = SlowPipeline()
    source = await away_then_back(broker.port, "gw-malformed", messages, sink, high_water=50)
    async with running(source):
        assert await drained(lambda: source.stats()["received"], len(messages)) == len(messages)
    assert source.stats()["undecodable"] == len(bad) and source.device_problems["wl-bad"] == len(bad)
    good = [m for i, m in enumerate(messages) if i not in bad]
    assert set(sink.seen) == expected_keys(good) and len(sink.seen) == len(good)
    # acknowledged: a new connection of the same session gets nothing again
    again = MqttSource(source.config, SOURCE_PROFILES, sink)
    async with running(again):
        await asyncio.sleep(1.0)  # a redelivery, if any, would come at once
    assert again.stats()["received"] == 0


def consumer(port: int, client_id: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "mqtt_consumer.py"), "--port", str(port),
                             "--client-id", client_id, "--out", str(out)],
                            cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def seen(path: Path) -> set[tuple[str, int]]:
    return {(device, int(t)) for device, t in (x.split(" ") for x in lines(path) if x != "subscribed")}


@pytest.mark.slow
def test_a_gateway_killed_mid_backlog_gets_every_message_after_its_restart(broker, tmp_path):
    """A gateway process drains 20,000 queued messages, slowly, and is killed with SIGKILL half-way;
    the restarted one gets the rest: every reading arrives at least once (some twice: those handed
    on whose acknowledgement the broker had not read yet)."""
    messages = backlog(20_000)
    out = tmp_path / "seen.txt"
    first = consumer(broker.port, "gw-kill", out)
    deadline = time.monotonic() + WAIT
    while "subscribed" not in lines(out):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
        time.sleep(0.05)
    first.terminate()
    assert first.wait(WAIT) == 0
    publish_all(broker.port, messages)

    second = consumer(broker.port, "gw-kill", out)
    deadline = time.monotonic() + 60
    while len(lines(out)) < 8_000:
        assert second.poll() is None and time.monotonic() < deadline, "the consumer did not get going"
        time.sleep(0.02)
    second.send_signal(signal.SIGKILL)
    second.wait(WAIT)
    before = len([x for x in lines(out) if x != "subscribed"])
    assert before < len(messages)  # killed in the middle

    third = consumer(broker.port, "gw-kill", out)
    try:
        want = expected_keys(messages)
        deadline = time.monotonic() + 60
        while not want <= seen(out):
            assert third.poll() is None and time.monotonic() < deadline, "not every message arrived"
            time.sleep(0.1)
    finally:
        third.terminate()
        third.wait(WAIT)
    handed = [x for x in lines(out) if x != "subscribed"]
    twice = len(handed) - len(set(handed))
    # twice: what was handed on but whose acknowledgement the broker had not read when the kill reset
    # the connection (100-200 here); were nothing acknowledged, all 8,000+ of the first run would be
    assert twice < 1_000, f"{twice} messages handed on twice"


def redelivery_site(tmp_path: Path, port: int, vm_url: str) -> Path:
    site = {
        "site": "redelivery", "gateway_id": "gw-redelivery", "data_dir": str(tmp_path / "data"),
        "profiles_dir": str(HERE.parent / "device_profiles"), "web": {"enabled": False},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05},
        "mqtt_source": {"profiles": ["generic-water-level-json", "generic-rain-gauge-json"]},
        "timeseries": {"backend": "influxdb", "url": vm_url, "flush_interval_ms": 100},
        "sensors": {
            "devices": [{"id": "wl-under", "profile": "generic-water-level-json", "kind": "water_level",
                         "lon": 116.40, "lat": 39.91},
                        {"id": "rg-roof", "profile": "generic-rain-gauge-json", "kind": "rain_gauge",
                         "lon": 116.40, "lat": 39.91}],
            "level_rules": [{"name": "underpass", "min_duration_s": 0, "case_from": "deep",
                             "levels": [{"name": "wet", "at": 15}, {"name": "deep", "at": 27}]}],
            "rain_rules": [{"name": "downpour", "thresholds": [{"window_s": 3600, "mm": 10}]}],
        },
    }
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(site), encoding="utf-8")  # JSON is YAML
    return path


async def test_a_redelivered_reading_is_not_counted_twice(broker, vm, tmp_path):
    """What a crash redelivers reaches the rules again with the same device and time: the rain it
    carries is not added twice (6 mm, not 12: under the 10 mm threshold), the flooded underpass keeps
    its one episode and one case, and the time series (VictoriaMetrics as docker/compose.yaml runs it)
    keeps one point per device and time."""
    from gateway.deployment import load_deployment
    from gateway.runtime import Gateway

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    sent = []
    for k in range(3):
        when = now + timedelta(minutes=k)
        sent.append(("city/d1/water/wl-under/up", {"ts": int(when.timestamp() * 1000), "data": {"level": 300}}))
        sent.append(("city/rain/rg-roof/data", {"time": when.isoformat(), "tips": 10}))  # 2 mm
    messages = [(topic, json.dumps(body).encode()) for topic, body in sent]

    gateway = Gateway(load_deployment(redelivery_site(tmp_path, broker.port, vm.url)))
    alerts = []
    gateway.bus.listeners.append(lambda alert, _outcome: alerts.append(alert))
    monitor = gateway.graph.router.sensors
    await gateway.start()
    try:
        await asyncio.wait_for(gateway.component("mqtt-source").subscribed.wait(), WAIT)
        await asyncio.to_thread(publish_all, broker.port, messages)
        assert await drained(lambda: monitor.stats["readings"], 6) == 6
        await asyncio.to_thread(publish_all, broker.port, messages)  # the same readings again
        assert await drained(lambda: monitor.stats["duplicate"] + monitor.stats["out_of_order"], 6) == 6
        assert await drained(lambda: gateway.graph.timeseries.stats()["written"], 12) == 12
        cases = sum(gateway.outbox.counts().values())
    finally:
        assert await gateway.shutdown()
    assert [a.rule for a in alerts if a.state == "open"] == ["underpass"]  # one episode, no downpour
    assert cases == 1
    rain = vm.export('{__name__="sensor_reading_rain_mm", device="rg-roof"}')
    assert [(s["values"], len(set(s["timestamps"]))) for s in rain] == [([2.0, 2.0, 2.0], 3)]
    level = vm.export('{__name__="sensor_reading_level_cm", device="wl-under"}')
    assert [s["values"] for s in level] == [[30.0, 30.0, 30.0]]
