"""Connection limits of the console: at most `max_total` open connections, `max_per_address` from one
address. A connection over a limit is closed at once, counted, and logged at most once a minute.

aiohttp has no such limit: a stranger holding a thousand idle sockets would exhaust the process's
open files, and with them the JT/T 808 server's and the case desk's. The gate wraps aiohttp's
protocol factory and hands an admitted connection's events to aiohttp's own handler unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from gateway.throttle import LogThrottle

log = logging.getLogger(__name__)


class ConnectionLimits:
    def __init__(self, max_total: int, max_per_address: int, counters: Counter) -> None:
        self.max_total, self.max_per_address = max_total, max_per_address
        self.open: Counter[str] = Counter()  # address -> open connections
        self.total = 0
        self.counters = counters  # the console's stats: connections_refused
        self._throttle = LogThrottle(60.0)

    def admit(self, address: str) -> bool:
        if self.total >= self.max_total or self.open[address] >= self.max_per_address:
            self.counters["connections_refused"] += 1
            self._throttle.log(log, logging.WARNING, "refused",
                               "console connection from %s refused: %d open (limit %d), %d from that address "
                               "(limit %d)", address, self.total, self.max_total, self.open[address],
                               self.max_per_address)
            return False
        self.open[address] += 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self.open[address] -= 1
        if not self.open[address]:
            del self.open[address]

    def factory(self, make_handler: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Gate(self, make_handler)


class _Gate(asyncio.Protocol):
    """One connection: admitted (events go to aiohttp's handler) or closed at once."""

    def __init__(self, limits: ConnectionLimits, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self.limits, self.make_handler = limits, make_handler
        self.inner: asyncio.Protocol | None = None
        self.address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self.limits.admit(self.address):
            transport.abort()
            return
        self.inner = self.make_handler()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.limits.release(self.address)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
