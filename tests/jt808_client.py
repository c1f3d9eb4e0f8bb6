"""An independent JT/T 808 encoder and TCP test client, written from the standard's tables.

Deliberately shares no code with gateway.protocols.jt808: the tests check the codec against
this second implementation, so a bug would have to be made twice, the same way, to pass.
It builds bytes one field at a time and escapes byte by byte; speed does not matter here.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta, timezone

BEIJING = timezone(timedelta(hours=8))


def word(value: int) -> bytes:
    return bytes([(value >> 8) & 0xFF, value & 0xFF])


def dword(value: int) -> bytes:
    return bytes([(value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF])


def bcd(digits: str, size: int) -> bytes:
    digits = digits.zfill(size * 2)
    assert len(digits) == size * 2 and digits.isdigit(), digits
    return bytes((int(digits[i]) << 4) | int(digits[i + 1]) for i in range(0, len(digits), 2))


def bcd_time(when: datetime) -> bytes:
    local = when.astimezone(BEIJING)
    fields = (local.year % 100, local.month, local.day, local.hour, local.minute, local.second)
    return bytes(((v // 10) << 4) | (v % 10) for v in fields)


def checksum(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte == 0x7E:
            out += b"\x7d\x02"
        elif byte == 0x7D:
            out += b"\x7d\x01"
        else:
            out.append(byte)
    return bytes(out)


def frame(
    msg_id: int,
    phone: str,
    serial: int,
    body: bytes = b"",
    *,
    version: int | None = None,
    packet: tuple[int, int] | None = None,
    encryption: int = 0,
) -> bytes:
    """A complete wire frame; version=None writes the 2013 header, an int the 2019 header."""
    props = len(body) | (encryption << 10)
    if packet is not None:
        props |= 0x2000
    header = bytearray(word(msg_id))
    if version is None:
        header += word(props)
        header += bcd(phone, 6)
    else:
        header += word(props | 0x4000)
        header.append(version)
        header += bcd(phone, 10)
    header += word(serial)
    if packet is not None:
        header += word(packet[0]) + word(packet[1])
    raw = bytes(header) + body
    return b"\x7e" + escape(raw + bytes([checksum(raw)])) + b"\x7e"


# ------------------------------------------------------------------ bodies


def location_body(
    lat: float,
    lon: float,
    when: datetime,
    *,
    alarm: int = 0,
    status: int = 0x02,
    altitude: int = 0,
    speed_tenths: int = 0,
    course: int = 0,
    items: list[tuple[int, bytes]] = (),
) -> bytes:
    """0x0200 body; sign bits of lat/lon are set from the signs; items are (id, value) extras."""
    if lat < 0:
        status |= 0x04
    if lon < 0:
        status |= 0x08
    out = dword(alarm) + dword(status)
    out += dword(int(round(abs(lat) * 1_000_000))) + dword(int(round(abs(lon) * 1_000_000)))
    out += word(altitude) + word(speed_tenths) + word(course) + bcd_time(when)
    for item_id, value in items:
        out += bytes([item_id, len(value)]) + value
    return out


def batch_body(items: list[bytes], kind: int) -> bytes:
    out = word(len(items)) + bytes([kind])
    for item in items:
        out += word(len(item)) + item
    return out


def register_body(
    province: int, city: int, maker: str, model: str, device_id: str, color: int, plate: str
) -> bytes:
    """2013 layout: maker BYTE[5], model BYTE[20], terminal id BYTE[7], plate GBK."""
    return (
        word(province)
        + word(city)
        + maker.encode().ljust(5, b"\0")
        + model.encode().ljust(20, b"\0")
        + device_id.encode().ljust(7, b"\0")
        + bytes([color])
        + plate.encode("gbk")
    )


def general_reply(phone: str, serial: int, answer_serial: int, answer_id: int, result: int, **kw) -> bytes:
    """The 0x8001 frame the platform should send."""
    return frame(0x8001, phone, serial, word(answer_serial) + word(answer_id) + bytes([result]), **kw)


def register_reply(phone: str, serial: int, answer_serial: int, result: int, code: str = "", **kw) -> bytes:
    """The 0x8100 frame the platform should send (auth code only on success)."""
    body = word(answer_serial) + bytes([result]) + (code.encode() if result == 0 else b"")
    return frame(0x8100, phone, serial, body, **kw)


def registered(raw: bytes) -> tuple[int, str]:
    """(result, auth code) of the platform's 0x8100 frame; the code is "" unless the result is 0."""
    got = Parsed(raw)
    assert got.msg_id == 0x8100, f"expected 0x8100, got {got.msg_id:#06x}"
    return got.body[2], got.body[3:].decode()


