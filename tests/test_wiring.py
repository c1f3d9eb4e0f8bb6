"""The component graph: built from a deployment without starting anything; the import arrows
between the layers; a replay on its recorded clock stays quiet on wall-clock ticks."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import textwrap
import threading
from pathlib import Path

from gateway.deployment import load_deployment
from gateway.runtime import Gateway
from gateway.wiring import build_graph

REPO = Path(__file__).resolve().parent.parent
TRACKS = REPO / "configs" / "data" / "tracks"


def test_the_demo_graph_is_built_without_starting_anything(tmp_path):
    deployment = load_deployment(REPO / "configs" / "demo.yaml")
    config = deployment.config.model_copy(update={"data_dir": str(tmp_path / "data")})
    threads_before = threading.active_count()
    graph = build_graph(dataclasses.replace(deployment, config=config))
    try:
        names = {stage: [c.name for c in parts] for stage, parts in graph.stages.items()}
        assert names["alerts"] == ["alerts"]
        assert names["sinks"] == ["timeseries", "rule-state", "retention"]  # no central platform or MQTT broker
        assert names["web"] == ["web"]
        assert {"rules", "disk-space", "camera:cam-demo-01", "jt808"} <= set(names["sources"])
        assert sorted(n for n in names["sources"] if n.startswith("replay:")) == [
            "replay:sensors:cloudburst-demo.csv", "replay:vehicles:mixer-01.csv", "replay:vehicles:muck-01.csv",
            "replay:vehicles:sweep-01.csv", "replay:vehicles:unknown-truck.csv"]
        for component in graph.components:  # the one shape
            assert callable(component.run) and isinstance(component.stats(), dict), component.name
        assert graph.find("jt808").port == 6808 and graph.find("jt808")._server is None  # nothing listens
        assert threading.active_count() == threads_before  # no camera thread yet
        assert graph.outbox.path == tmp_path / "data" / "cases.sqlite3"
        assert graph.router.fleet.rules.offline.enabled and len(graph.router.vehicle_tags) == 3
    finally:
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_pure_layers_never_import_the_runtime():
    for folder, forbidden in (("detectors", {"gateway"}), ("core", {"gateway", "detectors"})):
        for path in (REPO / folder).rglob("*.py"):
            assert not (_imports(path) & forbidden), f"{path.relative_to(REPO)} imports {_imports(path) & forbidden}"


async def test_a_replay_on_its_recorded_clock_never_goes_offline_on_wall_clock_ticks(tmp_path):
    """A July recording replayed with its own times: the wall clock says its truck has been silent
    for months, but its clock is the recording's, so no offline alert opens, tick after tick."""
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: recorded
        data_dir: data
        web: {{enabled: false}}
        vehicles:
          tick_s: 0.05
          fleet:
            vehicles: [{{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50,
                         working_hours: ["00:00-24:00"]}}]
            rules: {{offline: {{min_minutes: 1}}}}
          replay:
            - {{file: {TRACKS / "mixer-01.csv"}, speed: 0, shift_to_now: false}}
        """), encoding="utf-8")
    gateway = Gateway(load_deployment(path))
    await gateway.start()
    try:
        async with asyncio.timeout(20):
            while gateway.snapshot()["rules"]["ticks"] < 20:
                await asyncio.sleep(0.05)
        rules = {a.rule for a in gateway.bus.recent}
        assert "overspeed" in rules  # the recording was judged ...
        assert "offline" not in rules  # ... but never against the wall clock
        assert gateway.snapshot()["rules"]["recorded_clock_devices"] == 1
    finally:
        assert await gateway.shutdown()


def test_the_mqtt_source_holds_at_most_max_held_messages(tmp_path):
    """`mqtt_source.max_held` is the source's high-water mark (the backlog bound: tests/test_mqtt_backlog.py)."""
    site = tmp_path / "site.yaml"
    site.write_text(textwrap.dedent(f"""
        site: held
        data_dir: {tmp_path / "data"}
        web: {{enabled: false}}
        mqtt: {{host: 127.0.0.1, port: 1883}}
        mqtt_source: {{profiles: [generic-water-level-json], max_held: 300}}
        """), encoding="utf-8")
    graph = build_graph(load_deployment(site))
    try:
        assert graph.find("mqtt-source").high_water == 300
    finally:
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()
