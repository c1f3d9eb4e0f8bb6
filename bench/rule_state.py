"""Event-loop stall caused by saving the sensor rules' state: `python bench/rule_state.py [--devices N]`.

The real gateway (`gateway.wiring` through `gateway.runtime.Gateway`) with N sensors and no network
source: 90 % water-level probes (a 15 / 27 / 40 cm ladder and a rise rule, health checks) and 10 %
tipping-bucket rain gauges (the national rainstorm ladder). Before the gateway starts, every device is
given `--history-min` minutes of one-a-minute readings through `SensorMonitor.process`, so the state
holds realistic series, rain buckets and health clocks (the state a gateway has after that long).

Then, for `--seconds`, readings arrive live through the router (`Router.on_observation`, as the
sources hand them over) at `--rate` per second (default: each device once a minute), in 10 ms slices,
while a heartbeat task sleeps 1 ms at a time and records how late it wakes up: the loop stall. The
run is done twice: once with `state_save_s` beyond the run (no periodic save: the baseline stall of
ingestion itself) and once with `--save-s` (default 5 s, so several saves land inside the run); the
difference is what saving the state costs the loop. A save of every device (the first after start,
when the warm-up made all of them dirty) is the worst case and is among them. The longest garbage
collections during each run are shown too: a full collection walks the whole state, and one that
falls into a run stalls the loop by itself, saving or not.

Prints a table; the LAST line is the machine-readable summary:
    devices=<n> save_stall_max_ms=<n> baseline_stall_max_ms=<n> saves=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

RAIN_EVERY = 10  # one device in ten is a rain gauge


def device_id(i: int) -> str:
    return f"{'rg' if i % RAIN_EVERY == 0 else 'wl'}-{i:05d}"


def write_config(workdir: Path, devices: int, save_s: float) -> Path:
    sensors = [{"id": device_id(i), "kind": "rain_gauge" if i % RAIN_EVERY == 0 else "water_level",
                "group": f"d{i % 16:02d}", "lon": 116.30 + (i % 100) * 0.002, "lat": 39.85 + (i // 100) * 0.002,
                "report_interval_s": 60} for i in range(devices)]
    config = {
        "site": "bench-rule-state", "gateway_id": "bench-gw", "timezone": "Asia/Shanghai",
        "data_dir": str(workdir / "data"), "web": {"enabled": False}, "timeseries": {"backend": "sqlite"},
        "sensors": {
            "devices": sensors, "state_save_s": save_s,
            "level_rules": [{"name": "underpass", "min_duration_s": 0, "case_from": "deep",
                             "levels": [{"name": "wet", "at": 15}, {"name": "deep", "at": 27},
                                        {"name": "impassable", "at": 40, "severity": "critical"}]}],
            "rise_rules": [{"name": "rising"}],
            "rain_rules": [{"name": "rainstorm"}],
        },
    }
    path = workdir / f"bench-rule-state-{save_s:g}.yaml"
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


def reading(i: int, k: int, t: datetime):
    """Device i's k-th report: dry kerbside noise (2-6 cm), or a little rain (0-0.4 mm a minute)."""
    from core.model import Reading

    if i % RAIN_EVERY == 0:
        return Reading(device_id(i), t, {"rain_mm": 0.2 * ((i + k) % 3)}, units={"rain_mm": "mm"})
    return Reading(device_id(i), t, {"level_cm": 2.0 + (i * 7 + k * 3) % 40 / 10}, units={"level_cm": "cm"})


