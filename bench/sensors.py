"""Sensor ingestion benchmark: `python bench/sensors.py [--devices N] [--per-device K] [--quick]`.

One run against one Mosquitto (started here with docker/mosquitto.conf's raised queue limits), with
N water-level sensors (default 10,000) publishing JSON on city/<district>/water/<id>/up:

1. **Raw**: a bare aiomqtt subscriber (the client library the gateway uses), no decoding.
2. **Gateway**: the real gateway built from a generated config (`gateway.wiring` through
   `gateway.runtime.Gateway`): MqttSource with the generic water-level profile and the device list
   → Intake → Router → SensorMonitor (a 15 / 27 / 40 cm ladder, a rise rule, health checks) →
   alert bus and case desk, and every reading to the SQLite time series in batches.

Throughput: both subscribers hold a persistent session; a separate publisher process queues
N x K QoS 1 messages in the broker while the subscriber is away, then the subscriber connects and
drains them: rate = messages / (last arrival - first arrival). The publisher's own speed and CPU
therefore measure neither. Latency: the gateway then stays connected while the publisher sends at a
steady rate (half the gateway's drain rate, at most 2,000 msg/s) with the publish time in each
payload; p99 = publish → reading handed to the rules (SensorMonitor.process).

1 % of the devices report a rising level (episodes open, escalate; 道路积水 cases with a chart).

Prints a table; the LAST line is the machine-readable summary:
    gateway_vs_raw=<ratio> msgs_per_s=<n> p99_ms=<n> rss_mb=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

PROFILE = "generic-water-level-json"
FLOODING_EVERY = 100  # one device in a hundred reports a rising level


def device_id(i: int) -> str:
    return f"wl-{i:05d}"


def topic(i: int) -> str:
    return f"city/d{i % 16:02d}/water/{device_id(i)}/up"


def level_mm(i: int, k: int) -> int:
    """Device i's k-th level: dry kerbside noise, or (1 %) water rising 6 cm a report."""
    if i % FLOODING_EVERY == 0:
        return 100 + 60 * k
    return 20 + (i * 7 + k * 3) % 40


# -- the broker ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mosquitto(workdir: Path):
    """Mosquitto on loopback with docker/mosquitto.conf's queue limits (persistence off)."""
    binary = next((b for b in (shutil.which("mosquitto"), "/usr/sbin/mosquitto") if b and Path(b).exists()), None)
    if binary is None:
        raise SystemExit("mosquitto is not installed: run scripts/test.sh, which installs it")
    limits = [line for line in (ROOT / "docker" / "mosquitto.conf").read_text().splitlines()
              if line.startswith(("max_queued_messages", "max_queued_bytes"))]
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
                               *limits, "log_dest stderr", "log_type error", ""]))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.05)
        yield port, limits
    finally:
        proc.terminate()
        proc.wait(10)


# -- the publisher (its own process) -------------------------------------------------------------
def publish(port: int, devices: int, per_device: int, first_k: int, rate: float | None) -> None:
    """Publish per_device reports of every device (QoS 1, the publish time in `ts`), paced at `rate`
    msg/s or as fast as the broker takes them; returns once the broker acknowledged them all."""
    import paho.mqtt.client as mqtt

    acked = 0

    def on_publish(*_args) -> None:
        nonlocal acked
        acked += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    total = devices * per_device
    start = time.monotonic()
    sent = 0
    for k in range(first_k, first_k + per_device):
        for i in range(devices):
            if rate is not None:
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            while sent - acked >= 1000:  # paho scans its queue per ack: a long one is quadratic
                time.sleep(0.001)
            body = {"ts": int(time.time() * 1000), "data": {"level": level_mm(i, k)}, "bat": 3.6}
            client.publish(topic(i), json.dumps(body, separators=(",", ":")), qos=1)
            sent += 1
    deadline = time.monotonic() + 120
    while acked < total and time.monotonic() < deadline:
        time.sleep(0.01)
    if acked < total:
        print(f"publisher: only {acked} of {total} acknowledged", file=sys.stderr, flush=True)
    client.loop_stop()
    client.disconnect()


def run_publisher(port: int, devices: int, per_device: int, first_k: int, rate: float | None = None) -> float:
    """Run `publish` in a separate process (its CPU is not the subscriber's); seconds it took."""
    start = time.monotonic()
    args = [str(a) for a in (port, devices, per_device, first_k, rate or 0)]
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--publish", *args])
    if done.returncode != 0:
        raise SystemExit(f"the publisher failed (exit code {done.returncode})")
    return time.monotonic() - start


