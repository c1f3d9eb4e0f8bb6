"""Case lifecycle end to end, across kill -9: a video case that clears (with a snapshot of the empty
zone), a sensor case that escalates and clears, and a case an operator withdraws all reach a local
HTTP receiver (tests/central_receiver.py, its own process) as events in order per case.

Run 1 files everything while the platform answers 503, and is killed with SIGKILL; the operator
withdraws a case with the CLI while the gateway is down; run 2 is killed in the middle of delivery;
run 3 delivers the rest. Nothing may be lost and no event may arrive before its predecessor.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from gateway.outbox import Outbox

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
CLIP = TESTS / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolov8n_int8.onnx"


def start_receiver(log: Path, port: int = 0, status: int = 200, delay_s: float = 0.0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(TESTS / "central_receiver.py"), "--port", str(port), "--log",
                             str(log), "--status", str(status), "--delay-s", str(delay_s)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    return proc, int(line.rsplit(":", 1)[1])


def write_config(path: Path, port: int, sources: bool) -> None:
    central = (f"central: {{url: 'http://127.0.0.1:{port}/cases', backoff_initial_s: 0.2, backoff_max_s: 1,"
               " poll_s: 0.5, timeout_s: 5}")
    text = f"""
        site: life
        data_dir: data
        web: {{enabled: false}}
        {central}
        """
    if sources:
        text += f"""
        video:
          detector: {{backend: onnxruntime, model: {MODEL}, threads: 1}}
          cameras:
            - name: cam-campus
              url: {CLIP}
              realtime: true
              detect_fps: 2
              lon: 116.392
              lat: 39.902
              motion: {{enabled: false}}
              zones:
                - {{name: road, polygon: [[10, 100], [470, 80], [470, 300], [10, 230]]}}
                - {{name: kerb, polygon: [[395, 25], [470, 25], [470, 80], [395, 80]]}}
              rules:
                - {{name: crowd-on-road, kind: count, zone: road, classes: [person], min_count: 5,
                   min_seconds: 1, clear_after_s: 1.5, category: crowding}}
                - {{name: no-parking-kerb, kind: dwell, zone: kerb, classes: [car, truck], min_seconds: 3,
                   category: illegal_parking}}
        sensors:
          devices:
            - {{id: wl-underpass-01, kind: water_level, lon: 116.404, lat: 39.9105}}
          level_rules:
            - {{name: underpass-flooding, warn_at: 20, critical_at: 35, category: road_flooding}}
          replay:
            - {{file: levels.csv, speed: 0}}
        """
    path.write_text(textwrap.dedent(text), encoding="utf-8")


def outbox_view(data: Path) -> dict[str, tuple[str, str, list]]:
    """case_id -> (rule, state, [(seq, kind, reason, status)]) as the gateway's store holds them."""
    if not (data / "cases.sqlite3").exists():
        return {}
    with Outbox(data / "cases.sqlite3") as ob:
        return {r.case_id: (r.case["rule"], r.state, [(e.seq, e.kind, e.body.get("reason"), e.status)
                                                      for e in ob.events(r.case_id)])
                for r in ob.list(limit=100)}


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"gateway exited with {proc.returncode} while waiting: {what}"
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.1)