async def heartbeat(stop: asyncio.Event, gaps_ms: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        gaps_ms.append((time.perf_counter() - t0) * 1000 - 1.0)


async def feed(router, devices: int, rate: float, seconds: float, first_k: int) -> int:
    """`rate` readings a second, round robin over the devices, dated now; returns how many."""
    sent, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        now = datetime.now(UTC)
        while sent < due:
            i = sent % devices
            router.on_observation(reading(i, first_k + sent // devices, now))
            sent += 1
        await asyncio.sleep(0.01)
    return sent


class GcPauses:
    """The longest garbage collection of each generation while active (gc.callbacks): a full one walks
    every container of the rules' state, stalling the loop whoever allocated last."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._start) * 1000
            self.longest[info["generation"]] = max(self.longest[info["generation"]], ms)


async def one_run(config: Path, devices: int, history_min: int, rate: float, seconds: float) -> dict:
    from gateway.deployment import load_deployment
    from gateway.runtime import Gateway

    gateway = Gateway(load_deployment(config))
    monitor = gateway.graph.router.sensors
    now = datetime.now(UTC)
    for k in range(history_min):  # the warm-up: every device's last history_min minutes
        t = now - timedelta(minutes=history_min - k)
        for i in range(devices):
            monitor.process(reading(i, k, t))
    store = gateway.component("rule-state")
    before = dict(store.stats())
    gc.collect()  # the warm-up's garbage is not the run's
    pauses = GcPauses()
    await gateway.start()
    stop, gaps = asyncio.Event(), []
    beat = asyncio.create_task(heartbeat(stop, gaps))
    gc.callbacks.append(pauses)
    sent = await feed(gateway.graph.router, devices, rate, seconds, history_min)
    gc.callbacks.remove(pauses)
    stop.set()
    await beat
    after = dict(store.stats())
    clean = await gateway.shutdown()
    gaps.sort()
    return {"sent": sent, "max_ms": gaps[-1], "p999_ms": gaps[int(len(gaps) * 0.999)], "beats": len(gaps),
            "saves": after["saves"] - before["saves"], "deferred": after["deferred"] - before["deferred"],
            "bytes": after["bytes"], "clean": clean, "stats": after, "gc_ms": pauses.longest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--history-min", type=int, default=60, help="minutes of readings per device before start")
    parser.add_argument("--rate", type=float, help="readings per second during the run (default: devices / 60)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--save-s", type=float, default=5.0, help="sensors.state_save_s of the measured run")
    args = parser.parse_args()
    rate = args.rate or args.devices / 60
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"{args.devices:,} devices ({args.devices // RAIN_EVERY:,} rain gauges), {args.history_min} min of "
          f"history each, {rate:,.0f} readings/s for {args.seconds:g} s; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    results = {}
    for label, save_s in (("baseline", args.seconds * 100), ("saving", args.save_s)):
        with tempfile.TemporaryDirectory(prefix="citygate-bench-rule-state-") as tmp:
            config = write_config(Path(tmp), args.devices, save_s)
            results[label] = asyncio.run(one_run(config, args.devices, args.history_min, rate, args.seconds))
    base, saving = results["baseline"], results["saving"]
    rows = [
        ("loop stall without periodic saves: max / p99.9", f"{base['max_ms']:.1f} / {base['p999_ms']:.1f} ms"),
        (f"loop stall saving every {args.save_s:g} s: max / p99.9", f"{saving['max_ms']:.1f} / {saving['p999_ms']:.1f} ms"),
        ("saves during the run (deferred)", f"{saving['saves']} ({saving['deferred']})"),
        ("last save size", f"{saving['bytes'] / 1e6:.1f} MB"),
        ("longest slice of a save on the loop", f"{saving['stats'].get('longest_slice_ms', 'n/a')} ms"),
        ("longest garbage collection gen 0 / 1 / 2 (baseline; saving)",
         " / ".join(f"{x:.0f}" for x in base["gc_ms"]) + "; " + " / ".join(f"{x:.0f}" for x in saving["gc_ms"])
         + " ms"),
        ("readings fed (baseline / saving)", f"{base['sent']:,} / {saving['sent']:,}"),
        ("clean shutdown", str(base["clean"] and saving["clean"])),
        ("load average (1/5/15 min, 2 shared cores)", " / ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"devices={args.devices} save_stall_max_ms={saving['max_ms']:.0f} "
          f"baseline_stall_max_ms={base['max_ms']:.0f} saves={saving['saves']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
