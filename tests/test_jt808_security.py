"""JT/T 808 security over real TCP: authentication per connection, unknown-terminal limits and
connection caps. Terminals are the independent client (tests/jt808_client.py); positions go to a
real FleetMonitor, so "nothing reaches the rules" is checked where the rules are."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jt808_client as ref
import pytest
from jt808_client import Client

from core.model import Alert, Position
from detectors.vehicle.config import FleetConfig
from detectors.vehicle.monitor import FleetMonitor
from gateway.sources.jt808_server import Jt808Server

FLEET = {"013800138000": ("muck-01", "CODE-1"), "013800138001": ("muck-02", "CODE-2"),
         "013800138002": ("muck-03", "CODE-3"), "013800138003": ("muck-04", "CODE-4")}
PHONE, (VEHICLE, CODE) = next(iter(FLEET.items()))
NOW = datetime.now(UTC).replace(microsecond=0)
ZONE = [[116.395, 39.905], [116.410, 39.905], [116.410, 39.920], [116.395, 39.920]]
INSIDE = (39.9115, 116.4030)  # lat, lon inside the forbidden zone


class Rules:
    """A fleet monitor with a forbidden zone for muck trucks, fed by the server."""

    def __init__(self) -> None:
        self.monitor = FleetMonitor(FleetConfig.model_validate({
            "vehicles": [{"id": v, "type": "muck_truck", "terminal": t} for t, (v, _) in FLEET.items()],
            "zones": [{"id": "centre", "applies_to": ["muck_truck"], "windows": ["00:00-24:00"], "polygon": ZONE}],
        }))
        self.positions: list[Position] = []
        self.alerts: list[Alert] = []

    def position(self, p: Position) -> None:
        self.positions.append(p)
        self.alerts += self.monitor.process(p)


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Jt808Server, Rules]]:
    rules = Rules()
    server = Jt808Server("127.0.0.1", 0, {t: c for t, (_, c) in FLEET.items()}, rules.position,
                         vehicles={t: v for t, (v, _) in FLEET.items()}, **options)
    await server.start()
    try:
        yield server, rules
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connected(server: Jt808Server, source: str = "127.0.0.1") -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    c = Client(reader, writer)
    try:
        yield c
    finally:
        await c.close()


def location(phone: str, serial: int, k: int = 0, **kw: Any) -> bytes:
    lat, lon = INSIDE
    return ref.frame(0x0200, phone, serial, ref.location_body(lat, lon + k * 1e-5, NOW + timedelta(seconds=k),
                                                              speed_tenths=150), **kw)


def register(phone: str, serial: int) -> bytes:
    return ref.frame(0x0100, phone, serial, ref.register_body(11, 1, "CG", "M1", "T000001", 1, "京A00001"))


def code_of(reply: bytes) -> str | None:
    """The auth code of a successful 0x8100 reply (None when refused)."""
    raw = reply[1:-1].replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
    body = raw[12:-1]
    return body[3:].decode() if body[2] == 0 else None


async def test_terminal_that_skips_authentication_is_refused_and_nothing_reaches_the_rules() -> None:
    async with running() as (server, rules), connected(server) as c:
        for k in range(40):  # a real fleet terminal's number, straight into the forbidden zone
            await c.send(location(PHONE, k, k))
            assert await c.reply() == ref.general_reply(PHONE, k, k, 0x0200, 1)
        batch = ref.batch_body([ref.location_body(*INSIDE, NOW)], kind=0)
        await c.send(ref.frame(0x0704, PHONE, 40, batch) + ref.frame(0x0002, PHONE, 41)
                     + ref.frame(0x0704, PHONE, 42, batch, packet=(2, 1)))
        assert [await c.reply() for _ in range(3)] == [ref.general_reply(PHONE, 40 + i, 40 + i, mid, 1)
                                                       for i, mid in enumerate((0x0704, 0x0002, 0x0704))]
    assert rules.positions == [] and rules.alerts == []
    assert server.stats()["refused_unauthenticated"] == 43 and server.stats()["positions"] == 0


async def test_wrong_auth_code_fails_and_the_connection_is_closed_after_a_few_tries() -> None:
    async with running(max_auth_failures=3) as (server, rules), connected(server) as c:
        for serial in range(3):
            await c.send(ref.frame(0x0102, PHONE, serial, b"guessed-" + bytes([0x30 + serial])))
            assert await c.reply() == ref.general_reply(PHONE, serial, serial, 0x0102, 1)
        assert await c.closed_by_peer()
    assert rules.positions == []
    assert server.stats()["auth_failures"] == 3 and server.stats()["closed_after_auth_failures"] == 1


async def test_registered_terminal_authenticates_on_a_second_connection() -> None:
    async with running() as (server, rules):
        async with connected(server) as first:
            await first.send(register(PHONE, 1))
            code = code_of(await first.reply())
        assert code is not None and code != CODE  # handed out at registration, not the configured one
        async with connected(server) as second:  # no registration here: the code is enough
            await second.send(ref.frame(0x0102, PHONE, 1, code.encode()))
            assert await second.reply() == ref.general_reply(PHONE, 0, 1, 0x0102, 0)
            for k in range(3):
                await second.send(location(PHONE, 2 + k, k))
                assert await second.reply() == ref.general_reply(PHONE, 1 + k, 2 + k, 0x0200, 0)
    assert [p.device for p in rules.positions] == [VEHICLE] * 3
    [alert] = rules.alerts
    assert (alert.rule, alert.subject_id, alert.state) == ("forbidden_zone", VEHICLE, "open")


async def test_a_connection_speaks_only_for_the_terminal_it_authenticated_as() -> None:
    other, (_, other_code) = list(FLEET.items())[1]
    async with running() as (server, rules), connected(server) as c:
        await c.send(ref.frame(0x0102, PHONE, 1, CODE.encode()))
        assert await c.reply() == ref.general_reply(PHONE, 0, 1, 0x0102, 0)
        await c.send(location(other, 2))
        assert await c.reply() == ref.general_reply(other, 1, 2, 0x0200, 1)
        await c.send(ref.frame(0x0102, other, 3, other_code.encode()))  # right code, wrong connection
        assert await c.reply() == ref.general_reply(other, 2, 3, 0x0102, 1)
        await c.send(location("00000000" + PHONE, 4, version=1))  # its own number in a 2019 header is fine
        assert await c.reply() == ref.general_reply("00000000" + PHONE, 3, 4, 0x0200, 0, version=1)
    assert [p.device for p in rules.positions] == [VEHICLE]


async def test_unknown_terminal_flood_is_rate_limited_per_connection_and_per_address() -> None:
    # the limits on registrations of any terminal are lifted here: this is about unknown ones
    async with running(accept_unknown=True, unknown_per_connection=1, unknown_per_address_per_min=3,
                       registrations_per_connection=10_000, registrations_per_address_per_min=10_000) as (server,
                                                                                                           rules):
        invented = [f"0170{i:08d}" for i in range(2000)]
        async with connected(server) as c:
            await c.send(b"".join(register(t, i) for i, t in enumerate(invented)))
            codes = {t: code_of(await c.reply()) for t in invented}
            accepted = {t: code for t, code in codes.items() if code is not None}
            assert list(accepted) == invented[:1]  # one unknown terminal per connection
            first = invented[0]
            await c.send(ref.frame(0x0102, first, 0, accepted[first].encode()) + location(first, 0))
            assert await c.reply() == ref.general_reply(first, 2000, 0, 0x0102, 0)
            assert await c.reply() == ref.general_reply(first, 2001, 0, 0x0200, 0)
            with contextlib.suppress(ConnectionError):  # every other number tries to authenticate and report
                for i, t in enumerate(invented[1:], 1):
                    await c.send(ref.frame(0x0102, t, i, b"guess") + location(t, i))
            assert await c.closed_by_peer()
        # more connections from the same address: the address's budget (3 a minute) is what is left
        results = []
        for n in range(6):
            async with connected(server) as c:
                await c.send(register(f"0180{n:08d}", 1))
                results.append(code_of(await c.reply()) is not None)
        assert 2 <= sum(results) <= 3  # 1 of the 3 went to the first connection (+1 if a token refilled)
        async with connected(server, source="127.0.0.2") as c:  # another address has its own budget
            await c.send(register("019000000001", 1))
            assert code_of(await c.reply()) is not None
    unregistered = [a for a in rules.alerts if a.rule == "unregistered_vehicle"]
    assert len(unregistered) == 1 and unregistered[0].subject_id == "17000000000"
    assert {p.device for p in rules.positions} == {"17000000000"}  # the one accepted, by its key
    assert server.stats()["unknown_rate_limited"] >= 1999 + 3 and server.stats()["closed_after_auth_failures"] == 1


async def test_connection_caps_make_room_by_closing_unauthenticated_connections_first() -> None:
    phones = list(FLEET)
    async with running(max_connections_per_address=3) as (server, rules), contextlib.AsyncExitStack() as stack:
            idle = [await stack.enter_async_context(connected(server)) for _ in range(3)]
            while server.stats()["open_connections"] < 3:
                await asyncio.sleep(0.01)
            good = []
            for k, phone in enumerate(phones[:3]):  # each new one pushes out the oldest idle one
                c = await stack.enter_async_context(connected(server))
                await c.send(ref.frame(0x0102, phone, 1, FLEET[phone][1].encode()))
                assert await c.reply() == ref.general_reply(phone, 0, 1, 0x0102, 0)
                assert await idle[k].closed_by_peer()
                good.append(c)
            assert server.stats()["evicted_unauthenticated"] == 3
            late = await stack.enter_async_context(connected(server))  # all 3 authenticated: refused
            assert await late.closed_by_peer()
            assert server.stats()["refused_connections"] == 1
            other = await stack.enter_async_context(connected(server, source="127.0.0.2"))
            await other.send(ref.frame(0x0102, phones[3], 1, FLEET[phones[3]][1].encode()))
            assert await other.reply() == ref.general_reply(phones[3], 0, 1, 0x0102, 0)
            for c, phone in zip(good + [other], phones, strict=True):  # every authenticated one still reports
                await c.send(location(phone, 2))
                assert await c.reply() == ref.general_reply(phone, 1, 2, 0x0200, 0)
    assert sorted(p.device for p in rules.positions) == ["muck-01", "muck-02", "muck-03", "muck-04"]


async def test_held_subpackages_are_capped_in_bytes() -> None:
    async with running(max_pending_packet_bytes=2048) as (server, rules), connected(server) as c:
        await c.send(ref.frame(0x0102, PHONE, 1, CODE.encode()))
        assert await c.reply() == ref.general_reply(PHONE, 0, 1, 0x0102, 0)
        with contextlib.suppress(ConnectionError):
            for i in range(1, 6):
                await c.send(ref.frame(0x0704, PHONE, 1 + i, b"\x00" * 1000, packet=(10, i)))
        assert await c.closed_by_peer()
    assert server.stats()["dropped_connections"] == 1


def test_refusals_are_counted_in_the_stats() -> None:
    server = Jt808Server("127.0.0.1", 0, {}, lambda p: None)
    expected = {"rejected", "refused_unauthenticated", "auth_failures", "closed_after_auth_failures",
                "unknown_rate_limited", "refused_connections", "evicted_unauthenticated", "auth_timeouts"}
    assert expected <= set(server.stats()) and all(server.stats()[k] == 0 for k in expected)
    assert 16 <= server.stats()["max_connections"] <= 10_000


@pytest.mark.parametrize("phone", ["013800138000", "13800138000", "00000000013800138000"])
async def test_any_spelling_of_a_fleet_terminal_registers(phone: str) -> None:
    async with running(accept_unknown=False) as (server, _), connected(server) as c:
        version = 1 if len(phone) == 20 else None
        await c.send(ref.frame(0x0100, phone, 1, ref.register_body(11, 1, "CG", "M1", "T1", 1, "A"), version=version))
        reply = await c.reply()
        result, code = ref.registered(reply)
        assert result == 0 and reply == ref.register_reply(phone, 0, 1, 0, code, version=version)
        assert server.registrations.entry("13800138000", 0.0) is not None  # one terminal, whatever the spelling


async def test_repeated_out_of_file_errors_on_accept_log_once_per_interval(caplog) -> None:
    import errno
    import logging

    from gateway.throttle import throttle_resource_errors

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    try:
        throttle_resource_errors(loop, interval_s=60)
        throttle_resource_errors(loop, interval_s=60)  # idempotent: one wrapper
        with caplog.at_level(logging.ERROR):
            for _ in range(1000):  # what asyncio reports when accept() fails under a socket flood
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
        lines = [r for r in caplog.records if "out of system resource" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None
    finally:
        loop.set_exception_handler(previous)
