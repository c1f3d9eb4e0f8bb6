"""The console server: runs the aiohttp application of gateway/web/app.py on host:port.

A runtime component (`name`, `async run(stop)`, `stats()`); `start()`/`stop()` are there for
callers that manage the lifetime themselves (tests, the current runtime). `port=0` picks a free
port (see `.port` after start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.component import serve_until
from gateway.config import WebConfig, is_loopback
from gateway.outbox import Outbox
from gateway.web.app import build_app
from gateway.web.auth import Accounts, RateLimiter, Sessions
from gateway.web.evidence import EvidenceStore
from gateway.web.gate import ConnectionLimits
from gateway.web.maps import SeriesReader
from gateway.web.queries import CaseSearch
from gateway.web.state import Console

log = logging.getLogger(__name__)

KEEPALIVE_S = 30.0  # an idle keep-alive connection is closed after this long


class ConsoleServer:
    """The operator console of one gateway over its outbox, snapshot and evidence folder."""

    name = "web"

    def __init__(
        self,
        outbox: Outbox,
        snapshot: Callable[[], dict],
        *,
        evidence_root: Path,
        host: str = "127.0.0.1",
        port: int = 8080,
        web_config: WebConfig | None = None,
        users_file: Path | None = None,
        timezone: tzinfo | None = None,
        gateway_config: Any = None,
        notify_central: Callable[[], None] | None = None,
        commands: Any = None,
        devices: Any = None,
    ) -> None:
        cfg = web_config or (gateway_config.web if gateway_config is not None else WebConfig())
        if not is_loopback(host) and not (cfg.users or cfg.tokens or users_file):
            raise ValueError(f"refusing to serve the console on {host} without users or tokens")
        self.host = host
        self.port = port
        accounts = Accounts(cfg, users_file, loopback=is_loopback(host))
        self.console = Console(
            outbox=outbox, snapshot_fn=snapshot, evidence=EvidenceStore(Path(evidence_root)),
            search=CaseSearch(outbox.path), accounts=accounts, sessions=Sessions(cfg.session_ttl_s),
            by_address=RateLimiter(2 * cfg.login_attempts, cfg.login_window_s),
            by_user=RateLimiter(cfg.login_attempts, cfg.login_window_s),
            timezone=timezone or datetime.now().astimezone().tzinfo, secure_cookies=cfg.secure_cookies,
            notify_central=notify_central, commands=commands, devices=devices)
        if gateway_config is not None:
            self._add_map_sources(gateway_config)
        self.app = build_app(self.console)
        self.limits = ConnectionLimits(cfg.max_connections, cfg.max_connections_per_address, self.console.stats)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    def _add_map_sources(self, config: Any) -> None:
        from gateway.deployment import demo_grid_path

        c = self.console
        c.config = config
        c.grid_path = config.path(config.cases.grid) if config.cases.grid else demo_grid_path()
        c.map_crs, c.map_tiles = config.web.map_tiles_crs, config.web.map_tiles
        c.map_attribution = config.web.map_attribution
        ts = config.timeseries
        if ts.backend == "sqlite" and ts.sqlite_path != ":memory:":
            path = Path(ts.sqlite_path)
            c.series = SeriesReader(path if path.is_absolute() else config.data_path / path)

    def stats(self) -> dict[str, Any]:
        return {**self.console.stats, "sessions": len(self.console.sessions)}

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=KEEPALIVE_S,
                                     handle_signals=False)
        await self._runner.setup()
        try:
            server = await asyncio.get_running_loop().create_server(
                self.limits.factory(self._runner.server), self.host, self.port, backlog=256)
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        log.info("console on http://%s:%d/", self.host, self.port)
        if self.console.accounts.generated_password:
            log.warning("no console users configured: log in as 'admin' with password %s (this run only; "
                        "add users with `citygate user add NAME --role admin`)",
                        self.console.accounts.generated_password)

    async def listen(self) -> None:
        """Bind the port now: a port in use fails the gateway's start-up, not a restart loop later."""
        if self._runner is None:
            await self.start()

    async def run(self, stop: asyncio.Event) -> None:
        await serve_until(self, stop)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; the runner's cleanup closes the open ones
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.console.search.close()
        if self.console.series is not None:
            self.console.series.close()

