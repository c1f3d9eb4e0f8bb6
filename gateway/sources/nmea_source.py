"""NMEA 0183 over a TCP stream or from a log file: one device's sentences -> Positions.

Sentences that do not decode are logged (first few per stream) and counted, never raised: a
receiver that prints noise must not stop the stream. A receiver that closes its stream is a lost
connection: `run` raises and the supervisor reconnects with its backoff.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.model import Position
from gateway.aio import race
from gateway.protocols import nmea

log = logging.getLogger(__name__)

MAX_LINE = 1024  # an NMEA sentence is at most 82 characters; longer lines are noise
LOGGED_ERRORS = 5  # per stream, so that a noisy receiver does not flood the log


class NmeaSource:
    """Feeds lines to `nmea.parse` and hands each Position to on_position (sync or async).

    A component: reads `file` once, or the TCP receiver at `host:port` until stopped."""

    def __init__(self, device: str, on_position: Callable[[Position], Any], *, file: Path | None = None,
                 host: str | None = None, port: int | None = None) -> None:
        self.device = device
        self.name = f"nmea:{device}"
        self.on_position = on_position
        self.file, self.host, self.port = file, host, port
        self.counters: dict[str, int] = {"lines": 0, "positions": 0, "decode_errors": 0}

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)

    async def run(self, stop: asyncio.Event) -> None:
        if self.file is not None:
            await race(self.read_file(self.file), stop.wait())
            return
        assert self.host is not None and self.port is not None
        await race(self.read_tcp(self.host, self.port), stop.wait())
        if not stop.is_set():
            raise ConnectionError(f"NMEA receiver {self.host}:{self.port} closed the connection")

    async def line(self, text: str, received: datetime | None = None) -> None:
        """Handle one line (blank lines and non-position sentences are skipped)."""
        text = text.strip()
        if not text:
            return
        self.counters["lines"] += 1
        try:
            position = nmea.parse(text, self.device, ref=received or datetime.now(UTC))
        except nmea.DecodeError as exc:
            self.counters["decode_errors"] += 1
            if self.counters["decode_errors"] <= LOGGED_ERRORS:
                log.warning("NMEA %s: %s (line %r)", self.device, exc, text[:100])
            return
        if position is None:
            return
        self.counters["positions"] += 1
        result = self.on_position(position)
        if inspect.isawaitable(result):
            await result

    async def read_stream(self, reader: asyncio.StreamReader) -> None:
        """Read lines until EOF."""
        while True:
            try:
                raw = await reader.readline()
            except ValueError:  # a line over the stream limit: asyncio dropped it
                self.counters["decode_errors"] += 1
                continue
            if not raw:
                return
            if len(raw) > MAX_LINE:
                self.counters["decode_errors"] += 1
                continue
            await self.line(raw.decode("ascii", errors="replace"))

    async def read_tcp(self, host: str, port: int) -> None:
        """Connect to an NMEA-over-TCP receiver (e.g. a GNSS base or gpsd raw port) and read to EOF."""
        reader, writer = await asyncio.open_connection(host, port, limit=64 * 1024)
        try:
            await self.read_stream(reader)
        finally:
            writer.close()

    async def read_file(self, path: str | Path, date_ref: datetime | None = None) -> None:
        """Replay a log file; date_ref dates GGA sentences (RMC carries its own date)."""
        with open(path, encoding="ascii", errors="replace") as handle:
            for text in handle:
                await self.line(text, date_ref)