# -- 1. the bare subscriber ------------------------------------------------------------------------
async def raw_rate(port: int, devices: int, per_device: int) -> tuple[float, float]:
    """Messages per second a bare aiomqtt subscriber drains from a queued backlog; publish seconds."""
    import aiomqtt

    def client() -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", port, identifier="bench-raw", clean_session=False, timeout=30)

    async with client() as c:
        await c.subscribe("city/+/water/+/up", qos=1)
    print("raw: publishing the backlog", flush=True)
    publish_s = await asyncio.to_thread(run_publisher, port, devices, per_device, 0)
    print(f"raw: published in {publish_s:.1f} s, draining", flush=True)
    total, count, first, last = devices * per_device, 0, 0.0, 0.0
    async with client() as c:
        async def drain() -> None:
            nonlocal count, first, last
            async for _message in c.messages:
                count += 1
                last = time.perf_counter()
                if count == 1:
                    first = last
                if count == total:
                    return

        task = asyncio.create_task(drain())
        seen = -1
        while not task.done() and seen != count:  # stop waiting when nothing came for 10 s
            seen = count
            await asyncio.wait([task], timeout=10)
        task.cancel()
    if count < total:
        print(f"raw: only {count:,} of {total:,} messages arrived", flush=True)
    return (count - 1) / (last - first), publish_s


# -- 2. the gateway --------------------------------------------------------------------------------
def write_config(workdir: Path, port: int, devices: int) -> Path:
    sensors = [{"id": device_id(i), "profile": PROFILE, "kind": "water_level", "group": f"d{i % 16:02d}",
                "lon": 116.30 + (i % 100) * 0.002, "lat": 39.85 + (i // 100) * 0.002, "report_interval_s": 60}
               for i in range(devices)]
    config = {
        "site": "bench-sensors", "gateway_id": "bench-gw", "timezone": "Asia/Shanghai",
        "data_dir": str(workdir / "data"), "profiles_dir": str(ROOT / "device_profiles"),
        "web": {"enabled": False},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "mqtt_source": {"profiles": [PROFILE]},
        "timeseries": {"backend": "sqlite"},
        "sensors": {
            "devices": sensors,
            "level_rules": [{"name": "underpass", "min_duration_s": 0, "case_from": "deep",
                             "levels": [{"name": "wet", "at": 15}, {"name": "deep", "at": 27},
                                        {"name": "impassable", "at": 40, "severity": "critical"}]}],
            "rise_rules": [{"name": "rising"}],
        },
    }
    path = workdir / "bench-sensors.yaml"
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


class Probe:
    """Wraps SensorMonitor.process: counts readings handed to the rules and their publish → rules delay."""

    def __init__(self, monitor) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.delays_ms: list[float] | None = None
        self.done = asyncio.Event()
        self.target = 0
        process = monitor.process

        def probe(reading):
            now = time.perf_counter()
            self.count += 1
            if self.count == 1:
                self.first = now
            self.last = now
            if self.delays_ms is not None:
                self.delays_ms.append(time.time() * 1000 - reading.time.timestamp() * 1000)
            if self.count >= self.target:
                self.done.set()
            return process(reading)

        monitor.process = probe

    async def arrived(self, idle_s: float = 10.0) -> int:
        """Wait for the expected readings, or until none came for idle_s (a loss is reported, not hung on)."""
        seen = -1
        while not self.done.is_set() and seen != self.count:
            seen = self.count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), idle_s)
        return self.count

    def expect(self, n: int, *, delays: bool) -> None:
        self.count, self.target = 0, n
        self.delays_ms = [] if delays else None
        self.done.clear()


