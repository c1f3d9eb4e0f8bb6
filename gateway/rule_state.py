"""Keeps the sensor rules' state (open episodes, rain windows, last values) across restarts.

`load()` (when the graph is built) hands the saved state to the monitor; `run(stop)` saves it every
`interval_s` and once more at shutdown. A save is atomic (temp file, fsync, rename, fsync of the
folder), so a crash or kill -9 leaves the previous state or the new one, never half a file.

A state is only saved while every alert the rules have emitted has been handled by the case desk
(bus empty, nothing in flight): a saved episode is then always one whose alerts are committed, so a
kill between the two can repeat an alert (at least once, deduplicated by the desk) but never lose one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from detectors.sensor.monitor import SensorMonitor
from gateway.aio import wait_or_stop
from gateway.alerts import AlertBus
from gateway.storage import write_durably

log = logging.getLogger(__name__)

SETTLE_POLL_S = 0.05


class RuleStateStore:
    name = "rule-state"

    def __init__(self, monitor: SensorMonitor, path: Path, *, interval_s: float, bus: AlertBus) -> None:
        self.monitor, self.path, self.interval_s, self.bus = monitor, path, interval_s, bus
        self._handled = 0
        bus.listeners.append(self._after_alert)
        self.counters: dict[str, Any] = {"saves": 0, "deferred": 0, "errors": 0, "bytes": 0, "loaded": False,
                                         "last_save": None}

    def _after_alert(self, _alert: Any, _outcome: Any) -> None:
        self._handled += 1

    def settled(self) -> bool:
        """No alert queued or in flight on the bus."""
        counters = self.bus.stats() if callable(self.bus.stats) else self.bus.stats  # a dict today, stats() soon
        return self.bus.pending == 0 and counters["alerts"] == self._handled

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)

    def load(self) -> bool:
        """Restore the saved state, if any. A file that cannot be read is moved aside (`.bad`) and the
        rules start empty: a broken state file must not keep the gateway from starting."""
        if not self.path.exists():
            return False
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            self.monitor.restore_state(state)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad = self.path.with_suffix(self.path.suffix + ".bad")
            log.error("sensor rule state %s unreadable (%s); moved to %s, rules start empty", self.path, exc, bad)
            self.path.replace(bad)
            self.counters["errors"] += 1
            return False
        self.counters["loaded"] = True
        log.info("sensor rule state restored from %s", self.path)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, self.interval_s):
            await self._save_when_settled(stop)
        await self._save_when_settled(None)

    async def _save_when_settled(self, stop: asyncio.Event | None) -> None:
        deadline = time.monotonic() + self.interval_s
        while not self.settled():
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                self.counters["deferred"] += 1
                return
            await asyncio.sleep(SETTLE_POLL_S)
        text = json.dumps(self.monitor.export_state(), separators=(",", ":"))  # on the loop: a consistent cut
        try:
            await asyncio.to_thread(write_durably, self.path, text.encode())
        except OSError as exc:
            self.counters["errors"] += 1
            log.error("could not save sensor rule state to %s: %s", self.path, exc)
            return
        self.counters.update(saves=self.counters["saves"] + 1, bytes=len(text), last_save=time.time())
