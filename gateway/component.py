"""The one shape of every long-running part of the gateway (sources, sinks, central delivery, the
web server, the detectors' tick loop), in the spirit of Telegraf's inputs and outputs:

- `name`: unique in a running gateway; the supervisor, logs and the status page use it;
- `async run(stop)`: do the work until `stop` is set, then return. An exception means the part
  failed: the supervisor logs it, counts it and calls `run` again after a backoff, so a part never
  retries the same failure in a loop of its own;
- `stats() -> dict`: counters for the status page and metrics, cheap enough to call on every request.

A part that listens on a port may also have `async listen()`: the runner opens every such port
before anything runs, so a port in use stops start-up with a clear error instead of a restart loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable


class Component(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...

    def stats(self) -> dict[str, Any]: ...


@runtime_checkable
class Listens(Protocol):
    async def listen(self) -> None: ...


async def serve_until(listener: Any, stop: asyncio.Event) -> None:
    """The `run` of a part that listens: open its port (unless `listen` already did), serve until
    `stop`, then close it (`listener.stop()`)."""
    await listener.listen()
    try:
        await stop.wait()
    finally:
        await listener.stop()


# Shutdown order: sources stop producing, then queued alerts become cases, then the sinks flush,
# and the status page goes last so the shutdown can be watched. Start-up runs in reverse.
STAGES: tuple[str, ...] = ("sources", "alerts", "sinks", "web")