def test_lifecycle_events_reach_the_platform_in_order_across_kill_9(tmp_path):
    (tmp_path / "levels.csv").write_text("time,device,level_cm\n" + "".join(
        f"2026-07-15T10:{i:02d}:00+08:00,wl-underpass-01,{level}\n"
        for i, level in enumerate([5, 25, 26, 40, 41, 42, 3, 2, 2])), encoding="utf-8")
    config, data, log = tmp_path / "site.yaml", tmp_path / "data", tmp_path / "received.log"
    cmd = [sys.executable, "-m", "gateway.cli", "run", str(config)]
    rx, port = start_receiver(log, status=503)  # the platform is down during run 1
    gateways: list[subprocess.Popen] = []
    try:
        write_config(config, port, sources=True)
        run1 = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateways.append(run1)

        def filed() -> bool:
            view = outbox_view(data)
            rules = {rule: (state, events) for rule, state, events in view.values()}
            sensor, crowd = rules.get("underpass-flooding"), rules.get("crowd-on-road")
            return (sensor is not None and sensor[0] == "cleared" and crowd is not None
                    and any(kind == "cleared" for _, kind, _, _ in crowd[1]) and "no-parking-kerb" in rules)
        wait_for(filed, 120, "the sensor case cleared, the crowd case cleared, the parked car filed", run1)
        run1.send_signal(signal.SIGKILL)  # kill -9: no shutdown, nothing flushed
        run1.wait(timeout=10)

        view = outbox_view(data)
        assert all(ev[3] == "pending" for _, _, events in view.values() for ev in events)  # nothing got through
        kerb = next(cid for cid, (rule, _, _) in view.items() if rule == "no-parking-kerb")
        withdraw = subprocess.run([sys.executable, "-m", "gateway.cli", "cases", "--config", str(config),
                                   "withdraw", kerb, "--reason", "a delivery van with a permit", "--by", "op-7"],
                                  cwd=REPO, capture_output=True, text=True, timeout=60)
        assert withdraw.returncode == 0, withdraw.stderr

        rx.terminate()
        rx.wait(timeout=10)
        rx, _ = start_receiver(log, port=port, delay_s=0.2)  # the platform is back (slow), same address
        write_config(config, port, sources=False)  # the feeds were done; only delivery is left
        run2 = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateways.append(run2)
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, 60, "some deliveries", run2)
        run2.send_signal(signal.SIGKILL)  # in the middle of delivering
        run2.wait(timeout=10)
        with Outbox(data / "cases.sqlite3") as ob:
            assert ob.counts()["pending"] + ob.event_counts()["pending"] > 0  # run 3 has work left

        run3 = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateways.append(run3)

        def all_delivered() -> bool:
            with Outbox(data / "cases.sqlite3") as ob:
                return ob.counts()["pending"] == 0 and ob.event_counts()["pending"] == 0
        wait_for(all_delivered, 60, "every case and event delivered", run3)
    finally:
        for proc in gateways:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        rx.terminate()
        rx.wait(timeout=10)

    view = outbox_view(data)
    arrivals: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # case -> first arrivals, in order
    seen = set()
    for line in log.read_text().splitlines():
        key, *rest = line.split()
        if key in seen:
            continue  # at least once: a repeat after a kill carries the same key
        seen.add(key)
        case_id, _, seq = key.partition(":")
        arrivals[case_id].append((int(seq or 1), rest[0] if rest else "opened", rest[1] if rest else ""))
    assert set(arrivals) == set(view)
    for case_id, (rule, _, events) in view.items():
        got = arrivals[case_id]
        # every event arrived, and none before its predecessor
        assert [seq for seq, _, _ in got] == list(range(1, len(events) + 2)), (rule, got)
        assert [kind for _, kind, _ in got] == ["opened"] + [kind for _, kind, _, _ in events], rule
        assert all(status == "delivered" for *_, status in events)

    by_rule = {rule: (cid, state, events) for cid, (rule, state, events) in view.items()}
    _, state, events = by_rule["underpass-flooding"]
    assert state == "cleared"
    assert [(kind, reason) for _, kind, reason, _ in events] == [("updated", "escalated"),
                                                                 ("cleared", "condition_ended")]
    crowd_id, _, events = by_rule["crowd-on-road"]
    cleared = [(seq, evidence) for seq, kind, evidence in arrivals[crowd_id] if kind == "cleared"]
    assert cleared and all(evidence == "evidence=1" for _, evidence in cleared)  # the empty-road snapshot
    _, state, events = view[kerb]
    assert state == "withdrawn" and events[-1][1:3] == ("withdrawn", "a delivery van with a permit")
