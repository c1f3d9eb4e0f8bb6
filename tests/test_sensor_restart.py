"""Rule state through a real gateway process killed with SIGKILL in the middle of a flood.

The gateway replays the storm (tests/storm.py) up to 11:00, with the underpass deep under water and
its 道路积水 case filed; it is killed with SIGKILL. While it is down the water recedes. The restarted
gateway only sees the readings from 13:30 on, all below the shallow level: the restored episode
clears and the case closes. Without the saved state (the control) the new gateway never knew of the
episode and the case stays open for ever.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from storm import GAUGE, PROBE, storm, write_csv

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 60


def site(tmp: Path, csv: Path) -> Path:
    path = tmp / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: storm
        data_dir: data
        web: {{enabled: false}}
        sensors:
          devices:
            - {{id: {GAUGE}, kind: rain_gauge, lon: 116.400, lat: 39.910}}
            - {{id: {PROBE}, kind: water_level, name: 测试下穿隧道, lon: 116.401, lat: 39.911}}
          level_rules:
            - name: underpass
              category: road_flooding
              case_from: deep
              min_duration_s: 120
              levels:
                - {{name: shallow, at: 15, severity: info}}
                - {{name: deep, at: 27, severity: warning}}
                - {{name: impassable, at: 40, severity: critical}}
          health: {{offline_after_s: 86400}}
          state_save_s: 0.2
          replay:
            - {{file: {csv.name}, speed: 0, shift_to_now: false}}
        """), encoding="utf-8")
    return path


def gateway(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(config), *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def state(data: Path) -> dict:
    try:
        return json.loads((data / "sensor_rules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def underpass_cases(data: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(data / "case_state.sqlite3") as db:
        return db.execute("SELECT case_id, closed_at FROM case_state WHERE alert_key LIKE 'underpass|%'").fetchall()


def run_storm(tmp: Path, *, keep_state: bool) -> tuple[list, datetime]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=16)  # the storm is recent, not live
    readings = storm(start)
    before = [r for r in readings if r.time < start + timedelta(hours=11)]
    after = [r for r in readings if start + timedelta(hours=13, minutes=30) <= r.time < start + timedelta(hours=15)]
    write_csv(tmp / "before.csv", before)
    write_csv(tmp / "after.csv", after)
    data = tmp / "data"

    first = gateway(site(tmp, tmp / "before.csv"))
    try:
        last = max(r.time for r in before if r.device == PROBE).timestamp()
        deadline = time.monotonic() + WAIT_S
        while state(data).get("last_time", {}).get(PROBE) != last:  # saved only once its alerts are committed
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first gateway never saved the flood's state"
            time.sleep(0.05)
        saved = state(data)
        (episode,) = [e for e in saved["level"] if e["device"] == PROBE]
        assert episode["open"]["case"] and episode["open"]["level"] == 2  # impassable, a case filed
        assert [closed for _, closed in underpass_cases(data)] == [None]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    if not keep_state:
        (data / "sensor_rules.json").unlink()
    second = gateway(site(tmp, tmp / "after.csv"), "--for", "4")
    _, err = second.communicate(timeout=WAIT_S)
    assert second.returncode == 0, err
    return underpass_cases(data), start


def test_a_flood_episode_survives_kill_9_and_its_case_closes(tmp_path):
    cases, start = run_storm(tmp_path, keep_state=True)
    assert len(cases) == 1
    closed_at = cases[0][1]
    assert closed_at is not None, "the clear was lost across the restart"
    # the clear of the storm (13:44:35 storm time), seen by the restarted gateway
    assert datetime.fromisoformat(closed_at) == start + timedelta(hours=13, minutes=44, seconds=35)
    with sqlite3.connect(tmp_path / "data" / "cases.sqlite3") as db:
        (case,) = [json.loads(row[0]) for row in db.execute("SELECT json FROM cases")]
    assert case["case_id"] == cases[0][0] and case["category"]["name"] == "道路积水"
    assert [e["name"] for e in case["evidence"]] == ["level-chart.png"]
    assert case["facts"]["level"] == "deep"


def test_without_the_saved_state_the_case_would_stay_open(tmp_path):
    cases, _ = run_storm(tmp_path, keep_state=False)
    assert [closed for _, closed in cases] == [None]


def test_an_unreadable_state_file_is_moved_aside_and_the_rules_start_empty(tmp_path):
    from gateway.deployment import load_deployment
    from gateway.wiring import build_graph

    config = site(tmp_path, tmp_path / "before.csv")
    write_csv(tmp_path / "before.csv", storm()[:10])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sensor_rules.json").write_text('{"version": 1, "level": [{"rule"', encoding="utf-8")
    graph = build_graph(load_deployment(config))
    try:
        store = graph.find("rule-state")
        assert store.stats()["errors"] == 1 and not store.stats()["loaded"]
        assert (tmp_path / "data" / "sensor_rules.json.bad").exists()
        assert not (tmp_path / "data" / "sensor_rules.json").exists()
    finally:
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()
