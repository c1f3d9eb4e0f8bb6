"""A JT/T 808 terminal simulator: registers, authenticates and reports a recorded track over TCP.

For engineers bringing up a gateway: `citygate simulate --port 6808 configs/data/tracks/muck-01.csv`
drives the truck in the file through the real protocol and prints what the platform answers.
Recorded times are shifted so that no fix is dated in the future when it is sent (the gateway drops
those), with the recording's spacing kept: at real time the first fix is "now"; faster replays start
that much further in the past.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.model import Position
from gateway.protocols import jt808
from gateway.protocols.tracks_csv import parse_positions_csv


class Terminal:
    """One simulated terminal on one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, terminal: str) -> None:
        self.reader, self.writer, self.terminal = reader, writer, terminal
        self.serial = 0
        self._buffer = b""

    async def request(self, msg_id: int, body: bytes = b"", timeout: float = 10.0) -> jt808.Message:
        """Send one message and wait for the platform's reply to it."""
        self.serial = (self.serial + 1) & 0xFFFF
        self.writer.write(jt808.encode(msg_id, self.terminal, self.serial, body))
        await self.writer.drain()
        while True:
            frames, self._buffer = jt808.split_frames(self._buffer)
            if frames:
                reply = jt808.decode(frames[0])
                self._buffer = b"".join(frames[1:]) + self._buffer
                return reply
            chunk = await asyncio.wait_for(self.reader.read(4096), timeout)
            if not chunk:
                raise ConnectionError("the platform closed the connection")
            self._buffer += chunk


async def simulate(host: str, port: int, track: list[Position], *, terminal: str | None = None,
                   speed: float = 1.0, say: Callable[[str], None] = print) -> int:
    """Replay `track` as one terminal; returns how many locations the platform acknowledged."""
    if not track:
        raise ValueError("the track has no positions")
    terminal = terminal or track[0].device
    reader, writer = await asyncio.open_connection(host, port)
    sim = Terminal(reader, writer, terminal)
    try:
        reply = await sim.request(jt808.MSG_REGISTER, jt808.encode_register_body(terminal_id=terminal[-7:],
                                                                                  plate="SIM"))
        result, code = reply.fields.get("result"), reply.fields.get("auth_code", "")
        say(f"register {terminal}: result {result}" + (f", auth code {code}" if code else ""))
        if result != 0:
            return 0
        reply = await sim.request(jt808.MSG_AUTH, jt808.encode_auth_body(code))
        say(f"authenticate: result {reply.fields.get('result')}")
        if reply.fields.get("result") != 0:  # the platform would refuse every location
            return 0
        acknowledged = 0
        first = track[0].time
        span = track[-1].time - first
        lag = span if speed == 0 else span * (1 - 1 / speed) if speed > 1 else timedelta(0)
        offset = datetime.now(UTC) - lag - first
        started = asyncio.get_running_loop().time()
        for pos in track:
            if speed > 0:
                due = started + (pos.time - first).total_seconds() / speed
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
            live = pos._replace(time=(pos.time + offset).astimezone(jt808.CST), device=terminal)
            reply = await sim.request(jt808.MSG_LOCATION, jt808.encode_location_body(live))
            acknowledged += reply.fields.get("result") == 0
        say(f"{acknowledged}/{len(track)} locations acknowledged")
        return acknowledged
    finally:
        writer.close()


def load_track(path: Path) -> list[Position]:
    return parse_positions_csv(path.read_text(encoding="utf-8"), str(path))
