"""One terminal identity: every spelling of a terminal resolves to one vehicle, in the server, the
fleet rules and the runtime's other sources; a configured 2019 terminal is recognised as it is."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jt808_client as ref
import pytest
from jt808_client import Client
from services import free_port

from core.model import Position
from detectors.vehicle.config import FleetConfig
from detectors.vehicle.identity import UNREGISTERED_PREFIX, TerminalDirectory, terminal_key
from detectors.vehicle.monitor import FleetMonitor
from gateway.deployment import load_deployment
from gateway.outbox import Outbox
from gateway.protocols.tracks_csv import parse_positions_csv
from gateway.runtime import Gateway

REPO = Path(__file__).resolve().parent.parent
TRACK = REPO / "configs" / "data" / "tracks" / "mixer-01.csv"  # terminal 013912340002, 60 km/h stretches


def test_terminal_key_gives_every_spelling_one_form() -> None:
    same = ["013912340001", "13912340001", "00000000013912340001", " 013912340001 "]
    assert {terminal_key(t) for t in same} == {"13912340001"}
    assert terminal_key("AB3800138000") == terminal_key("ab3800138000") == "ab3800138000"  # non-BCD, as hex
    assert terminal_key("tracker-7") == "tracker-7" and terminal_key("000") == "0"


def test_directory_resolves_spellings_and_never_lets_a_stranger_pass_for_a_vehicle() -> None:
    d = TerminalDirectory({"013912340001": "muck-01", "tracker-7": "sweeper-2", "777": "13912349999"})
    assert d.vehicle("00000000013912340001") == "muck-01" and d.vehicle("13912340001") == "muck-01"
    assert d.vehicle("013900000000") is None
    assert d.device_id("013912340001") == "muck-01" and d.device_id("013900000000") == "13900000000"
    # a vehicle whose id looks like a terminal number: a stranger with that number stays a stranger
    assert d.device_id("013912349999") == UNREGISTERED_PREFIX + "13912349999"
    for device in ("muck-01", "13900000000", "013912340001", UNREGISTERED_PREFIX + "13912349999"):
        once = d.canonical(device)
        assert d.canonical(once) == once
    with pytest.raises(ValueError, match="also vehicle"):
        TerminalDirectory({"013912340001": "a", "13912340001": "b"})


def test_fleet_config_refuses_one_terminal_spelled_twice() -> None:
    with pytest.raises(ValueError, match="each vehicle terminal must be unique; repeated: 13912340001"):
        FleetConfig.model_validate({"vehicles": [{"id": "a", "type": "mixer", "terminal": "013912340001"},
                                                 {"id": "b", "type": "mixer", "terminal": "13912340001"}]})


def test_fleet_rules_see_one_vehicle_and_one_stranger_whatever_the_spelling() -> None:
    monitor = FleetMonitor(FleetConfig.model_validate({
        "vehicles": [{"id": "mixer-01", "type": "mixer", "terminal": "13912340002", "speed_limit_kmh": 50}],
        "zones": [{"id": "z", "applies_to": ["muck_truck"], "polygon": [[116.3, 39.8], [116.5, 39.8], [116.5, 40.0],
                                                                        [116.3, 40.0]]}],
    }))
    t0 = datetime(2026, 7, 15, 2, 0, tzinfo=UTC)
    alerts = []
    spellings = ["013912340002", "00000000013912340002", "mixer-01", "13912340002"] * 10
    for k, device in enumerate(spellings):
        alerts += monitor.process(Position(lat=39.9, lon=116.4 + k * 2e-4, time=t0 + timedelta(seconds=k),
                                           speed_kmh=70.0, device=device))
    for k, device in enumerate(["017000000000", "17000000000", "00000000017000000000"]):
        alerts += monitor.process(Position(lat=39.9, lon=116.4, time=t0 + timedelta(seconds=k), device=device))
    assert [(a.rule, a.subject_id) for a in alerts if a.state == "open"] == [
        ("overspeed", "mixer-01"), ("unregistered_vehicle", "17000000000")]


def site_config(tmp_path: Path, terminal: str, *, jt_port: int | None = None, replay: bool = False) -> Path:
    jt = f"jt808: {{enabled: true, host: 127.0.0.1, port: {jt_port}, accept_unknown: false}}" if jt_port else ""
    feed = f"replay: [{{file: {TRACK}, speed: 0}}]" if replay else ""
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: ident
        data_dir: data
        web: {{enabled: false}}
        vehicles:
          {jt}
          {feed}
          fleet:
            vehicles: [{{id: mixer-01, type: mixer, terminal: "{terminal}", speed_limit_kmh: 50,
                         working_hours: ["00:00-24:00"]}}]  # one case (overspeed) whatever the hour
        """), encoding="utf-8")
    return path


async def cases_of(gateway: Gateway) -> list:
    async with asyncio.timeout(30):
        while gateway.desk.stats["cases"] < 1:
            await asyncio.sleep(0.05)
    with Outbox(gateway.config.data_path / "cases.sqlite3") as outbox:
        return [r.to_case() for r in outbox.list()]


async def test_replayed_track_reaches_a_vehicle_configured_with_a_20_digit_terminal(tmp_path):
    gateway = Gateway(load_deployment(site_config(tmp_path, "00000000013912340002", replay=True)))
    await gateway.start()
    try:
        [case] = await cases_of(gateway)
        assert (case.rule, case.subject["id"]) == ("overspeed", "mixer-01")
        assert gateway.snapshot()["rules"]["vehicles"]["rules"]["unregistered"] == 0
    finally:
        assert await gateway.shutdown()


async def test_configured_terminal_reporting_with_a_2019_header_is_recognised(tmp_path):
    """The config has the 12-digit number; the terminal speaks JT/T 808-2019 with 20 BCD digits."""
    port = free_port()
    gateway = Gateway(load_deployment(site_config(tmp_path, "013912340002", jt_port=port)))
    await gateway.start()
    phone = "00000000013912340002"
    try:
        c = await Client.connect(port)
        await c.send(ref.frame(0x0100, phone, 1, ref.register_body(11, 1, "CG", "M1", "T1", 1, "A"), version=1))
        raw = (await c.reply())[1:-1].replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
        assert raw[17 + 2] == 0, "registered"
        code = raw[17 + 3 : -1]
        auth = bytes([len(code)]) + code + b"860000000000001" + b"V1".ljust(20, b"\0")
        await c.send(ref.frame(0x0102, phone, 2, auth, version=1))
        assert await c.reply() == ref.general_reply(phone, 1, 2, 0x0102, 0, version=1)
        track = parse_positions_csv(TRACK.read_text(encoding="utf-8"), str(TRACK))
        shift = datetime.now(UTC) - track[-1].time - timedelta(seconds=5)
        for serial, p in enumerate(track, 3):
            body = ref.location_body(p.lat, p.lon, p.time + shift, speed_tenths=round(p.speed_kmh * 10), status=2)
            await c.send(ref.frame(0x0200, phone, serial, body, version=1))
            assert await c.reply() == ref.general_reply(phone, serial - 1, serial, 0x0200, 0, version=1)
        await c.close()
        [case] = await cases_of(gateway)
        assert (case.rule, case.subject["id"]) == ("overspeed", "mixer-01")
        assert gateway.snapshot()["rules"]["vehicles"]["rules"]["unregistered"] == 0
        jt = gateway.snapshot()["jt808"]  # the registration is counted, shown and kept in the data dir
        assert (jt["registrations"], jt["registered_terminals"]) == (1, 1)
        assert (gateway.config.data_path / "jt808_registrations.json").exists()
    finally:
        assert await gateway.shutdown()
