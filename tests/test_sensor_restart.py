"""Rule state through a real gateway process killed with SIGKILL in the middle of a storm.

Flood: the gateway replays the storm (tests/storm.py) up to 11:00, with the underpass deep under
water and its 道路积水 case filed; it is killed with SIGKILL. While it is down the water recedes. The
restarted gateway only sees the readings from 13:30 on, all below the shallow level: the restored
episode clears and the case closes. Without the saved state the new gateway would never know of the
episode; it adopts it from the case desk's open case instead, and the case closes all the same (a kill
inside the window the saves leave: tests/test_sensor_reconcile.py).

Rain counter: the storm's rain from a tipping bucket's cumulative u16 counter (tests/counter_storm.py,
decoded by the MQTT source's intake), killed at 09:40 in the burst: the restarted gateway takes its
next count against the saved one, so every 1/3/6/12/24 h total and every rainstorm signal equals an
uninterrupted run's. Without the saved count (the control) the first count after the restart only
primes the counter and that minute's rain is lost.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from counter_storm import PROFILE, START_COUNT, uplinks, write_uplinks
from storm import GAUGE, PROBE, START, TIPPED, first_minute_reaching, storm, window_total, write_csv

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


def saved(data: Path, device: str) -> dict:
    """The device's row in the saved rule state (its rules' state and its counters), {} before any."""
    try:
        with contextlib.closing(sqlite3.connect(data / "sensor_rules.sqlite3", timeout=10)) as db:
            row = db.execute("SELECT state FROM devices WHERE device=?", (device,)).fetchone()
    except sqlite3.OperationalError:  # no file or no table yet
        return {}
    return json.loads(row[0]) if row else {}


def forget_state(data: Path) -> None:
    for name in ("sensor_rules.sqlite3", "sensor_rules.sqlite3-wal", "sensor_rules.sqlite3-shm"):
        (data / name).unlink(missing_ok=True)


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
        while saved(data, PROBE).get("rules", {}).get("last_time") != last:  # saved once its alerts are committed
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first gateway never saved the flood's state"
            time.sleep(0.05)
        episode = saved(data, PROBE)["rules"]["level"]["underpass"]
        assert episode["open"]["case"] and episode["open"]["level"] == 2  # impassable, a case filed
        assert [closed for _, closed in underpass_cases(data)] == [None]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    if not keep_state:
        forget_state(data)
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


def test_without_the_saved_state_the_case_desk_s_open_case_is_adopted_and_closes_all_the_same(tmp_path):
    """The state file lost (deleted, or set aside as unreadable): the restarted rules know no episode,
    but the case desk still holds the case open; its episode is adopted at start-up
    (gateway/sensor_cases.py) and clears at the same reading as with the saved state."""
    cases, start = run_storm(tmp_path, keep_state=False)
    assert [datetime.fromisoformat(closed) for _, closed in cases] == [start + timedelta(hours=13, minutes=44,
                                                                                          seconds=35)]


def test_an_unreadable_state_file_is_moved_aside_and_the_rules_start_empty(tmp_path):
    from gateway.deployment import load_deployment
    from gateway.wiring import build_graph

    config = site(tmp_path, tmp_path / "before.csv")
    write_csv(tmp_path / "before.csv", storm()[:10])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sensor_rules.sqlite3").write_bytes(b'{"version": 1, "level": [{"rule"' * 200)
    graph = build_graph(load_deployment(config))
    try:
        store = graph.find("rule-state")
        assert store.stats()["errors"] == 1 and not store.stats()["loaded"]
        assert (tmp_path / "data" / "sensor_rules.sqlite3.bad").exists()
        assert not (tmp_path / "data" / "sensor_rules.sqlite3").exists()
    finally:
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()


# -- a rain gauge's cumulative counter across a kill -9 ------------------------------------------------
COUNTER_CUT = START + timedelta(hours=9, minutes=40)  # in the burst, ten minutes before the red signal


def counter_site(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: storm
        data_dir: data
        web: {{enabled: false}}
        mqtt: {{host: 127.0.0.1, port: 1}}  # never connected: the uplinks are handed to its decoding
        mqtt_source: {{profiles: [{PROFILE}]}}
        sensors:
          devices:
            - {{id: {GAUGE}, kind: rain_gauge, profile: {PROFILE}, lon: 116.400, lat: 39.910}}
          rain_rules: [{{name: rainstorm}}]
          health: {{offline_after_s: 86400}}
          state_save_s: 0.2
        """), encoding="utf-8")
    return path


