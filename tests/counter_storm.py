"""The storm's rain (tests/storm.py) from a tipping bucket on a LoRaWAN pulse counter: ChirpStack v4
uplinks of the shipped `lorawan-rain-gauge-counter-chirpstack` profile, whose u16 counter carries the
cumulative tips (0.2 mm each), one uplink a minute, starting `START_COUNT` so that it wraps at 65536
during the burst.

Run as a script it is one life of a gateway: `python tests/counter_storm.py CONFIG UPLINKS ALERTS`
builds the gateway's graph from CONFIG (`gateway.wiring.build_graph`, the state loaded as at start),
runs its alert bus and rule-state store, and hands every uplink of UPLINKS (JSON lines: topic,
payload) to the MQTT source's decoding (`MqttSource.decode`: topic -> profile -> Intake, counters
and all) and on to the rules on the storm's own clock (`Router.on_replayed`), as a recording is
replayed. Each rain alert the case desk has handled is appended to ALERTS (JSON lines). Then it
waits to be killed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gateway, not an installed one
from storm import GAUGE, START, rain_per_minute, storm, tips  # noqa: E402

PROFILE = "lorawan-rain-gauge-counter-chirpstack"
TOPIC = f"application/storm/device/{GAUGE}/event/up"
START_COUNT = 65536 - 700  # 140 mm before the wrap: it wraps in the burst, after 09:40


def uplinks() -> list[tuple[datetime, str, bytes]]:
    """(time, topic, payload) of the gauge's uplinks: the counter after each minute's tips."""
    count, out = START_COUNT, []
    gauge = [r for r in storm() if r.device == GAUGE]
    for reading, mm in zip(gauge, tips(rain_per_minute()), strict=True):
        count = (count + round(mm / 0.2)) % 65536
        up = {"time": reading.time.isoformat(), "deviceInfo": {"devEui": GAUGE},
              "data": base64.b64encode(struct.pack(">HH", 3300, count)).decode()}
        out.append((reading.time, TOPIC, json.dumps(up).encode()))
    return out


def write_uplinks(path: Path, items: list[tuple[datetime, str, bytes]]) -> None:
    path.write_text("".join(json.dumps({"topic": t, "payload": p.decode()}) + "\n" for _, t, p in items),
                    encoding="utf-8")


def alert_row(alert) -> dict:
    """What the test compares: when, which change, and every window total the alert reports."""
    return {"time": alert.time.isoformat(), "state": alert.state, "level": alert.facts.get("level"),
            "change": alert.facts.get("change"), "totals": alert.facts.get("window_totals")}


async def live(config: Path, uplinks_path: Path, alerts_path: Path) -> None:
    from gateway.deployment import load_deployment
    from gateway.wiring import build_graph

    graph = build_graph(load_deployment(config))
    source, store = graph.find("mqtt-source"), graph.find("rule-state")
    out = alerts_path.open("a", encoding="utf-8")

    def record(alert, _outcome) -> None:
        if alert.subject_id == GAUGE and alert.rule == "rainstorm":
            out.write(json.dumps(alert_row(alert)) + "\n")
            out.flush()

    graph.bus.listeners.append(record)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(graph.bus.run(stop)), asyncio.create_task(store.run(stop))]
    received = START + timedelta(days=2)  # after the storm: each uplink's envelope time is the storm's
    for n, line in enumerate(uplinks_path.read_text(encoding="utf-8").splitlines()):
        message = json.loads(line)
        for obs in source.decode(message["topic"], message["payload"].encode(), received=received):
            graph.router.on_replayed(obs, recorded_clock=True)
        if n % 20 == 0:
            await asyncio.sleep(0)  # the bus and the store get their turns, as between MQTT messages
    print("fed", flush=True)
    await asyncio.gather(*tasks)  # until killed


if __name__ == "__main__":
    asyncio.run(live(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
