"""A JT/T 808 terminal simulator: registers, authenticates and reports a recorded track over TCP.

For engineers bringing up a gateway: `citygate simulate --port 6808 configs/data/tracks/muck-01.csv`
drives the truck in the file through the real protocol and prints what the platform answers. Platform
commands that arrive meanwhile (`citygate command`: driver text, position query, parameters) are
printed and answered as a terminal would: 0x0001 success, or 0x0201 with the last position sent.
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

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, terminal: str,
                 say: Callable[[str], None] = print) -> None:
        self.reader, self.writer, self.terminal, self.say = reader, writer, terminal, say
        self.serial = 0
        self.last: Position | None = None  # the last position sent: the answer to a position query
        self._buffer = b""

    def _next_serial(self) -> int:
        self.serial = (self.serial + 1) & 0xFFFF
        return self.serial

    def _answer(self, command: jt808.Message) -> None:
        """Answer a platform command the way a terminal does."""
        mid, f = command.msg_id, command.fields
        if mid == jt808.MSG_POSITION_QUERY and self.last is not None:
            self.say("platform asks for the position: answered")
            body = command.serial.to_bytes(2, "big") + jt808.encode_location_body(self.last)
            self.writer.write(jt808.encode(jt808.MSG_POSITION_REPLY, self.terminal, self._next_serial(), body))
            return
        if mid == jt808.MSG_TEXT:
            self.say(f"platform text for the driver: {f['text']}")
        elif mid == jt808.MSG_SET_PARAMS:
            self.say("platform sets parameters: " + ", ".join(f"{jt808.parameter_name(k)}={v}"
                                                               for k, v in f["params"].items()))
        else:
            self.say(f"platform command {mid:#06x}")
        body = jt808.encode_terminal_reply_body(command.serial, mid, jt808.RESULT_OK)
        self.writer.write(jt808.encode(jt808.MSG_TERMINAL_REPLY, self.terminal, self._next_serial(), body))

    async def request(self, msg_id: int, body: bytes = b"", timeout: float = 10.0) -> jt808.Message:
        """Send one message and wait for the platform's reply to it (answering commands that come first)."""
        self.writer.write(jt808.encode(msg_id, self.terminal, self._next_serial(), body))
        await self.writer.drain()
        while True:
            frames, self._buffer = jt808.split_frames(self._buffer)
            while frames:
                reply = jt808.decode(frames.pop(0))
                if reply.msg_id in (jt808.MSG_PLATFORM_REPLY, jt808.MSG_REGISTER_REPLY):
                    self._buffer = b"".join(frames) + self._buffer
                    return reply
                self._answer(reply)
            chunk = await asyncio.wait_for(self.reader.read(4096), timeout)
            if not chunk:
                raise ConnectionError("the platform closed the connection")
            self._buffer += chunk


async def simulate(host: str, port: int, track: list[Position], *, terminal: str | None = None,
                   speed: float = 1.0, auth_code: str | None = None, say: Callable[[str], None] = print) -> int:
    """Replay `track` as one terminal; returns how many locations the platform acknowledged. It registers
    first, unless given the `auth_code` an earlier registration handed out (a terminal registers once)."""
    if not track:
        raise ValueError("the track has no positions")
    terminal = terminal or track[0].device
    reader, writer = await asyncio.open_connection(host, port)
    sim = Terminal(reader, writer, terminal, say)
    try:
        code = auth_code
        if code is None:
            reply = await sim.request(jt808.MSG_REGISTER, jt808.encode_register_body(terminal_id=terminal[-7:],
                                                                                      plate="SIM"))
            result, code = reply.fields.get("result"), reply.fields.get("auth_code", "")
            say(f"register {terminal}: result {result}" + (f", auth code {code}" if code else ""))
            if result == jt808.REGISTER_TERMINAL_TAKEN:
                say("the terminal registered before: pass the code it was given (--auth-code), or have an "
                    "operator reset it (citygate jt808 reset)")
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
            sim.last = live
            reply = await sim.request(jt808.MSG_LOCATION, jt808.encode_location_body(live))
            acknowledged += reply.fields.get("result") == 0
        say(f"{acknowledged}/{len(track)} locations acknowledged")
        return acknowledged
    finally:
        writer.close()


def load_track(path: Path) -> list[Position]:
    return parse_positions_csv(path.read_text(encoding="utf-8"), str(path))
