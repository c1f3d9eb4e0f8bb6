"""Benchmark of the durable outbox: cases from enqueue to acknowledged by a local HTTP receiver.

    python bench/outbox.py [--count 3000] [--rate 500] [--evidence-mode multipart]

The receiver (tests/central_receiver.py) runs in its own process, as the central platform would.
The gateway side runs as in production: a producer thread enqueues cases (each commit fsynced)
and calls `notify()`, the `CentralDelivery` worker posts them over one keep-alive aiohttp session.

Two phases, each on a fresh outbox:
- steady: `--count` cases offered at `--rate` cases/s (the goal's load) -> latency under load;
- burst:  `--count` cases enqueued as fast as possible -> the most cases/s the pipeline delivers.

Latency is enqueue -> delivered (the outbox's created_at -> delivered_at: acknowledged by the
receiver and recorded). The last line is the machine-readable summary
``cases_per_s=<burst throughput> p50_ms=<steady p50> p99_ms=<steady p99>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.model import Case
from gateway.outbox import Outbox
from gateway.sinks.central import CentralConfig, CentralDelivery

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    phase: str
    offered: str
    count: int
    seconds: float
    cases_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    duplicates: int
    gateway_cpu_ms: float  # CPU time of this process per case (all threads)
    receiver_cpu_ms: float  # CPU time of the receiver process per case


def make_case(i: int, prefix: str) -> Case:
    return Case(
        case_id=f"{prefix}-{i:06d}",
        source="video",
        category={"type": "event", "major": "04", "minor": "01", "name": "机动车乱停放"},
        rule="no-parking-east-gate",
        severity="warning",
        detected_at=datetime.now(UTC),
        location={"lon": 116.37, "lat": 39.91, "grid_code": "11010200100101", "address": "东门"},
        subject={"kind": "camera", "id": "cam-012", "track_id": i},
        evidence=(),
        facts={"dwell_s": 312, "object": "car", "confidence": 0.81},
    )


def start_receiver(log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "central_receiver.py"), "--port", "0", "--log", str(log)],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"receiver did not start: {line!r}")
    return proc, line.removeprefix("listening on ") + "/cases"


def produce(outbox: Outbox, delivery: CentralDelivery, count: int, rate: float | None, prefix: str) -> None:
    start = time.perf_counter()
    for i in range(count):
        if rate:
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        outbox.enqueue(make_case(i, prefix))
        delivery.notify()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(workdir: Path, url: str, mode: str, count: int, rate: float | None, name: str,
                    log: Path, receiver_pid: int) -> Result:
    outbox = Outbox(workdir / f"{name}.db", max_cases=count + 1)
    delivery = CentralDelivery(outbox, CentralConfig(url=url, evidence_mode=mode))
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    await asyncio.sleep(0)  # let run() start so notify() reaches it
    cpu0, rx_cpu0 = time.process_time(), process_cpu_s(receiver_pid)
    producer = threading.Thread(target=produce, args=(outbox, delivery, count, rate, name), daemon=True)
    producer.start()
    deadline = time.monotonic() + 50
    while delivery.stats()["delivered"] < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    cpu, rx_cpu = time.process_time() - cpu0, process_cpu_s(receiver_pid) - rx_cpu0
    stop.set()
    await task
    producer.join()
    outbox.close()
    with contextlib.closing(sqlite3.connect(workdir / f"{name}.db")) as db:
        rows = db.execute("SELECT created_at, delivered_at FROM cases WHERE status = 'delivered'").fetchall()
    if len(rows) < count:
        raise RuntimeError(f"{name}: only {len(rows)} of {count} cases delivered within 50 s")
    lat = sorted((d - c) * 1000 for c, d in rows)
    seconds = max(d for _, d in rows) - min(c for c, _ in rows)
    received = [x for x in log.read_text().split() if x.startswith(name + "-")]
    return Result(
        phase=name,
        offered=f"{rate:g}/s" if rate else "max",
        count=count,
        seconds=seconds,
        cases_per_s=count / seconds,
        p50_ms=lat[len(lat) // 2],
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        max_ms=lat[-1],
        duplicates=len(received) - len(set(received)),
        gateway_cpu_ms=cpu / count * 1000,
        receiver_cpu_ms=rx_cpu / count * 1000,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="outbox -> central platform delivery benchmark")
    ap.add_argument("--count", type=int, default=3000, help="cases per phase")
    ap.add_argument("--rate", type=float, default=500.0, help="offered load of the steady phase, cases/s")
    ap.add_argument("--evidence-mode", choices=("multipart", "base64"), default="multipart")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="citygate-bench-") as tmp:
        workdir = Path(tmp)
        log = workdir / "received.log"
        rx, url = start_receiver(log)
        try:
            steady = asyncio.run(run_phase(workdir, url, args.evidence_mode, args.count, args.rate, "steady", log,
                                         rx.pid))
            burst = asyncio.run(run_phase(workdir, url, args.evidence_mode, args.count, None, "burst", log, rx.pid))
        finally:
            rx.terminate()
            rx.wait(timeout=10)
    print(f"outbox -> HTTP receiver (separate process), evidence_mode={args.evidence_mode}, "
          f"synchronous=FULL, concurrency={CentralConfig().concurrency}, {os.cpu_count()} CPUs, "
          f"load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f}")
    print(f"{'phase':<8}{'offered':>10}{'cases':>8}{'seconds':>9}{'cases/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'dups':>6}{'gw cpu ms/case':>16}{'rx cpu ms/case':>16}")
    for r in (steady, burst):
        print(f"{r.phase:<8}{r.offered:>10}{r.count:>8}{r.seconds:>9.2f}{r.cases_per_s:>9.0f}{r.p50_ms:>9.1f}"
              f"{r.p99_ms:>9.1f}{r.max_ms:>9.1f}{r.duplicates:>6}{r.gateway_cpu_ms:>16.2f}{r.receiver_cpu_ms:>16.2f}")
    print(f"cases_per_s={burst.cases_per_s:.0f} p50_ms={steady.p50_ms:.1f} p99_ms={steady.p99_ms:.1f}")


if __name__ == "__main__":
    main()
