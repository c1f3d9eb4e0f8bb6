"""No sensor case left open for ever after a kill -9 (gateway/sensor_cases.py).

End to end: a real gateway replays the storm (tests/storm.py) with the underpass filling; its rule
state was last saved before the water reached the first level. The 道路积水 case is filed, and the
gateway is killed with SIGKILL from the local receiver (tests/central_receiver.py) the moment the case
arrives there: after the case is committed, before the prompt save that would record its episode (a
second at most, on the store's one-second beat). The restarted gateway's restored state knows no
episode; the water falls; the case still gets its ``cleared`` event at the receiver, and stays one case.

In a gateway graph: a restored episode whose case an operator withdrew meanwhile sends nothing more; one
whose case was cleared after the last save is dropped, so water that comes back reopens the case; an
open case of a device removed from the config is reported, not cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from central_receiver import CentralReceiver, Received
from storm import GAUGE, PROBE, storm, write_csv

from core.model import Reading
from gateway.deployment import load_deployment
from gateway.outbox import Outbox
from gateway.wiring import build_graph

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 90
ATTEMPTS = 3  # the prompt save beats the kill when the receiver is slower than the save's next beat (rare)


def site(folder: Path, csv: str, central_url: str, *, save_s: float) -> Path:
    path = folder / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: storm
        data_dir: data
        web: {{enabled: false}}
        central: {{url: '{central_url}', backoff_initial_s: 0.2, backoff_max_s: 1, poll_s: 0.5, timeout_s: 5}}
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
          state_save_s: {save_s}
          replay:
            - {{file: {csv}, speed: 0, shift_to_now: false}}
        """), encoding="utf-8")
    return path


def gateway(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "a", encoding="utf-8") as err:  # a file, not a pipe: a full pipe would stall the gateway
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(config), *extra], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err)


def saved_state(data: Path) -> dict:
    """The probe's rule state as last saved, {} before any save."""
    path = data / "sensor_rules.sqlite3"
    if not path.exists():  # (connecting would create it)
        return {}
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            row = db.execute("SELECT state FROM devices WHERE device=?", (PROBE,)).fetchone()
    except sqlite3.OperationalError:  # no table yet
        return {}
    return json.loads(row[0])["rules"] if row else {}


def saved_episode(data: Path) -> dict | None:
    """The probe's underpass state as last saved (since clocks and open episode)."""
    return saved_state(data).get("level", {}).get("underpass")


def underpass_cases(data: Path) -> list[tuple[str, str | None]]:
    with contextlib.closing(sqlite3.connect(data / "case_state.sqlite3")) as db:
        return db.execute("SELECT case_id, closed_at FROM case_state WHERE alert_key LIKE 'underpass|%'").fetchall()


def case_states(data: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(data / "cases.sqlite3")) as db:
        return db.execute("SELECT case_id, state FROM cases").fetchall()


def flood_killed_inside_the_window(folder: Path, rx: CentralReceiver, start: datetime) -> bool:
    """Lives 1 and 2 of the gateway: False when the prompt save beat the kill (try again)."""
    readings = storm(start)
    rising = [r for r in readings if r.time < start + timedelta(hours=9, minutes=33)]  # 15.0 cm, not yet open
    flood = [r for r in readings if start + timedelta(hours=9, minutes=33) <= r.time < start + timedelta(hours=11)]
    write_csv(folder / "rising.csv", rising)
    write_csv(folder / "flood.csv", flood)
    data = folder / "data"

    # life 1: the water rises to 15 cm, saved (the level's clock runs, no episode yet); a clean stop
    first = gateway(site(folder, "rising.csv", rx.url, save_s=0.2), folder / "gateway.log")
    last = max(r.time for r in rising if r.device == PROBE).timestamp()
    deadline = time.monotonic() + WAIT_S
    while saved_state(data).get("last_time") != last:
        assert first.poll() is None, (folder / "gateway.log").read_text()
        assert time.monotonic() < deadline, "the first gateway never saved the rising water"
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=WAIT_S) == 0, (folder / "gateway.log").read_text()
    before = saved_episode(data)
    assert before["open"] is None and before["since"][0] is not None

    # life 2: the flood; killed when its case reaches the platform
    second: list[subprocess.Popen] = []

    def kill_on_the_case(request: Received) -> None:
        if request.kind == "opened" and (request.case or {}).get("rule") == "underpass" and second:
            os.kill(second[0].pid, signal.SIGKILL)

    rx.on_request = kill_on_the_case
    second.append(gateway(site(folder, "flood.csv", rx.url, save_s=3600), folder / "gateway.log"))
    assert second[0].wait(timeout=WAIT_S) == -signal.SIGKILL, "the case never reached the receiver"
    rx.on_request = None
    (case_id, closed), = underpass_cases(data)
    assert closed is None and (case_id, "open") in case_states(data)
    return saved_episode(data)["open"] is None  # the save that would have held the case's episode never came