def terminal_reply(phone: str, serial: int, answer_serial: int, answer_id: int, result: int, **kw) -> bytes:
    """The 0x0001 frame a terminal sends to answer a platform command."""
    return frame(0x0001, phone, serial, word(answer_serial) + word(answer_id) + bytes([result]), **kw)


def position_reply(phone: str, serial: int, answer_serial: int, location: bytes, **kw) -> bytes:
    """The 0x0201 frame a terminal sends to answer a position query (0x8201)."""
    return frame(0x0201, phone, serial, word(answer_serial) + location, **kw)


class Parsed:
    """A platform frame read back field by field: msg_id, phone, serial, version (None: 2013 header),
    packet (total, index) or None, body."""

    def __init__(self, raw: bytes) -> None:
        assert raw[0] == 0x7E and raw[-1] == 0x7E, raw.hex()
        data = bytearray()
        i, inner = 0, raw[1:-1]
        while i < len(inner):  # unescape byte by byte
            if inner[i] == 0x7D:
                data.append({0x01: 0x7D, 0x02: 0x7E}[inner[i + 1]])
                i += 2
            else:
                data.append(inner[i])
                i += 1
        assert checksum(bytes(data[:-1])) == data[-1], "checksum"
        self.msg_id = (data[0] << 8) | data[1]
        props = (data[2] << 8) | data[3]
        at = 4
        if props & 0x4000:
            self.version: int | None = data[at]
            at += 1
            size = 10
        else:
            self.version, size = None, 6
        self.phone = data[at : at + size].hex()
        at += size
        self.serial = (data[at] << 8) | data[at + 1]
        at += 2
        self.packet = None
        if props & 0x2000:
            self.packet = ((data[at] << 8) | data[at + 1], (data[at + 2] << 8) | data[at + 3])
            at += 4
        self.body = bytes(data[at:-1])
        assert len(self.body) == props & 0x3FF, "body length"

    def words(self, start: int, count: int) -> list[int]:
        return [(self.body[start + 2 * k] << 8) | self.body[start + 2 * k + 1] for k in range(count)]


# ------------------------------------------------------------------ TCP client


class Client:
    """A terminal on a real TCP connection that reads whole reply frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pending = b""

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 5.0) -> bytes:
        """The next complete 0x7e...0x7e frame from the server, as raw bytes."""
        while True:
            start = self._pending.find(b"\x7e")
            end = self._pending.find(b"\x7e", start + 1) if start >= 0 else -1
            if end > start >= 0:
                out, self._pending = self._pending[start : end + 1], self._pending[end + 1 :]
                return out
            chunk = await asyncio.wait_for(self.reader.read(4096), timeout)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._pending += chunk

    async def expect(self, msg_id: int, timeout: float = 5.0) -> Parsed:
        """The next frame from the server, which must be `msg_id`."""
        got = Parsed(await self.reply(timeout))
        assert got.msg_id == msg_id, f"expected {msg_id:#06x}, got {got.msg_id:#06x}"
        return got

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the server has closed (EOF or reset), reading and discarding anything else."""
        try:
            while True:
                chunk = await asyncio.wait_for(self.reader.read(4096), timeout)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self.writer.wait_closed()
