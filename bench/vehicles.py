"""Vehicle supervision benchmark: `python bench/vehicles.py [--quick]`.

1. decode + filters + all rules, one core, one process: a fleet driving through a city with 5,000
   forbidden zones, 300 sites, routes and sweeper roads; JT/T 808 0x0200 frames pre-encoded.
2. The same pipeline behind the JT/T 808 TCP server, with 1,000 concurrent simulated terminals
   (asyncio clients in this process, each authenticating and then sending 20 location frames).

Prints a table; the LAST line is the machine-readable summary:
    positions_per_s=<n> tcp_positions_per_s=<n> p99_us=<n> rss_mb=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import math
import random
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from core.model import Position  # noqa: E402
from detectors.vehicle.config import FleetConfig  # noqa: E402
from detectors.vehicle.monitor import FleetMonitor  # noqa: E402
from gateway.protocols import jt808  # noqa: E402
from gateway.sources.jt808_server import Jt808Server  # noqa: E402

LON0, LAT0 = 116.40, 39.90  # city centre
KY = 6371008.8 * math.pi / 180.0
KX = KY * math.cos(math.radians(LAT0))
CITY_M = 30_000.0  # the city is 30 km x 30 km
CST = timezone(timedelta(hours=8))
START = datetime(2026, 3, 2, 9, 0, tzinfo=CST)
WINDOWS = [["06:00-22:00"], ["22:00-06:00"], ["07:00-09:00", "17:00-19:00"]]
APPLIES = [["muck_truck"], ["muck_truck", "mixer"], ["garbage_truck"], ["mixer"]]
TYPES = ["muck_truck"] * 4 + ["sweeper"] * 2 + ["sprinkler", "mixer", "garbage_truck", "other"]


def at(x: float, y: float) -> list[float]:
    return [LON0 + x / KX, LAT0 + y / KY]


def terminal_of(i: int) -> str:
    return f"{13900000000 + i:012d}"


def build_city(rng: random.Random, vehicles: int, zones: int) -> tuple[FleetConfig, list[tuple]]:
    """Config plus each vehicle's straight drive (x, y, heading, speed km/h)."""
    half = CITY_M / 2
    zone_list = []
    for i in range(zones):
        cx, cy, r = rng.uniform(-half, half), rng.uniform(-half, half), rng.uniform(20, 60)
        n = rng.choice((4, 5, 6, 8))
        ring = [at(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
        # a mix of day bans, night bans and rush-hour bans, for muck trucks, mixers or garbage trucks
        zone_list.append({"id": f"z{i}", "name": f"zone {i}", "polygon": ring, "windows": WINDOWS[i % 3],
                          "applies_to": APPLIES[i % 4], "crs": "wgs84" if i % 5 else "gcj02"})
    sites = []
    for i in range(300):
        cx, cy = rng.uniform(-half, half), rng.uniform(-half, half)
        kind = ("construction", "dump", "depot")[i % 3]
        sites.append({"id": f"s{i}", "kind": kind,
                      "polygon": [at(cx - 100, cy - 100), at(cx + 100, cy - 100), at(cx + 100, cy + 100),
                                  at(cx - 100, cy + 100)]})
    fleet, routes, roads, drives = [], [], [], []
    for i in range(vehicles):
        vtype = TYPES[i % len(TYPES)]
        x, y = rng.uniform(-half * 0.8, half * 0.8), rng.uniform(-half * 0.8, half * 0.8)
        heading, speed = rng.uniform(0, 2 * math.pi), rng.uniform(15, 45)
        drives.append((x, y, heading, speed))
        end = (x + 20_000 * math.cos(heading), y + 20_000 * math.sin(heading))
        v = {"id": f"v{i}", "plate": f"京B{i:05d}", "type": vtype, "company": "Bench Co",
             "terminal": terminal_of(i), "speed_limit_kmh": 60, "working_hours": ["06:00-20:00"]}
        if vtype in ("muck_truck", "mixer"):
            routes.append({"id": f"r{i}", "line": [at(x, y), at(*end)], "width_m": 80})
            v["route"] = f"r{i}"
        if vtype == "sweeper":
            roads.append({"id": f"road{i}", "line": [at(x, y), at(*end)], "shifts": ["08:00-12:00"]})
            v["assigned_roads"] = [f"road{i}"]
        fleet.append(v)
    cfg = FleetConfig.model_validate({"vehicles": fleet, "zones": zone_list, "sites": sites, "routes": routes,
                                      "roads": roads})
    return cfg, drives


def make_frames(rng: random.Random, drives: list[tuple], fixes: int, every_s: float, first: int = 0) -> list[bytes]:
    """0x0200 frames, time-ordered across the fleet (every vehicle reports each `every_s`); drives[0] is
    vehicle `first`."""
    frames = []
    serial = 0
    for k in range(fixes):
        t = START + timedelta(seconds=k * every_s)
        for i, (x, y, heading, speed) in enumerate(drives, first):
            d = speed / 3.6 * every_s * k
            v = speed + rng.uniform(-3, 3)
            lon, lat = at(x + d * math.cos(heading), y + d * math.sin(heading))
            # muck trucks drive loaded; one vehicle in 50 unloads half-way (a dumping alert)
            loaded = TYPES[i % len(TYPES)] == "muck_truck" and (i % 50 or k < fixes // 2)
            p = Position(lat=lat, lon=lon, time=t, speed_kmh=v, course=math.degrees(heading) % 360,
                         status=3 | (3 << 8 if loaded else 0), device=terminal_of(i))
            frames.append(jt808.encode(jt808.MSG_LOCATION, terminal_of(i), serial, jt808.encode_location_body(p)))
            serial = (serial + 1) & 0xFFFF
    return frames


def bench_pipeline(cfg: FleetConfig, frames: list[bytes]) -> dict:
    """Throughput by wall clock and by this thread's CPU time (the two agree on an idle machine; on a
    shared one the CPU time is what one core delivers); per-position latency in CPU time.

    Latency has its own pass, with a fresh monitor (the same fixes again would be duplicates): its two
    clock reads per frame cost about a microsecond (thread_time_ns is a system call on some VMs), which
    the throughput pass must not count as pipeline work."""
    mon = FleetMonitor(cfg)
    decode, process = jt808.decode, mon.process
    alerts: list = []
    keep = alerts.extend
    gc.collect()
    t0, c0 = time.perf_counter(), time.thread_time()
    for frame in frames:
        for p in decode(frame).positions:
            keep(process(p))
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    by_rule = collections.Counter(f"{a.rule}:{a.state}" for a in alerts)
    verdicts = dict(mon.filter.counts)
    del mon, process

    process, clock = FleetMonitor(cfg).process, time.thread_time_ns
    lat = [0] * len(frames)
    gc.collect()
    for n, frame in enumerate(frames):
        a = clock()
        for p in decode(frame).positions:
            process(p)
        lat[n] = clock() - a

    c1 = time.thread_time()
    for frame in frames:  # the codec alone, to split the cost between decoding and the rules
        decode(frame)
    decode_us = (time.thread_time() - c1) / len(frames) * 1e6
    lat.sort()
    return {"positions": len(frames), "wall_s": wall, "cpu_s": cpu, "per_s": len(frames) / cpu,
            "wall_per_s": len(frames) / wall, "p50_us": lat[len(lat) // 2] / 1000,
            "p99_us": lat[int(len(lat) * 0.99)] / 1000, "max_us": lat[-1] / 1000, "alerts": len(alerts),
            "by_rule": by_rule, "filter": verdicts,
            "decode_us": decode_us, "rules_us": cpu / len(frames) * 1e6 - decode_us}


async def _terminal(port: int, terminal: str, frames: list[bytes], connect_gate: asyncio.Semaphore,
                    connected: list[int], go: asyncio.Event) -> int:
    """One simulated terminal: connect, authenticate, wait for the start, send its frames, read the replies."""
    async with connect_gate:  # the server's listen backlog is finite: connect in waves
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(jt808.encode(jt808.MSG_AUTH, terminal, 0, jt808.encode_auth_body("bench")))
        connected[0] += 1
        await go.wait()  # then all of them talk at once
        writer.write(b"".join(frames))
        await writer.drain()
        replies, buffer = 0, b""
        while replies < len(frames) + 1:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got, buffer = jt808.split_frames(buffer + chunk)
            replies += len(got)
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def bench_tcp(cfg: FleetConfig, drives: list[tuple], terminals: int, frames_each: int) -> dict:
    mon = FleetMonitor(cfg)
    rng = random.Random(7)
    per_terminal = {}
    for i in range(terminals):
        fr = make_frames(rng, [drives[i]], frames_each, 10.0, first=i)
        per_terminal[terminal_of(i)] = fr
    received = 0
    alerts = 0

    def on_position(p: Position) -> None:
        nonlocal received, alerts
        received += 1
        alerts += len(mon.process(p))

    # every simulated terminal connects from 127.0.0.1: lift the per-address cap meant for strangers
    server = Jt808Server("127.0.0.1", 0, {t: "bench" for t in per_terminal}, on_position, idle_timeout_s=60,
                         max_connections_per_address=terminals)
    await server.start()
    try:
        gate, connected, go = asyncio.Semaphore(50), [0], asyncio.Event()
        clients = asyncio.gather(*(_terminal(server.port, t, fr, gate, connected, go)
                                   for t, fr in per_terminal.items()))
        while connected[0] < terminals:  # every terminal connected and authenticated first
            await asyncio.sleep(0.01)
        while server.stats()["authenticated_connections"] < terminals:  # ... and its authentication handled
            if server.stats()["rejected"]:
                raise RuntimeError(f"the server refused terminals: {server.stats()}")
            await asyncio.sleep(0.01)
        peak = server.stats()["open_connections"]
        t0 = time.perf_counter()
        go.set()
        replies = await clients
        elapsed = time.perf_counter() - t0
    finally:
        await server.stop()
    total = terminals * frames_each
    return {"positions": received, "expected": total, "seconds": elapsed, "per_s": received / elapsed,
            "replies": sum(replies), "alerts": alerts, "decode_errors": server.stats()["decode_errors"],
            "peak_connections": peak}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vehicles", type=int, default=2000)
    ap.add_argument("--zones", type=int, default=5000)
    ap.add_argument("--fixes", type=int, default=60, help="fixes per vehicle in the single-core run")
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--frames-each", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a small run to check the script works")
    args = ap.parse_args()
    if args.quick:
        args.vehicles, args.zones, args.fixes, args.terminals, args.frames_each = 200, 500, 10, 50, 5
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.terminals + 100  # both ends of every connection live in this process
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))

    rng = random.Random(42)
    t = time.perf_counter()
    cfg, drives = build_city(rng, max(args.vehicles, args.terminals), args.zones)
    frames = make_frames(rng, drives[: args.vehicles], args.fixes, 10.0)
    setup_s = time.perf_counter() - t

    pipe = bench_pipeline(cfg, frames)
    tcp = asyncio.run(bench_tcp(cfg, drives, args.terminals, args.frames_each))
    rss = rss_mb()

    rows = [
        ("set-up (city, fleet, frames)", f"{setup_s:.1f} s"),
        ("zones / sites / routes / roads", f"{len(cfg.zones)} / {len(cfg.sites)} / {len(cfg.routes)} / {len(cfg.roads)}"),
        ("vehicles", f"{len(cfg.vehicles)}"),
        ("decode+filters+rules: positions", f"{pipe['positions']}"),
        ("decode+filters+rules: positions/s (1 core, CPU time)", f"{pipe['per_s']:,.0f}"),
        ("decode+filters+rules: positions/s (wall clock)", f"{pipe['wall_per_s']:,.0f}"),
        ("per-position CPU latency p50 / p99 / max",
         f"{pipe['p50_us']:.1f} / {pipe['p99_us']:.1f} / {pipe['max_us']:.0f} us"),
        ("mean CPU per position: decode / filters+rules",
         f"{pipe['decode_us']:.1f} / {pipe['rules_us']:.1f} us"),
        ("alerts raised (with evidence when opening)", f"{pipe['alerts']}"),
        ("alerts by rule:state", ", ".join(f"{k}={v}" for k, v in sorted(pipe["by_rule"].items()))),
        ("filter verdicts", ", ".join(f"{k}={v}" for k, v in sorted(pipe["filter"].items()))),
        ("TCP: terminals x frames", f"{args.terminals} x {args.frames_each}"),
        ("TCP: connections open at the start", f"{tcp['peak_connections']}"),
        ("TCP: positions received / expected", f"{tcp['positions']} / {tcp['expected']}"),
        ("TCP: positions/s (server + rules + clients, 1 process)", f"{tcp['per_s']:,.0f}"),
        ("TCP: replies received by terminals", f"{tcp['replies']}"),
        ("TCP: alerts raised", f"{tcp['alerts']}"),
        ("peak RSS", f"{rss:.0f} MB"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  value")
    print("-" * (w + 30))
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print(f"positions_per_s={pipe['per_s']:.0f} tcp_positions_per_s={tcp['per_s']:.0f} "
          f"p99_us={pipe['p99_us']:.0f} rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
