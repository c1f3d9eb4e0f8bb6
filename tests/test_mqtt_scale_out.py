"""Two gateway replicas on one Mosquitto: a round-robin shared subscription splits a device's series
across them; `mqtt_source.partition` keeps every device whole on exactly one replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import pytest
from test_config import problems, write
from test_mqtt_source import PROFILES, cfg, publisher, running, until

from core.model import Reading
from gateway.config import load_config
from gateway.sources.mqtt import MqttSource

# an odd count: devices reporting in lockstep, an even count would keep each on one replica of two by
# chance (message i goes to replica i % 2); real devices report at their own times
DEVICES = [f"WL-{i:04d}" for i in range(21)]
PER_DEVICE = 10
WATER = PROFILES["generic-water-level-json"]


class Replica:
    """What one replica's rules would see: each device's series, in arrival order."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = defaultdict(list)

    def on_observation(self, obs) -> None:
        assert isinstance(obs, Reading)
        self.series[obs.device].append(obs.values["level_cm"])

    def total(self) -> int:
        return sum(map(len, self.series.values()))


async def feed(port: int, replicas: list[Replica], sources: list[MqttSource]) -> None:
    """Publish every device's series (levels 1..10 cm, in order) and wait until all arrived."""
    async with contextlib.AsyncExitStack() as stack:
        for source in sources:
            await stack.enter_async_context(running(source))
        async with publisher(port) as send:
            for n in range(1, PER_DEVICE + 1):
                for device in DEVICES:
                    await send(f"city/hd/water/{device}/up", {"ts": 1795400000000 + n * 60_000,
                                                              "data": {"level": n * 10}})
        expected = len(DEVICES) * PER_DEVICE
        await until(lambda: sum(r.total() for r in replicas) >= expected, what=f"{expected} readings")
        await asyncio.sleep(0.3)  # a duplicate, if any, would arrive now
    assert sum(r.total() for r in replicas) == expected


async def test_round_robin_shared_subscription_splits_each_device_across_replicas(broker):
    replicas = [Replica(), Replica()]
    sources = [MqttSource(cfg(broker.port), [WATER], r.on_observation, shared_group="g-rr") for r in replicas]
    assert sources[0].subscriptions == ["$share/g-rr/city/+/water/+/up"]
    await feed(broker.port, replicas, sources)
    whole = [1.0 * n for n in range(1, PER_DEVICE + 1)]
    split = [d for d in DEVICES if all(d in r.series for r in replicas)]
    assert split, "Mosquitto's round robin sent every device to one replica"
    for device in split:  # neither replica sees the whole series: its rules judge a device with gaps
        assert all(r.series[device] != whole for r in replicas)
        assert sorted(replicas[0].series[device] + replicas[1].series[device]) == whole


@pytest.mark.parametrize("listed", [True, False], ids=["per-device-topics", "filtered-on-receipt"])
async def test_partitioned_replicas_each_get_whole_devices_and_every_device_once(broker, listed):
    replicas = [Replica(), Replica()]
    known = {d: "generic-water-level-json" for d in DEVICES} if listed else None
    sources = [MqttSource(cfg(broker.port), [WATER], r.on_observation, known_devices=known, partition=(i, 2))
               for i, r in enumerate(replicas)]
    if listed:  # the broker sends each replica its own devices only
        assert sorted(t for s in sources for t in s.subscriptions) == \
            sorted(f"city/+/water/{d}/up" for d in DEVICES)
    else:
        assert all(s.subscriptions == ["city/+/water/+/up"] for s in sources)
    await feed(broker.port, replicas, sources)
    whole = [1.0 * n for n in range(1, PER_DEVICE + 1)]
    owners = {d: [i for i, r in enumerate(replicas) if d in r.series] for d in DEVICES}
    assert all(len(o) == 1 for o in owners.values()), owners  # every device on exactly one replica
    assert {o[0] for o in owners.values()} == {0, 1}  # and both replicas have work
    for device, (owner,) in owners.items():
        assert replicas[owner].series[device] == whole  # the whole series, in order
    dropped = sum(s.stats()["other_partition"] for s in sources)
    assert dropped == (0 if listed else len(DEVICES) * PER_DEVICE)


def test_partition_config(tmp_path):
    config = load_config(write(tmp_path, "mqtt_source: {profiles: [x], partition: {index: 1, count: 3}}\n"))
    assert (config.mqtt_source.partition.index, config.mqtt_source.partition.count) == (1, 3)
    found = problems(tmp_path, "mqtt_source: {partition: {index: 3, count: 3}}\n")
    assert any(p.startswith("mqtt_source.partition: ") and "below count 3" in p for p in found), found
    found = problems(tmp_path, "mqtt_source: {shared_group: g, partition: {index: 0, count: 2}}\n")
    assert any(p.startswith("mqtt_source.shared_group: ") and "not both" in p for p in found), found
