"""Limits of the case path under pressure: a full outbox refuses cases cleanly (no orphan evidence,
one alert, the gateway keeps serving) and a full disk loses no case once space returns."""

from __future__ import annotations

import asyncio
import errno
import textwrap
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from test_cases import GRID, parking
from test_cli import case
from test_runtime import DATA, TOKEN, wait_until

import gateway.cases as cases_module
from core.model import Alert, Evidence
from gateway.alerts import AlertBus
from gateway.cases import CaseDesk
from gateway.catalog import Catalog
from gateway.deployment import load_deployment
from gateway.geo import GridIndex
from gateway.outbox import Outbox
from gateway.runtime import Gateway

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=CST)


def make_bus(tmp_path: Path, max_cases: int = 100_000, **bus_kw) -> tuple[AlertBus, Outbox, list]:
    outbox = Outbox(tmp_path / "cases.sqlite3", max_cases=max_cases)
    desk = CaseDesk(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=outbox, evidence_dir=tmp_path / "ev",
                    state_path=tmp_path / "state.sqlite3", gateway_id="edge-07", timezone=CST)
    bus = AlertBus(desk, retry_first_s=0.02, retry_max_s=0.1, **bus_kw)
    heard: list = []
    bus.listeners.append(lambda alert, outcome: heard.append((alert, outcome)))
    return bus, outbox, heard


