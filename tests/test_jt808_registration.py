"""JT/T 808 registration over real TCP: a fleet terminal's auth code is handed out once, to a registration
that matches the fleet config; a stranger who knows a truck's number gets no code and nothing it sends
reaches the rules; an operator's reset (`citygate jt808 reset`) revokes the code and lets the terminal
register again; registrations are limited per connection and per address. Terminals are the independent
client (tests/jt808_client.py); positions go to a real FleetMonitor."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jt808_client as ref

from detectors.vehicle.identity import TerminalFacts
from gateway.cli import main
from gateway.sources.jt808_registrations import REGISTRATIONS_FILE
from gateway.sources.jt808_server import Jt808Server
from tests.test_jt808_security import CODE, FLEET, PHONE, VEHICLE, Rules, code_of, connected, location

KEY = "13800138000"  # PHONE's canonical key
OTHER = list(FLEET)[1]
FACTS = {PHONE: TerminalFacts(plate="京A·00001", terminal_id="T000001", manufacturer="CG"),
         OTHER: TerminalFacts(plate="京A00002")}
STRANGER = "127.0.0.2"  # another source address on loopback


def register(phone: str, serial: int = 1, *, maker: str = "CG", device: str = "T000001", color: int = 1,
             plate: str = "京A00001") -> bytes:
    return ref.frame(0x0100, phone, serial, ref.register_body(11, 1, maker, "M1", device, color, plate))


def authenticate(phone: str, code: str, serial: int = 2) -> bytes:
    return ref.frame(0x0102, phone, serial, code.encode())


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Jt808Server, Rules]]:
    rules = Rules()
    server = Jt808Server("127.0.0.1", 0, {t: c for t, (_, c) in FLEET.items()}, rules.position,
                         vehicles={t: v for t, (v, _) in FLEET.items()}, terminals=FACTS, **options)
    await server.start()
    try:
        yield server, rules
    finally:
        await server.stop()


async def registration(server: Jt808Server, frame: bytes, source: str = "127.0.0.1") -> tuple[int, str]:
    """(0x8100 result, code) of one registration on a connection of its own."""
    async with connected(server, source) as c:
        await c.send(frame)
        return ref.registered(await c.reply())


async def test_a_stranger_with_a_registered_terminals_number_gets_no_code_and_nothing_reaches_the_rules() -> None:
    async with running() as (server, rules):
        result, code = await registration(server, register(PHONE))
        assert result == 0 and code
        async with connected(server, STRANGER) as c:
            await c.send(register(PHONE))  # the same number, plate, maker and terminal id: all knowable
            assert await c.reply() == ref.register_reply(PHONE, 0, 1, 3)  # terminal already registered, no code
            for serial, guess in enumerate((CODE, "0" * 16), 2):  # the configured code no longer works either
                await c.send(authenticate(PHONE, guess, serial))
                assert await c.reply() == ref.general_reply(PHONE, serial - 1, serial, 0x0102, 1)
            for k in range(5):
                await c.send(location(PHONE, 10 + k, k))
                assert await c.reply() == ref.general_reply(PHONE, 3 + k, 10 + k, 0x0200, 1)
        async with connected(server) as truck:  # the real terminal, with the code it keeps
            await truck.send(authenticate(PHONE, code) + location(PHONE, 3, 0))
            assert await truck.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 0)
            assert await truck.reply() == ref.general_reply(PHONE, 1, 3, 0x0200, 0)
        stats = server.stats()
    assert [p.device for p in rules.positions] == [VEHICLE]
    assert [(a.rule, a.subject_id) for a in rules.alerts] == [("forbidden_zone", VEHICLE)]
    assert (stats["registrations"], stats["registrations_refused"], stats["registered_terminals"]) == (1, 1, 1)
    assert stats["auth_failures"] == 2 and stats["refused_unauthenticated"] == 5


async def test_a_registration_must_match_what_the_config_says_about_the_terminal() -> None:
    async with running() as (server, rules):
        refused = [
            (register(PHONE, device="T999999"), 4),  # not its terminal id: no such terminal
            (register(PHONE, maker="XX"), 4),  # not its maker
            (register(PHONE, plate="京A00002"), 1),  # another fleet vehicle's plate: that vehicle is taken
            (register(PHONE, plate="京B12345"), 2),  # no such vehicle
        ]
        for n, (frame, result) in enumerate(refused):
            assert await registration(server, frame, f"127.0.1.{n}") == (result, "")
        assert server.stats()["registrations_mismatched"] == 4 and server.stats()["registered_terminals"] == 0
        # the plate as the terminal writes it ("·" dropped); a VIN (plate colour 0) is not compared
        result, code = await registration(server, register(PHONE, plate="京a00001"))
        assert result == 0 and code
        assert (await registration(server, register(OTHER, color=0, plate="LSVAU2180N2183294")))[0] == 0
    assert rules.positions == []


async def test_an_operator_reset_revokes_the_code_and_lets_the_terminal_register_again(tmp_path: Path,
                                                                                        capsys) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent(f"""
        site: registrations
        data_dir: data
        web: {{enabled: false}}
        vehicles:
          fleet:
            vehicles: [{{id: {VEHICLE}, type: muck_truck, terminal: "{PHONE}", plate: "京A·00001"}}]
        """), encoding="utf-8")
    path = tmp_path / "data" / REGISTRATIONS_FILE
    path.parent.mkdir()
    async with running(registrations_path=path) as (server, rules):
        first, code = await registration(server, register(PHONE))
        assert first == 0 and code
        assert main(["jt808", "--config", str(config), "reset", VEHICLE, "--by", "ops", "--hours", "1"]) == 0
        assert f"terminal {PHONE} of {VEHICLE}: reset by ops" in capsys.readouterr().out
        async with connected(server) as c:  # the old code is revoked as soon as the gateway sees the terminal
            await c.send(authenticate(PHONE, code))
            assert await c.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 1)
        again, new = await registration(server, register(PHONE))
        assert again == 0 and new and new != code
        assert await registration(server, register(PHONE), STRANGER) == (3, "")  # once, again
        async with connected(server) as c:
            await c.send(authenticate(PHONE, new) + location(PHONE, 3))
            assert await c.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 0)
            assert await c.reply() == ref.general_reply(PHONE, 1, 3, 0x0200, 0)
        assert server.stats()["registration_resets"] == 1
    assert [p.device for p in rules.positions] == [VEHICLE]
    saved = path.read_text(encoding="utf-8")
    assert new not in saved and code not in saved  # only digests on disk
    async with running(registrations_path=path) as (server, rules):  # after a restart: still registered
        assert await registration(server, register(PHONE), STRANGER) == (3, "")
        async with connected(server) as c:
            await c.send(authenticate(PHONE, new))
            assert await c.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 0)
    assert main(["jt808", "--config", str(config), "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(f"{VEHICLE}\t{PHONE}\tregistered ") and "from 127.0.0.1" in listed


async def test_reset_refuses_what_is_not_a_fleet_terminal(tmp_path: Path, capsys) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("site: r\ndata_dir: data\nweb: {enabled: false}\n", encoding="utf-8")
    assert main(["jt808", "--config", str(config), "reset", "muck-99"]) == 1
    assert "neither a fleet vehicle nor its terminal" in capsys.readouterr().err
    assert not (tmp_path / "data" / "jt808_resets").exists()


async def test_registrations_are_limited_per_connection_and_per_address() -> None:
    async with running(registrations_per_connection=3, registrations_per_address_per_min=4) as (server, rules):
        async with connected(server) as c:  # numbers tried one after another on one connection
            await c.send(b"".join(register(f"0150{n:08d}", n) for n in range(4)))
            answered = [ref.registered(await c.reply())[0] for _ in range(3)]
            assert answered == [0, 2, 2]  # unknown terminals: one per connection gets a (flagged) code
            assert await c.closed_by_peer()  # the 4th closed it, unanswered
        assert (await registration(server, register(PHONE)))[0] == 0  # the address's 4th: still allowed
        async with connected(server) as c:  # the 5th within the minute: closed, unanswered
            await c.send(register(OTHER))
            assert await c.closed_by_peer()
        assert (await registration(server, register(OTHER, plate="京A00002"), STRANGER))[0] == 0  # its own budget
        assert server.stats()["registrations_rate_limited"] == 2
    assert rules.positions == []


async def test_a_terminal_set_up_with_its_configured_code_counts_as_registered() -> None:
    async with running() as (server, rules):
        async with connected(server) as truck:  # never registered here (set up by hand, or before this store)
            await truck.send(authenticate(PHONE, CODE))
            assert await truck.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 0)
        assert server.stats()["registered_terminals"] == 1
        assert await registration(server, register(PHONE), STRANGER) == (3, "")
        async with connected(server) as truck:  # and its code keeps working
            await truck.send(authenticate(PHONE, CODE))
            assert await truck.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 0)


async def test_a_terminal_that_deregisters_may_register_again() -> None:
    async with running() as (server, rules):
        _, code = await registration(server, register(PHONE))
        async with connected(server) as truck:
            await truck.send(authenticate(PHONE, code) + ref.frame(0x0003, PHONE, 3))
            assert await truck.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 0)
            assert await truck.reply() == ref.general_reply(PHONE, 1, 3, 0x0003, 0)
        async with connected(server) as truck:
            await truck.send(authenticate(PHONE, code))  # deregistered: its code is gone
            assert await truck.reply() == ref.general_reply(PHONE, 0, 2, 0x0102, 1)
        again, new = await registration(server, register(PHONE))
        assert again == 0 and new != code and code_of(ref.register_reply(PHONE, 0, 1, 0, new)) == new


async def test_the_simulator_registers_once_then_authenticates_with_its_code() -> None:
    from gateway.simulator import load_track, simulate

    track = load_track(Path(__file__).resolve().parent.parent / "configs" / "data" / "tracks" / "mixer-01.csv")[:3]
    async with running() as (server, rules):
        said: list[str] = []
        assert await simulate("127.0.0.1", server.port, track, terminal=OTHER, speed=0, say=said.append) == 3
        code = said[0].rsplit("auth code ", 1)[1]
        said.clear()
        assert await simulate("127.0.0.1", server.port, track, terminal=OTHER, speed=0, say=said.append) == 0
        assert said[0].endswith("result 3") and "citygate jt808 reset" in said[1]
        assert await simulate("127.0.0.1", server.port, track, terminal=OTHER, speed=0, auth_code=code,
                              say=said.append) == 3
    assert len(rules.positions) == 6