def test_a_case_filed_just_before_a_kill_9_is_cleared_when_the_water_falls(tmp_path):
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=16)  # the storm is recent, not live
    with CentralReceiver() as rx:
        for attempt in range(ATTEMPTS):
            folder = tmp_path / f"attempt-{attempt}"
            folder.mkdir()
            if flood_killed_inside_the_window(folder, rx, start):
                break
        else:
            raise AssertionError(f"the prompt save beat the kill {ATTEMPTS} times")
        (case_id, _), = underpass_cases(folder / "data")

        # life 3: the water has fallen meanwhile; the restored rules knew no episode
        falling = [r for r in storm(start)
                   if start + timedelta(hours=13, minutes=30) <= r.time < start + timedelta(hours=15)]
        write_csv(folder / "falling.csv", falling)
        third = gateway(site(folder, "falling.csv", rx.url, save_s=3600), folder / "gateway.log")
        try:
            deadline = time.monotonic() + WAIT_S
            while "cleared" not in [r.kind for r in rx.accepted_events(case_id)]:
                assert third.poll() is None, (folder / "gateway.log").read_text()
                assert time.monotonic() < deadline, "the case never got its cleared event"
                time.sleep(0.1)
        finally:
            third.send_signal(signal.SIGTERM)
            third.wait(timeout=WAIT_S)

    received = [r for r in rx.requests() if (r.case or {}).get("rule", "underpass") == "underpass"]
    assert {r.case_id for r in received} == {case_id}  # one case, its opened event repeated after the kill
    events = rx.accepted_events(case_id)
    kinds = [r.kind for r in events]
    assert kinds.count("cleared") == 1 and kinds[-1] == "cleared", kinds
    cleared = events[-1].case
    assert cleared["facts"]["reason"] == "receded"  # the water, not the offline check, ended it
    assert datetime.fromisoformat(cleared["at"]) == start + timedelta(hours=13, minutes=44, seconds=35)
    assert case_states(folder / "data") == [(case_id, "cleared")]
    assert "1 open case(s) adopted" in (folder / "gateway.log").read_text()


# -- in a gateway graph --------------------------------------------------------------------------------

def graph_site(tmp: Path, devices: tuple[str, ...] = ("wl-1", "wl-2")) -> Path:
    path = tmp / "site.yaml"
    listed = "\n".join(f"    - {{id: {d}, kind: water_level, lon: 116.40{i}, lat: 39.91}}" for i, d in enumerate(devices))
    path.write_text(textwrap.dedent("""
        site: reconcile
        data_dir: data
        web: {enabled: false}
        sensors:
          level_rules:
            - name: underpass
              category: road_flooding
              case_from: deep
              min_duration_s: 0
              levels:
                - {name: shallow, at: 15, severity: info}
                - {name: deep, at: 27, severity: warning}
          health: {offline_after_s: 86400}
          state_save_s: 3600
        """) + f"  devices:\n{listed}\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running(tmp: Path, devices: tuple[str, ...] = ("wl-1", "wl-2"), *, killed: bool = False):
    """A gateway graph built as a start builds it (rule state loaded, cases squared with it), its alert
    bus running; at the end a clean stop's final save, or none (`killed`: as a kill -9 leaves it)."""
    graph = build_graph(load_deployment(graph_site(tmp, devices)))
    store, stop = graph.find("rule-state"), asyncio.Event()
    bus = asyncio.create_task(graph.bus.run(stop))
    try:
        yield graph
    finally:
        stop.set()
        await bus
        if not killed:
            await store.run(stop)  # the shutdown save
        elif store._db is not None:
            store._db.close()  # what the kill left: the last save, nothing after it
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()


T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)