def counter_life(folder: Path, items) -> None:
    """One gateway life (tests/counter_storm.py) fed `items`, killed with SIGKILL once the state of
    its last uplink is saved (which is after its alerts are committed and recorded)."""
    config = counter_site(folder)
    write_uplinks(folder / "uplinks.jsonl", items)
    child = subprocess.Popen([sys.executable, str(REPO / "tests" / "counter_storm.py"), str(config),
                              str(folder / "uplinks.jsonl"), str(folder / "alerts.jsonl")],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        last = items[-1][0].timestamp()
        deadline = time.monotonic() + WAIT_S
        while saved(folder / "data", GAUGE).get("rules", {}).get("last_time") != last:
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the gateway never saved the gauge's state"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)


def rain_alerts(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "alerts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_rain_from_a_counter_gauge_is_exact_across_kill_9(tmp_path):
    items = uplinks()
    before = [u for u in items if u[0] < COUNTER_CUT]
    after = [u for u in items if u[0] >= COUNTER_CUT]
    tips_before = round(sum(TIPPED[:len(before)]) / 0.2)
    assert START_COUNT + tips_before < 65536 < START_COUNT + round(sum(TIPPED) / 0.2)  # it wraps after the restart

    counter_life(tmp_path / "whole", items)  # the uninterrupted run
    whole = rain_alerts(tmp_path / "whole")
    counter_life(tmp_path / "killed", before)
    assert saved(tmp_path / "killed" / "data", GAUGE)["counters"] == {
        "mqtt-source": {"rain_mm": START_COUNT + tips_before}}
    shutil.copytree(tmp_path / "killed", tmp_path / "control")
    counter_life(tmp_path / "killed", after)
    assert rain_alerts(tmp_path / "killed") == whole

    # and the uninterrupted run is right: each signal at the minute its window first holds it, with
    # every window total equal to the tips summed directly
    windows = {"1h": 60, "3h": 180, "6h": 360, "12h": 720, "24h": 1440}
    for a in whole:
        minute = storm_minute(a)
        assert a["totals"] == {k: round(window_total(minute, w), 2) for k, w in windows.items()}, a["time"]
    rises = {a["level"]: a["time"] for a in whole if a["change"] in ("opened", "escalated")}
    for level, window_min, mm in (("blue", 720, 50), ("yellow", 360, 50), ("orange", 180, 50), ("red", 180, 100)):
        at = START + timedelta(minutes=first_minute_reaching(window_min, mm), seconds=30)
        assert datetime.fromisoformat(rises[level]) == at, level
    assert [a["change"] for a in whole][-1] == "cleared"

    # the control: the same saved state without the counter's count loses the rain of the first minute
    # after the restart (it only primes the counter)
    with contextlib.closing(sqlite3.connect(tmp_path / "control" / "data" / "sensor_rules.sqlite3")) as db, db:
        db.execute("UPDATE devices SET state = json_remove(state, '$.counters')")
    counter_life(tmp_path / "control", after)
    control = rain_alerts(tmp_path / "control")
    red = next(a for a in whole if a["level"] == "red")
    red_control = next(a for a in control if a["level"] == "red")
    lost = TIPPED[len(before)]  # 2.6 mm
    assert lost > 0 and red_control["time"] > red["time"]  # the red signal comes late
    assert red_control["totals"]["24h"] == round(window_total(storm_minute(red_control), 1440) - lost, 2)


def storm_minute(alert: dict) -> int:
    return round((datetime.fromisoformat(alert["time"]) - START).total_seconds() - 30) // 60
