"""JT/T 808 server over real TCP on loopback; expected replies come from the independent encoder."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jt808_client as ref
import pytest
from jt808_client import Client

from core.model import Position
from gateway.sources.jt808_server import Jt808Server

PHONE = "013800138000"
CODE = "AUTH-1"
VEHICLE = "truck-1"
T0 = datetime(2024, 6, 1, 1, 2, 3, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.positions: list[Position] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def position(self, p: Position) -> None:
        self.positions.append(p)

    async def event(self, kind: str, terminal: str, info: Any) -> None:  # a coroutine callback works too
        self.events.append((kind, terminal, dict(info)))


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Jt808Server, Recorder]]:
    rec = Recorder()
    server = Jt808Server("127.0.0.1", 0, {PHONE: CODE}, rec.position, rec.event, vehicles={PHONE: VEHICLE},
                         **options)
    await server.start()
    try:
        yield server, rec
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def client(server: Jt808Server) -> AsyncIterator[Client]:
    c = await Client.connect(server.port)
    try:
        yield c
    finally:
        await c.close()


def register_frame(phone: str, serial: int, plate: str = "沪A12345", **kw: Any) -> bytes:
    return ref.frame(
        0x0100, phone, serial, ref.register_body(31, 100, "ACME", "GT-1", "T000001", 1, plate), **kw
    )


async def authenticate(c: Client, phone: str = PHONE, code: str = CODE, serial: int = 0) -> None:
    """0x0102 with the code, answered by a success; the platform's reply serial is 0 (its first)."""
    await c.send(ref.frame(0x0102, phone, serial, code.encode()))
    assert await c.reply() == ref.general_reply(phone, 0, serial, 0x0102, 0)


async def test_register_auth_heartbeat_location_batch_unregister() -> None:
    async with running() as (server, rec), client(server) as c:
        assert server.port > 0
        await c.send(register_frame(PHONE, 1))
        raw = await c.reply()
        result, code = ref.registered(raw)  # a fresh code, not the configured one
        assert result == 0 and len(code) == 16 and code != CODE and raw == ref.register_reply(PHONE, 0, 1, 0, code)

        await c.send(ref.frame(0x0102, PHONE, 2, code.encode()))
        assert await c.reply() == ref.general_reply(PHONE, 1, 2, 0x0102, 0)

        await c.send(ref.frame(0x0002, PHONE, 3))
        assert await c.reply() == ref.general_reply(PHONE, 2, 3, 0x0002, 0)

        body = ref.location_body(31.2304, 121.4737, T0, speed_tenths=362, items=[(0x01, ref.dword(5000))])
        wire = ref.frame(0x0200, PHONE, 4, body)
        for i in range(len(wire)):  # one byte per TCP write: framing must survive any split
            await c.send(wire[i : i + 1])
        assert await c.reply() == ref.general_reply(PHONE, 3, 4, 0x0200, 0)
        [pos] = rec.positions
        assert (
            pos.device == VEHICLE and pos.lat == pytest.approx(31.2304) and pos.lon == pytest.approx(121.4737)
        )
        assert pos.speed_kmh == 36.2 and pos.time == T0 and pos.extras == {"mileage_km": 500.0}
        assert not pos.history

        items = [ref.location_body(31 + i / 1000, 121, T0 - timedelta(minutes=10 - i)) for i in range(3)]
        heartbeat = ref.frame(0x0002, PHONE, 6)
        await c.send(
            ref.frame(0x0704, PHONE, 5, ref.batch_body(items, kind=1)) + heartbeat
        )  # two frames, one write
        assert await c.reply() == ref.general_reply(PHONE, 4, 5, 0x0704, 0)
        assert await c.reply() == ref.general_reply(PHONE, 5, 6, 0x0002, 0)
        assert len(rec.positions) == 4 and all(p.history for p in rec.positions[1:])
        assert rec.positions[1].time == T0 - timedelta(minutes=10)

        await c.send(ref.frame(0x0102, PHONE, 7, b"wrong"))
        assert await c.reply() == ref.general_reply(PHONE, 6, 7, 0x0102, 1)

        await c.send(ref.frame(0x0003, PHONE, 8))
        assert await c.reply() == ref.general_reply(PHONE, 7, 8, 0x0003, 0)

    assert [e[0] for e in rec.events] == ["registered", "auth_failed", "unregistered"]
    assert rec.events[0][2]["plate"] == "沪A12345"
    assert (
        server.stats()["positions"] == 4 and server.stats()["frames"] == 8 and server.stats()["decode_errors"] == 0
    )


