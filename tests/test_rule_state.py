"""The sensor rules' state store (gateway/rule_state.py) in a gateway graph: a save writes only the
devices that changed, a restarted graph takes the state over exactly, a save of many devices gives
the event loop back between devices, a case's episode is saved promptly, not only every
`state_save_s`, and an older gateway's JSON state is imported once. (Kill -9 in the middle of a storm:
tests/test_sensor_restart.py; inside the window the saves leave: tests/test_sensor_reconcile.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from legacy_state import SENSORS, readings

import gateway.rule_state as rule_state
from core.model import Reading
from detectors.sensor.monitor import SensorMonitor
from gateway.deployment import load_deployment
from gateway.wiring import Graph, build_graph

DEVICES = 10
WAIT_S = 30


def site(tmp: Path, save_s: float = 3600) -> Path:
    path = tmp / "site.yaml"
    devices = "\n".join(f"    - {{id: wl-{i}, kind: water_level, lon: {116.40 + i * 0.01:.2f}, lat: 39.91}}"
                        for i in range(DEVICES))
    path.write_text(textwrap.dedent("""
        site: rule-state
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
        """) + f"  state_save_s: {save_s}\n  devices:\n{devices}\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def gateway_graph_at(config: Path):
    graph = build_graph(load_deployment(config))  # loads the saved state, as a start does
    try:
        yield graph
    finally:
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()


def gateway_graph(tmp: Path, save_s: float = 3600):
    return gateway_graph_at(site(tmp, save_s))


def report(graph: Graph, device: str, minute: int, level_cm: float) -> None:
    t = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=60 - minute)
    graph.router.on_observation(Reading(device, t, {"level_cm": level_cm}, units={"level_cm": "cm"}))


def saved_rows(tmp: Path) -> int:
    with contextlib.closing(sqlite3.connect(tmp / "data" / "sensor_rules.sqlite3")) as db:
        return db.execute("SELECT count(*) FROM devices").fetchone()[0]


async def test_a_save_writes_only_the_devices_that_changed_and_a_restart_takes_it_over(tmp_path, monkeypatch):
    monkeypatch.setattr(rule_state, "ROWS_PER_STATEMENT", 3)  # a save of 10 devices in four statements
    with gateway_graph(tmp_path) as graph:
        store, stop = graph.find("rule-state"), asyncio.Event()
        bus = asyncio.create_task(graph.bus.run(stop))
        for minute in range(5):
            for i in range(DEVICES):
                report(graph, f"wl-{i}", minute, 5.0 + minute + i)
        await store.save(None)
        assert store.stats()["devices"] == DEVICES
        for i in (2, 5, 7):
            report(graph, f"wl-{i}", 6, 9.0)
        await store.save(None)
        assert store.stats()["devices"] == 3 and store.stats()["pending"] == 0
        await store.save(None)
        assert store.stats()["devices"] == 0  # nothing changed, nothing written
        stop.set()
        await asyncio.gather(bus, store.run(stop))
        before = graph.router.sensors.export_state()
    assert saved_rows(tmp_path) == DEVICES
    with gateway_graph(tmp_path) as restarted:
        assert restarted.find("rule-state").stats()["loaded"]
        assert restarted.router.sensors.export_state() == before
        assert before["devices"]["wl-5"]["last_time"] == before["devices"]["wl-3"]["last_time"] + 120


async def test_a_save_gives_the_loop_back_between_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(rule_state, "SLICE_S", 0.0)  # one device a slice: the loop's turn after each
    with gateway_graph(tmp_path) as graph:
        store, monitor = graph.find("rule-state"), graph.router.sensors
        for i in range(DEVICES):
            report(graph, f"wl-{i}", 0, 5.0)
        turns, seen = 0, []

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        export = monitor.export_state

        def copied(devices=None):  # which turn of the other work each device's copy falls in
            if devices:
                seen.append(turns)
            return export(devices)

        monkeypatch.setattr(monitor, "export_state", copied)
        other = asyncio.create_task(other_work())
        await store.save(None)
        other.cancel()
        assert store.stats()["devices"] == DEVICES
        assert len(seen) == DEVICES and seen == sorted(set(seen))  # other work ran between every two devices
        stopped = asyncio.Event()
        stopped.set()
        await store.run(stopped)  # the final save, and the state file closed


async def test_an_episode_that_filed_a_case_is_saved_at_once_not_at_the_next_interval(tmp_path):
    """The window a kill -9 can hit between a case's alert and the saved episode is what a save takes,
    not `state_save_s`: a restart then knows the episode and closes its case when the water recedes."""
    with gateway_graph(tmp_path, save_s=3600) as graph:
        store, stop = graph.find("rule-state"), asyncio.Event()
        tasks = [asyncio.create_task(graph.bus.run(stop)), asyncio.create_task(store.run(stop))]
        for i in range(DEVICES):
            report(graph, f"wl-{i}", 0, 5.0)
        report(graph, "wl-4", 1, 30.0)  # deep: a 道路积水 case
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while graph.bus.stats()["cases"] < 1 or store.stats()["saves"] < 1:
            assert asyncio.get_running_loop().time() < deadline, "no prompt save after the case"
            await asyncio.sleep(0.05)
        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "sensor_rules.sqlite3")) as db:
            (text,) = db.execute("SELECT state FROM devices WHERE device='wl-4'").fetchone()
        episode = json.loads(text)["rules"]["level"]["underpass"]["open"]
        assert episode["level"] == 1 and episode["case"]
        # the prompt save wrote the case's device alone; the other changed ones wait for the interval
        assert saved_rows(tmp_path) == 1 and store.stats()["pending"] == DEVICES - 1
        stop.set()
        await asyncio.gather(*tasks)
    assert saved_rows(tmp_path) == DEVICES  # the shutdown save wrote them


async def test_a_malformed_device_row_sets_the_whole_state_aside_and_the_rules_start_empty(tmp_path):
    with gateway_graph(tmp_path) as graph:
        for i in range(DEVICES):
            report(graph, f"wl-{i}", 0, 5.0)
        stopped = asyncio.Event()
        stopped.set()
        await graph.find("rule-state").run(stopped)  # the shutdown save
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "sensor_rules.sqlite3")) as db, db:
        db.execute("""UPDATE devices SET state = '{"rules": {"last_time": "yesterday"}}' WHERE device='wl-7'""")
    with gateway_graph(tmp_path) as restarted:
        store = restarted.find("rule-state")
        assert store.stats()["errors"] == 1 and not store.stats()["loaded"]
        assert restarted.router.sensors.export_state()["devices"] == {}  # not the nine good ones either
        assert (tmp_path / "data" / "sensor_rules.sqlite3.bad").exists()


def test_the_state_file_of_an_older_gateway_is_imported_once(tmp_path):
    """`data_dir/sensor_rules.json` (version 1, tests/legacy_state.py says how it was made) becomes
    the SQLite store at the first start: the rules carry on exactly as if this gateway had seen the
    readings itself; the JSON is renamed aside and the next start reads SQLite."""
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"site": "upgrade", "data_dir": "data", "web": {"enabled": False},
                                      "sensors": SENSORS}), encoding="utf-8")
    (tmp_path / "data").mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "sensor_rules_v1.json", tmp_path / "data" / "sensor_rules.json")
    with gateway_graph_at(config) as graph:
        store = graph.find("rule-state")
        assert store.stats()["imported"] and store.stats()["loaded"] and store.stats()["errors"] == 0
        uninterrupted = SensorMonitor(graph.deployment.config.sensors)
        for reading in readings():
            uninterrupted.process(reading)
        imported = graph.router.sensors.export_state()
        assert imported == uninterrupted.export_state()
        assert imported["devices"]["wl-1"]["level"]["underpass"]["open"]["case"]  # the flood's episode
        assert {e["rule"]: e["level"] for e in graph.router.sensors.open_episodes()} == {
            "underpass": "deep", "rainstorm": "orange"}
    assert sorted(p.name for p in (tmp_path / "data").glob("sensor_rules.*")) == [
        "sensor_rules.json.imported", "sensor_rules.sqlite3"]
    with gateway_graph_at(config) as again:
        assert again.find("rule-state").stats()["loaded"] and not again.find("rule-state").stats()["imported"]
        assert again.router.sensors.export_state() == imported


def test_an_unreadable_state_file_of_an_older_gateway_is_set_aside(tmp_path):
    config = site(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sensor_rules.json").write_text('{"version": 1, "level": [{"rule"', encoding="utf-8")
    with gateway_graph_at(config) as graph:
        store = graph.find("rule-state")
        assert store.stats()["errors"] == 1 and not store.stats()["loaded"] and not store.stats()["imported"]
    assert sorted(p.name for p in (tmp_path / "data").glob("sensor_rules.*")) == ["sensor_rules.json.bad"]

