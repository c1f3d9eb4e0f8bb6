"""What every console handler shares: the case store, the runtime's snapshot, accounts and counters."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from aiohttp import web

from gateway.outbox import Outbox
from gateway.web.auth import Accounts, RateLimiter, Sessions
from gateway.web.evidence import EvidenceStore
from gateway.web.maps import SeriesReader
from gateway.web.queries import CaseSearch

log = logging.getLogger("gateway.web")


@dataclass
class Console:
    outbox: Outbox
    snapshot_fn: Callable[[], dict]
    evidence: EvidenceStore
    search: CaseSearch
    accounts: Accounts
    sessions: Sessions
    by_address: RateLimiter
    by_user: RateLimiter
    timezone: tzinfo
    secure_cookies: bool = False
    stats: Counter = field(default_factory=Counter)
    site: str | None = None  # from the latest snapshot, for page headers
    config: Any = None  # the GatewayConfig, when given: map layers
    grid_path: Any = None
    series: SeriesReader | None = None  # the embedded time series, when there is one
    map_crs: str = "wgs84"
    map_tiles: str | None = None
    map_attribution: str = ""
    static_layers: dict | None = None  # built on first use (the grid may be large)
    notify_central: Callable[[], None] | None = None  # wakes the delivery worker (a confirmed case)
    commands: Any = None  # the JT/T 808 server (its `command` / `commands_of`), when it runs
    devices: Any = None  # gateway.devices.Devices over the running gateway's components, when there is one
    drawing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))  # cameras drawn at once

    def snapshot(self) -> tuple[dict[str, Any], str | None]:
        """The runtime's snapshot, or ({}, why) when it fails. Called on the loop: the runtime's state
        lives there and is not thread-safe."""
        try:
            snap = self.snapshot_fn()
            json.dumps(snap, default=str)  # fail here, with a message, not halfway through a page
            self.site = str(snap.get("site") or self.site or "citygate")
            return snap, None
        except Exception as exc:
            self.stats["errors"] += 1
            log.exception("console: snapshot() failed")
            return {}, f"snapshot() failed: {type(exc).__name__}: {exc}"

    def site_name(self) -> str:
        if self.site is None:
            self.snapshot()
        return self.site or "citygate"


CONSOLE = web.AppKey("console", Console)
