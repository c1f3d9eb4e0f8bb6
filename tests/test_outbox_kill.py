"""At-least-once under kill -9: a worker process is SIGKILLed at random points, yet no case is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.outbox import Outbox

TESTS = Path(__file__).resolve().parent
N = 300


def received(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_no_case_is_lost_when_the_worker_is_killed(tmp_path):
    seed = int(os.environ.get("OUTBOX_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    log = tmp_path / "received.log"
    db = tmp_path / "outbox.db"
    rx = subprocess.Popen(
        [sys.executable, str(TESTS / "central_receiver.py"), "--port", "0", "--log", str(log)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        url = rx.stdout.readline().split()[-1] + "/cases"
        worker = [sys.executable, str(TESTS / "outbox_worker.py"), "--db", str(db), "--url", url, "--n", str(N)]
        kills = 0
        for round_ in range(5):
            proc = subprocess.Popen(worker)
            if round_ % 2:
                # Kill at a random instant, possibly while it is still starting or opening the DB.
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                # Kill after a random amount of progress: mid-enqueue, mid-request, mid-commit.
                target = len(received(log)) + rng.randint(1, 40)
                deadline = time.monotonic() + 30
                while proc.poll() is None and len(received(log)) < target and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.02))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=10)

        final = subprocess.run(worker, timeout=60, capture_output=True, text=True)
        assert final.returncode == 0, f"seed {seed}: final run failed:\n{final.stderr}"
    finally:
        rx.terminate()
        rx.wait(timeout=10)

    got = received(log)
    missing = {f"kill-{i:05d}" for i in range(N)} - set(got)
    assert not missing, f"seed {seed}: {len(missing)} cases lost, e.g. {sorted(missing)[:5]}"
    assert kills >= 3, f"seed {seed}: only {kills} kills hit a running worker"
    with Outbox(db) as ob:
        assert ob.counts() == {"pending": 0, "delivered": N, "dead": 0, "stored": 0, "held": 0, "rejected": 0}