async def test_configured_2019_terminal_is_recognised_and_gets_2019_replies() -> None:
    phone = "00000000013800138000"  # 20 BCD digits on the wire; the fleet config has PHONE's 12
    async with running(accept_unknown=False) as (server, rec), client(server) as c:
        auth = bytes([len(CODE)]) + CODE.encode() + b"860000000000001" + b"V1".ljust(20, b"\0")
        await c.send(ref.frame(0x0102, phone, 0x7E7D, auth, version=1))
        assert await c.reply() == ref.general_reply(phone, 0, 0x7E7D, 0x0102, 0, version=1)
        await c.send(ref.frame(0x0200, phone, 0x7E, ref.location_body(-1.5, -2.5, T0), version=1))
        assert await c.reply() == ref.general_reply(phone, 1, 0x7E, 0x0200, 0, version=1)
    [pos] = rec.positions
    assert (pos.device, pos.lat, pos.lon) == (VEHICLE, -1.5, -2.5)


async def test_subpackaged_batch_is_reassembled() -> None:
    items = [ref.location_body(30, 120 + i / 100, T0 + timedelta(seconds=i)) for i in range(30)]
    body = ref.batch_body(items, kind=0)
    chunks = [body[i : i + 400] for i in range(0, len(body), 400)]
    assert len(chunks) == 3
    async with running() as (server, rec), client(server) as c:
        await authenticate(c)
        for i in (2, 0, 1):  # out of order
            await c.send(ref.frame(0x0704, PHONE, 10 + i, chunks[i], packet=(3, i + 1)))
        replies = [await c.reply() for _ in range(3)]
        assert replies == [ref.general_reply(PHONE, n, 10 + i, 0x0704, 0) for n, i in enumerate((2, 0, 1), 1)]
        await c.send(ref.frame(0x0002, PHONE, 20))
        assert await c.reply() == ref.general_reply(PHONE, 4, 20, 0x0002, 0)  # no extra reply for the join
    assert [p.lon for p in rec.positions] == [pytest.approx(120 + i / 100) for i in range(30)]


async def test_garbage_client_is_dropped_while_good_client_keeps_working() -> None:
    async with running(max_garbage_frames=3) as (server, rec), client(server) as good:
        await authenticate(good)

        async with client(server) as bad:
            await bad.send(b"\x7e\x01\x02\x03\x7e" * 3)  # three frames with wrong checksums
            assert await bad.closed_by_peer()
        async with client(server) as flood:  # bytes that never form a frame
            with contextlib.suppress(ConnectionError):
                for _ in range(10):
                    await flood.send(b"\x00" * 4096)
            assert await flood.closed_by_peer()
        async with client(server) as huge:  # a frame start that never ends
            with contextlib.suppress(ConnectionError):
                await huge.send(b"\x7e" + b"\x01" * 5000)
            assert await huge.closed_by_peer()

        await good.send(ref.frame(0x0200, PHONE, 2, ref.location_body(22.5, 114.1, T0)))
        assert await good.reply() == ref.general_reply(PHONE, 1, 2, 0x0200, 0)
    assert [p.lat for p in rec.positions] == [22.5]
    assert server.stats()["dropped_connections"] == 3 and server.stats()["decode_errors"] == 3
    assert server.stats()["connections"] == 4