async def run_bus(bus: AlertBus, body) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(bus.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        bus.close()
        bus.desk.close()


async def test_a_full_outbox_refuses_cases_and_raises_one_alert(tmp_path):
    bus, outbox, heard = make_bus(tmp_path, max_cases=3)

    async def body():
        for track in range(10):
            bus.submit(parking(T0 + timedelta(seconds=track), track=track))
        await wait_until(lambda: bus.stats()["alerts"] == 10)

    await run_bus(bus, body)
    assert outbox.counts()["pending"] == 3
    assert bus.stats()["refused_full"] == 7 and bus.desk.stats["refused_full"] == 7
    full = [a for a, _ in heard if a.rule == "outbox_full"]
    assert len(full) == 1 and full[0].severity == "critical" and full[0].subject_id == "edge-07"
    folders = {p.name for p in (tmp_path / "ev").glob("*/*")}
    assert folders == {r.case_id for r in outbox.list()}  # refused cases left no evidence folder
    outbox.close()


async def test_a_full_disk_keeps_the_alerts_and_commits_them_when_space_returns(tmp_path, monkeypatch):
    """First the evidence write fails (ENOSPC), then SQLite's commit ("database or disk is full",
    provoked for real with max_page_count); no case is lost or filed twice once space returns."""
    bus, outbox, heard = make_bus(tmp_path)
    real_write = cases_module.write_durably
    disk = {"full": True}

    def write(path, data):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(cases_module, "write_durably", write)
    n = 30

    async def body():
        bus.submit(parking(T0, track=0))
        await wait_until(lambda: bus.stats()["disk_full_since"] is not None)
        for track in range(1, n):
            bus.submit(parking(T0 + timedelta(seconds=track), track=track))
        bus.submit(parking(T0 + timedelta(seconds=n), track=0, state="closed"))  # must not overtake its open
        await wait_until(lambda: bus.stats()["waiting_for_disk"] == n + 1)
        assert outbox.counts()["pending"] == 0 and not list((tmp_path / "ev").rglob("*.jpg"))
        # evidence can be written again, but the case store's database is full
        pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
        outbox._db.execute(f"PRAGMA max_page_count = {pages}")
        disk["full"] = False
        errors = bus.stats()["disk_full_errors"]
        await wait_until(lambda: bus.stats()["disk_full_errors"] >= errors + 3)  # the commit fails, again and again
        assert bus.stats()["waiting_for_disk"] > 0 and outbox.counts()["pending"] < n
        outbox._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
        await wait_until(lambda: bus.stats()["alerts"] == n + 1)

    await run_bus(bus, body)
    records = outbox.list(limit=100)
    assert len(records) == n and len({r.case["subject"]["track_id"] for r in records}) == n
    first = next(r for r in records if r.case["subject"]["track_id"] == 0)
    assert first.state == "cleared" and [e.kind for e in outbox.events(first.case_id)] == ["cleared"]
    assert {p.name for p in (tmp_path / "ev").glob("*/*")} == {r.case_id for r in records}  # no orphans
    assert bus.stats()["waiting_for_disk"] == 0 and bus.stats()["disk_full_since"] is None
    states = [a.state for a, _ in heard if a.rule == "disk_full"]
    assert states[0] == "open" and states[-1] == "closed" and len(states) <= 4  # once per spell, not per retry
    outbox.close()


async def test_beyond_both_bounds_an_alert_is_counted_as_lost(tmp_path):
    bus, outbox, _ = make_bus(tmp_path, max_alerts=2, max_waiting=3)
    for track in range(7):  # the bus is not running: they queue
        bus.submit(parking(T0, track=track))
    bus.submit(Alert(rule="x", subject_kind="camera", subject_id="c", state="open", time=T0,
                     source="video"))  # information: dropped first
    assert bus.pending == 5 and bus.stats()["lost"] == 2 and bus.stats()["dropped"] == 1
    bus.close()
    bus.desk.close()
    outbox.close()


@pytest.fixture
def full_site(tmp_path):
    from services import free_port

    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: full
        data_dir: data
        web: {{host: 127.0.0.1, port: 0, tokens: [{{name: test, role: viewer, token: {TOKEN}}}]}}
        cases: {{max_outbox: 10}}
        central: {{url: "http://127.0.0.1:{free_port()}/cases", backoff_initial_s: 60}}
        vehicles:
          fleet:
            vehicles:
              - {{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50}}
          replay:
            - {{file: {DATA / "tracks" / "mixer-01.csv"}, speed: 0}}
            - {{file: {DATA / "tracks" / "unknown-truck.csv"}, speed: 0}}
        """), encoding="utf-8")
    deployment = load_deployment(path)
    with Outbox(deployment.config.data_path / "cases.sqlite3", max_cases=10) as outbox:
        for i in range(10):  # the central platform is down: these stay pending and fill the outbox
            outbox.enqueue(case(f"full-{i}"))
    return deployment


async def test_gateway_with_a_full_outbox_refuses_new_cases_and_keeps_serving(full_site):
    gateway = Gateway(full_site)
    await gateway.start()
    try:
        await wait_until(lambda: gateway.desk.stats["refused_full"] >= 2)
        full = [a for a in gateway.bus.recent if a.rule == "outbox_full"]
        assert len(full) == 1 and full[0].severity == "critical"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.component('web').port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            status = (await client.get("/api/status")).json()
        assert status["outbox"]["pending"] == 10 and status["outbox"]["fill_ratio"] == 1.0
        assert status["alerts"]["refused_full"] >= 2 and status["tasks"]["alerts"]["state"] == "running"
        evidence = full_site.config.evidence_path
        assert not evidence.exists() or not any(evidence.rglob("*"))  # no orphan evidence folder
    finally:
        assert await gateway.shutdown()


def test_the_closing_evidence_lands_beside_the_opening_files_without_replacing_them(tmp_path):
    outbox = Outbox(tmp_path / "cases.sqlite3")
    desk = CaseDesk(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=outbox, evidence_dir=tmp_path / "ev",
                    state_path=tmp_path / "state.sqlite3", gateway_id="edge-07", timezone=CST)
    opened = desk.handle(parking(T0))
    desk.handle(replace(parking(T0 + timedelta(minutes=5), state="closed"),
                        evidence=(Evidence("snapshot.jpg", "image/jpeg", b"empty"),)))
    folder = Path(opened.case.evidence[0]["path"]).parent
    names = sorted(p.name for p in folder.iterdir())
    assert names[-1] == "snapshot.jpg" and names[0].startswith("cleared-") and len(names) == 2
    assert (folder / "snapshot.jpg").read_bytes() == b"\xff\xd8jpegbytes"
    desk.close()
    outbox.close()
