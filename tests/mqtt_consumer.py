"""Subprocess for the kill -9 test: a gateway's MQTT source whose pipeline writes what it is handed.

    python tests/mqtt_consumer.py --port PORT --client-id ID --out FILE

Persistent session under the given client id, the water-level and tracker profiles, a slow pipeline
(2 ms of work every 25 observations). Each observation handed on appends "device epoch_s" to FILE
with one write(2) on an O_APPEND descriptor, so a SIGKILL loses nothing already written; "subscribed"
is appended once the subscription is active. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.profiles import load_profiles  # noqa: E402
from gateway.sinks.sink_config import MqttConfig  # noqa: E402
from gateway.sources.mqtt import MqttSource  # noqa: E402
from gateway.supervisor import Supervisor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


async def main(args: argparse.Namespace) -> None:
    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    handed = 0

    def on_observation(obs) -> None:
        nonlocal handed
        os.write(fd, f"{obs.device} {int(obs.time.timestamp())}\n".encode())
        handed += 1
        if handed % 25 == 0:
            time.sleep(0.002)

    profiles = load_profiles(REPO / "device_profiles")
    config = MqttConfig(host="127.0.0.1", port=args.port, client_id=args.client_id, reconnect_min_s=0.05,
                        reconnect_max_s=0.5)
    source = MqttSource(config, [profiles["generic-water-level-json"], profiles["generic-gps-tracker-json"]],
                        on_observation, high_water=200)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    supervisor = Supervisor()
    supervisor.spawn(source.name, lambda: source.run(stop), backoff=source.restart_backoff_s)
    await source.subscribed.wait()
    os.write(fd, b"subscribed\n")
    await stop.wait()
    await supervisor.wait([source.name], 10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--out", required=True)
    asyncio.run(main(parser.parse_args()))