async def gateway_run(config_path: Path, port: int, devices: int, per_device: int) -> dict:
    from gateway.deployment import load_deployment
    from gateway.runtime import Gateway

    # first start: the persistent session subscribes, then the gateway goes away
    gateway = Gateway(load_deployment(config_path))
    await gateway.start()
    source = gateway.component("mqtt-source")
    await asyncio.wait_for(source.subscribed.wait(), 60)
    assert await gateway.shutdown()
    publish_s = await asyncio.to_thread(run_publisher, port, devices, per_device, 0)

    gateway = Gateway(load_deployment(config_path))
    source = gateway.component("mqtt-source")
    probe = Probe(gateway.graph.router.sensors)
    total = devices * per_device
    probe.expect(total, delays=False)
    cpu0 = time.process_time()
    await gateway.start()
    drained = await probe.arrived()
    rate = (drained - 1) / (probe.last - probe.first)
    cpu_us = (time.process_time() - cpu0) / total * 1e6

    # steady live load for the delay: half the drain rate, at most 2,000 msg/s, >= 10 s
    live_rate = min(2000.0, rate / 2)
    live_k = max(1, round(live_rate * 10 / devices))
    probe.expect(devices * live_k, delays=True)
    await asyncio.to_thread(run_publisher, port, devices, live_k, per_device, live_rate)
    live_arrived = await probe.arrived()
    delays = sorted(probe.delays_ms or [0.0])
    await asyncio.sleep(2)  # let the time series flush its last batch
    stats = gateway.snapshot()
    outbox = gateway.outbox.counts()
    clean = await gateway.shutdown()
    return {"rate": rate, "cpu_us": cpu_us, "drained": drained, "live_expected": devices * live_k,
            "live_arrived": live_arrived, "publish_s": publish_s, "live_rate": live_rate,
            "live_n": len(delays), "p50_ms": delays[len(delays) // 2],
            "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))], "stats": stats,
            "source": source.stats() if source else {}, "clean": clean,
            "ts": gateway.graph.timeseries.stats(), "outbox": outbox}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-device", type=int, default=8,
                        help="reports per device in the backlog (devices x this must fit max_queued_messages)")
    parser.add_argument("--quick", action="store_true", help="1,000 devices (a smoke run)")
    parser.add_argument("--publish", nargs=5, type=float, help=argparse.SUPPRESS)  # the publisher process
    args = parser.parse_args()
    if args.publish:
        port, n, k, first_k, rate = args.publish
        publish(int(port), int(n), int(k), int(first_k), rate or None)
        return 0
    devices = 1_000 if args.quick else args.devices
    total = devices * args.per_device
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="citygate-bench-sensors-") as tmp, mosquitto(Path(tmp)) as (port, limits):
        print(f"mosquitto on 127.0.0.1:{port} ({', '.join(limits)}); {devices:,} devices x {args.per_device} "
              f"reports = {total:,} QoS 1 messages; load average {os.getloadavg()[0]:.2f}", flush=True)
        raw, raw_pub_s = asyncio.run(raw_rate(port, devices, args.per_device))
        print(f"raw drained at {raw:,.0f} msg/s (backlog published in {raw_pub_s:.1f} s)", flush=True)
        g = asyncio.run(gateway_run(write_config(Path(tmp), port, devices), port, devices, args.per_device))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = g["rate"] / raw
    src, ts = g["source"], g["ts"]
    rows = [
        ("bare aiomqtt subscriber (drain, no decoding)", f"{raw:,.0f} msg/s"),
        (f"gateway: decode + rules + time series (drain, {g['drained']:,} of {total:,} reached the rules)",
         f"{g['rate']:,.0f} msg/s"),
        ("gateway CPU per message (this process, all threads)", f"{g['cpu_us']:.0f} us"),
        ("gateway_vs_raw", f"{ratio:.3f}"),
        (f"publish -> rules at a steady {g['live_rate']:,.0f} msg/s ({g['live_n']:,} readings)",
         f"p50 {g['p50_ms']:.1f} ms, p99 {g['p99_ms']:.1f} ms ({g['live_arrived']:,} of {g['live_expected']:,})"),
        ("source: received / observations / undecodable / unknown / most held / reading paused",
         f"{src.get('received', 0):,} / {src.get('observations', 0):,} / {src.get('undecodable', 0)} / "
         f"{src.get('unknown_device', 0)} / {src.get('most_held', 0):,} / {src.get('pauses', 0):,} times"),
        ("time series: written / dropped", f"{ts.get('written', 0):,} / {ts.get('dropped', 0):,}"),
        ("cases filed (道路积水)", f"{sum(g['outbox'].values()):,}"),
        ("clean shutdown", str(g["clean"])),
        ("peak RSS (this process)", f"{rss_mb:.0f} MB"),
        ("load average (1/5/15 min, 2 shared cores)", " / ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"gateway_vs_raw={ratio:.3f} msgs_per_s={g['rate']:.0f} p99_ms={g['p99_ms']:.1f} rss_mb={rss_mb:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