async def test_one_bad_frame_is_forgiven() -> None:
    async with running() as (server, rec), client(server) as c:
        await authenticate(c)
        await c.send(b"\x7e\x01\x02\x03\x7e" + ref.frame(0x0002, PHONE, 1))
        assert await c.reply() == ref.general_reply(PHONE, 1, 1, 0x0002, 0)
    assert server.stats()["decode_errors"] == 1 and server.stats()["dropped_connections"] == 0


async def test_unknown_terminal_refused_when_not_accepted() -> None:
    stranger = "013999999999"
    async with running(accept_unknown=False) as (server, rec), client(server) as c:
        await c.send(register_frame(stranger, 1))
        assert await c.reply() == ref.register_reply(stranger, 0, 1, 2)  # 2: no such vehicle, no code
        await c.send(ref.frame(0x0102, stranger, 2, b"guess"))
        assert await c.reply() == ref.general_reply(stranger, 1, 2, 0x0102, 1)
        await c.send(ref.frame(0x0200, stranger, 3, ref.location_body(1, 1, T0)))
        assert await c.reply() == ref.general_reply(stranger, 2, 3, 0x0200, 1)
    assert rec.positions == [] and server.stats()["rejected"] == 3


async def test_unknown_terminal_accepted_and_reported() -> None:
    stranger = "013999999999"
    async with running() as (server, rec), client(server) as c:
        await c.send(register_frame(stranger, 1, plate="京C00001"))
        raw = await c.reply()
        # the generated auth code follows header (12 bytes), reply serial and result; it is text
        assert raw[13:16] == ref.word(1) + b"\x00"
        code = re.match(rb"[0-9A-Za-z_-]+", raw[16:]).group().decode()
        assert len(code) >= 8 and raw == ref.register_reply(stranger, 0, 1, 0, code)
        await c.send(ref.frame(0x0102, stranger, 2, code.encode()))
        assert await c.reply() == ref.general_reply(stranger, 1, 2, 0x0102, 0)
        await c.send(ref.frame(0x0200, stranger, 3, ref.location_body(1, 1, T0)))
        assert await c.reply() == ref.general_reply(stranger, 2, 3, 0x0200, 0)
    assert [p.device for p in rec.positions] == ["13999999999"]  # its key: flagged, never a vehicle id
    kinds = [(kind, terminal) for kind, terminal, _ in rec.events]
    assert kinds == [("unknown_terminal", stranger), ("registered", stranger)]
    assert rec.events[0][2]["plate"] == "京C00001"
    assert server.stats()["unknown_terminals"] == 1


async def test_idle_and_unauthenticated_connections_are_closed() -> None:
    async with running(idle_timeout_s=0.3, auth_timeout_s=0.3) as (server, rec):
        async with client(server) as silent:
            assert await silent.closed_by_peer(timeout=10)
        async with client(server) as c:
            await authenticate(c)
            assert await c.closed_by_peer(timeout=10)
    assert server.stats()["auth_timeouts"] == 1 and server.stats()["idle_timeouts"] == 1


async def test_failing_consumer_does_not_cost_the_connection() -> None:
    def explode(_: Position) -> None:
        raise RuntimeError("consumer bug")

    server = Jt808Server("127.0.0.1", 0, {PHONE: CODE}, explode)
    await server.start()
    try:
        async with client(server) as c:
            await authenticate(c)
            for serial in (1, 2):
                await c.send(ref.frame(0x0200, PHONE, serial, ref.location_body(1, 1, T0)))
                assert await c.reply() == ref.general_reply(PHONE, serial, serial, 0x0200, 0)
    finally:
        await server.stop()
    assert server.stats()["callback_errors"] == 2 and server.stats()["positions"] == 2


async def test_stop_closes_open_connections() -> None:
    async with running() as (server, _), client(server) as c:
        await authenticate(c)
        await c.send(ref.frame(0x0002, PHONE, 1))
        assert await c.reply() == ref.general_reply(PHONE, 1, 1, 0x0002, 0)
        await asyncio.wait_for(server.stop(), 10)
        assert await c.closed_by_peer()
        assert server.stats()["open_connections"] == 0
