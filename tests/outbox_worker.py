"""Subprocess for the kill -9 test: enqueue N cases with fixed ids and deliver them all.

    python tests/outbox_worker.py --db PATH --url URL --n 300 [--prefix kill] [--enqueue-delay 0.002]

On a restart it re-enqueues the same ids (those already in the outbox are skipped) and delivers
whatever is still pending; it exits 0 once all N are delivered. Also home of `make_case`, the
case factory the outbox tests share.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from core.model import Case
from gateway.outbox import Outbox
from gateway.sinks.central import CentralConfig, CentralDelivery


def make_case(case_id: str, evidence: Sequence[dict[str, str]] = (), **facts: object) -> Case:
    return Case(
        case_id=case_id,
        source="video",
        category={"type": "event", "major": "04", "minor": "01", "name": "机动车乱停放"},
        rule="no-parking-east-gate",
        severity="warning",
        detected_at=datetime(2026, 11, 23, 9, 41, 7, tzinfo=UTC),
        location={"lon": 116.37, "lat": 39.91, "grid_code": "11010200100101"},
        subject={"kind": "camera", "id": "cam-012", "track_id": 57},
        evidence=tuple(evidence),
        facts={"dwell_s": 312, **facts},
    )


async def work(args: argparse.Namespace) -> None:
    outbox = Outbox(args.db)
    config = CentralConfig(url=args.url, timeout_s=5, backoff_initial_s=0.05, backoff_max_s=0.5)
    delivery = CentralDelivery(outbox, config)
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    for i in range(args.n):
        if outbox.enqueue(make_case(f"{args.prefix}-{i:05d}")):
            delivery.notify()
        await asyncio.sleep(args.enqueue_delay)
    while outbox.counts()["pending"]:
        await asyncio.sleep(0.02)
    stop.set()
    await task
    outbox.close()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--prefix", default="kill")
    ap.add_argument("--enqueue-delay", type=float, default=0.002)
    asyncio.run(work(ap.parse_args(argv)))
    print("all delivered", flush=True)


if __name__ == "__main__":
    sys.exit(main())
