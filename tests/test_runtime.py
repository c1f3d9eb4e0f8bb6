"""The runtime in-process: replay feeds → detectors → case desk → local store, seen through the
status API, and a clean shutdown that leaves every case in the store."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import httpx

from gateway.deployment import load_deployment
from gateway.outbox import Outbox
from gateway.runtime import Gateway

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "configs" / "data"
TOKEN = "runtime-test-token-0123456789"


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: rt
        data_dir: data
        web: {{host: 127.0.0.1, port: 0, tokens: [{{name: test, role: viewer, token: {TOKEN}}}]}}
        vehicles:
          fleet:
            vehicles:
              - {{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50}}
          replay:
            - {{file: {DATA / "tracks" / "mixer-01.csv"}, speed: 0}}
            - {{file: {DATA / "tracks" / "unknown-truck.csv"}, speed: 0}}
        sensors:
          devices:
            - {{id: wl-underpass-01, kind: water_level, lon: 116.404, lat: 39.9105}}
            - {{id: wl-street-02, kind: water_level, lon: 116.4016, lat: 39.912}}
            - {{id: rain-01, kind: rain_gauge, profile: generic-rain-gauge-json, lon: 116.4, lat: 39.915}}
          level_rules:
            - {{name: underpass-flooding, warn_at: 20, critical_at: 35, category: road_flooding}}
          replay:
            - {{file: {DATA / "sensors" / "cloudburst-demo.csv"}, speed: 0}}
        """), encoding="utf-8")
    return path


async def wait_until(condition, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_replays_become_cases_visible_in_the_status_api(tmp_path):
    deployment = load_deployment(config_file(tmp_path))
    gateway = Gateway(deployment)
    await gateway.start()
    try:
        expected = {"overspeed", "unregistered_vehicle", "underpass-flooding"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.component('web').port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            async with asyncio.timeout(30):  # other cases may come first (outside_hours, by the wall clock)
                while True:
                    cases = (await client.get("/api/cases")).json()["cases"]
                    if expected <= {c["rule"] for c in cases}:
                        break
                    await asyncio.sleep(0.1)
            status = (await client.get("/api/status")).json()
        assert status["site"] == "rt"
        rules = status["rules"]
        assert rules["positions"] > 0 and rules["vehicles"]["rules"]["unregistered"] > 0
        assert rules["readings"] > 0
        assert status["tasks"]["alerts"]["state"] == "running"
        assert expected <= {c["rule"] for c in cases}
        assert all(c["status"] == "stored" for c in cases)  # no central platform configured
    finally:
        assert await gateway.shutdown()  # every stage ended within the deadline
    with Outbox(deployment.config.data_path / "cases.sqlite3") as outbox:
        assert outbox.counts()["stored"] >= 3


def rmc(when, lat: float, lon: float, knots: float) -> bytes:
    from gateway.protocols.nmea import checksum

    def dm(value: float, width: int) -> str:
        deg = int(abs(value))
        return f"{deg:0{width}d}{(abs(value) - deg) * 60:07.4f}"

    body = (f"GPRMC,{when:%H%M%S}.00,A,{dm(lat, 2)},{'N' if lat >= 0 else 'S'},{dm(lon, 3)},"
            f"{'E' if lon >= 0 else 'W'},{knots:.1f},0.0,{when:%d%m%y},,,A")
    return f"${body}*{checksum(body):02X}\r\n".encode()


async def test_nmea_receiver_over_tcp_feeds_the_fleet_rules(tmp_path):
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    sentences = [rmc(start + timedelta(seconds=5 * i), 39.90 + 0.0006 * i, 116.40, 43.0) for i in range(12)]
    sentences.insert(3, b"$GPRMC,garbage*00\r\n")  # noise from the receiver: counted, not fatal

    async def receiver(reader, writer):
        writer.write(b"".join(sentences))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(receiver, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: nmea
        data_dir: data
        web: {{enabled: false}}
        vehicles:
          nmea: [{{device: gnss-07, host: 127.0.0.1, port: {port}}}]
          fleet:
            vehicles: [{{id: sweep-07, type: sweeper, terminal: gnss-07, speed_limit_kmh: 40}}]
        """), encoding="utf-8")
    gateway = Gateway(load_deployment(path))
    await gateway.start()
    try:
        with Outbox(gateway.config.data_path / "cases.sqlite3") as outbox:  # (outside_hours too, by the clock)
            await wait_until(lambda: any(r.to_case().rule == "overspeed" for r in outbox.list()))
            (record,) = [r for r in outbox.list() if r.to_case().rule == "overspeed"]
        source = gateway.component("nmea:gnss-07")
        assert source.stats()["positions"] == 12 and source.stats()["decode_errors"] == 1
        case = record.to_case()
        assert case.rule == "overspeed" and case.subject["id"] == "sweep-07"
        assert case.facts["speed_kmh"] > 40  # 43 knots = 79.6 km/h
    finally:
        await gateway.shutdown()
        server.close()


async def test_outbox_at_80_percent_raises_a_critical_alert(tmp_path):
    from services import free_port
    from test_cli import case

    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: full
        data_dir: data
        web: {{enabled: false}}
        cases: {{max_outbox: 10}}
        central: {{url: "http://127.0.0.1:{free_port()}/cases", backoff_initial_s: 60}}
        vehicles: {{tick_s: 0.05}}
        """), encoding="utf-8")
    deployment = load_deployment(path)
    with Outbox(deployment.config.data_path / "cases.sqlite3", max_cases=10) as outbox:
        for i in range(8):  # the central platform is down: they stay pending
            outbox.enqueue(case(f"full-{i}"))
    gateway = Gateway(deployment)
    await gateway.start()
    try:
        def near_full():
            return [a for a in gateway.bus.recent if a.rule == "outbox_near_full"]
        await wait_until(near_full)
        (alert,) = near_full()
        assert alert.state == "open" and alert.severity == "critical"
        assert alert.facts["fill_ratio"] == 0.8
    finally:
        await gateway.shutdown()


async def test_simulated_terminal_drives_a_track_into_the_gateway(tmp_path):
    from services import free_port

    from gateway.simulator import load_track, simulate

    port = free_port()
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: sim
        data_dir: data
        web: {{enabled: false}}
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: {port}, accept_unknown: false}}
          fleet:
            vehicles: [{{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50}}]
        """), encoding="utf-8")
    gateway = Gateway(load_deployment(path))
    await gateway.start()
    try:
        track = load_track(DATA / "tracks" / "mixer-01.csv")
        said: list[str] = []
        acknowledged = await simulate("127.0.0.1", port, track, speed=0, say=said.append)
        assert acknowledged == len(track)
        assert said[0].startswith("register 013912340002: result 0, auth code ")
        assert said[1] == "authenticate: result 0"
        with Outbox(gateway.config.data_path / "cases.sqlite3") as outbox:  # (outside_hours too, by the clock)
            await wait_until(lambda: any(r.to_case().rule == "overspeed" for r in outbox.list()))
            assert len([r for r in outbox.list() if r.to_case().rule == "overspeed"]) == 1
        refused = await simulate("127.0.0.1", port, track, terminal="013999999999", speed=0, say=said.append)
        assert refused == 0 and said[-1] == "register 013999999999: result 2"  # not in the fleet
    finally:
        await gateway.shutdown()