async def report(graph, device: str, minute: int, level_cm: float) -> None:
    """One reading, its alerts handled by the case desk before the next."""
    graph.router.on_observation(Reading(device, T0 + timedelta(minutes=minute), {"level_cm": level_cm},
                                        units={"level_cm": "cm"}))
    store = graph.find("rule-state")
    for _ in range(1000):
        await asyncio.sleep(0.01)
        if store.settled():
            return
    raise AssertionError("the case desk did not handle the alerts")


def events(graph, case_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.body.get("reason", "")) for e in graph.outbox.events(case_id)]


def sole_case(graph) -> str:
    (record,) = graph.outbox.list()
    return record.case_id


async def test_an_open_case_the_last_save_missed_is_adopted_and_cleared(tmp_path):
    async with running(tmp_path, killed=True) as graph:
        await report(graph, "wl-2", 0, 5.0)
        await graph.find("rule-state").save(None)  # the last save: dry
        await report(graph, "wl-2", 1, 30.0)  # deep: a case, its episode in no save
        case_id = sole_case(graph)
    async with running(tmp_path) as graph:
        assert graph.find("rule-state").stats()["adopted"] == 1
        await report(graph, "wl-2", 2, 31.0)  # still deep: the adopted episode goes on, nothing to say
        assert events(graph, case_id) == []
        await report(graph, "wl-2", 3, 3.0)  # receded
        assert events(graph, case_id) == [("cleared", "condition_ended")]
        assert graph.outbox.get(case_id).state == "cleared" and len(graph.outbox.list()) == 1


async def test_a_restored_episode_whose_case_was_cleared_after_the_save_is_dropped(tmp_path):
    """Without dropping it, the restored episode would still stand at deep: the water coming back
    would be part of it, and the cleared case would never hear of the new flood."""
    async with running(tmp_path, killed=True) as graph:
        await report(graph, "wl-1", 0, 30.0)  # deep: a case
        await graph.find("rule-state").save(None)  # the last save: the episode open
        await report(graph, "wl-1", 1, 3.0)  # cleared, in no save
        case_id = sole_case(graph)
    async with running(tmp_path) as graph:
        assert graph.find("rule-state").stats()["forgotten"] == 1
        await report(graph, "wl-1", 3, 30.0)  # the water is back within the cooldown
        assert events(graph, case_id) == [("cleared", "condition_ended"), ("updated", "reopened")]
        await report(graph, "wl-1", 4, 3.0)
        assert events(graph, case_id)[-1] == ("cleared", "condition_ended")


async def test_a_restored_episode_whose_case_was_withdrawn_sends_nothing_more(tmp_path):
    async with running(tmp_path) as graph:
        await report(graph, "wl-1", 0, 30.0)  # deep: a case
        case_id = sole_case(graph)
    with Outbox(tmp_path / "data" / "cases.sqlite3") as outbox:  # while the gateway is down, as the CLI does
        assert outbox.withdraw(case_id, "a blocked drain, not a flood", "cli:ops") is not None
    async with running(tmp_path) as graph:
        store = graph.find("rule-state")
        assert (store.stats()["adopted"], store.stats()["forgotten"]) == (0, 0)
        await report(graph, "wl-1", 5, 35.0)
        await report(graph, "wl-1", 10, 3.0)  # receded
        assert events(graph, case_id) == [("withdrawn", "a blocked drain, not a flood")]
        assert graph.outbox.get(case_id).state == "withdrawn" and len(graph.outbox.list()) == 1
        await report(graph, "wl-1", 11, 30.0)  # a new flood within the cooldown: only counted
        assert events(graph, case_id) == [("withdrawn", "a blocked drain, not a flood")] and len(graph.outbox.list()) == 1


async def test_an_open_case_of_a_device_gone_from_the_config_is_reported_not_cleared(tmp_path, caplog):
    async with running(tmp_path) as graph:
        await report(graph, "wl-2", 0, 30.0)
        case_id = sole_case(graph)
    async with running(tmp_path, devices=("wl-1",)) as graph:
        stats = graph.find("rule-state").stats()
        assert (stats["orphaned"], stats["orphaned_cases"]) == (1, [case_id])
        assert graph.outbox.get(case_id).state == "open" and events(graph, case_id) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and case_id in r.getMessage()]
    assert len(warnings) == 1 and "citygate cases withdraw" in warnings[0]
