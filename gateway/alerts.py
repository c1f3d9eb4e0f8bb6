"""The alert bus: every alert from every detector passes here, in order, to the case desk first
and to the live sinks after.

Queue policy: bounded at `max_alerts`. When full, alerts that cannot become a case (information,
health) are dropped and counted; case-worthy alerts and closes are never dropped — they go past the
bound (counted as `overflow`), because the outbox bound, not this queue, is where a case may be
refused, and there it raises its own alert.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.model import Alert
from gateway.cases import CaseDesk, CaseOutcome

log = logging.getLogger(__name__)


class AlertBus:
    name = "alerts"

    def __init__(self, desk: CaseDesk, *, max_alerts: int = 10_000, recent: int = 200) -> None:
        self.desk = desk
        self.max_alerts = max_alerts
        self._queue: collections.deque[Alert] = collections.deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # one thread: the desk's disk writes stay in alert order and off the event loop
        self._desk_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="case-desk")
        self.listeners: list[Callable[[Alert, CaseOutcome | None], None]] = []
        self.recent: collections.deque[Alert] = collections.deque(maxlen=recent)
        self.stats = {"alerts": 0, "dropped": 0, "overflow": 0, "cases": 0, "recurrences": 0, "errors": 0}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def submit(self, alert: Alert) -> None:
        """Queue an alert; call from the event loop's thread."""
        if len(self._queue) >= self.max_alerts:
            if alert.category is None and alert.state == "open":
                self.stats["dropped"] += 1
                return
            self.stats["overflow"] += 1
        self._queue.append(alert)
        self._wake.set()

    def submit_threadsafe(self, alert: Alert) -> None:
        """Queue an alert from a worker thread (camera, inference)."""
        if self._loop is None:
            raise RuntimeError("AlertBus.bind(loop) was not called")
        self._loop.call_soon_threadsafe(self.submit, alert)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.bind(loop)
        while True:
            if not self._queue:
                if stop.is_set():
                    return
                self._wake.clear()
                stop_wait = asyncio.ensure_future(stop.wait())
                wake_wait = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([stop_wait, wake_wait], return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                wake_wait.cancel()
                continue
            alert = self._queue.popleft()
            self.stats["alerts"] += 1
            outcome = None
            try:
                outcome = await loop.run_in_executor(self._desk_thread, self.desk.handle, alert)
            except Exception:  # noqa: BLE001 - one bad alert must not stop the bus; it is logged with the error
                self.stats["errors"] += 1
                log.exception("case desk failed on alert %s", alert.key)
            if outcome is not None:
                self.stats["cases" if outcome.kind == "new" else "recurrences"] += 1
                if outcome.kind == "new":
                    log.info("case %s opened: %s %s at %s", outcome.case_id, alert.rule, alert.subject_id,
                             alert.place or "-")
            elif alert.state == "open":
                log.info("alert %s %s %s %s", alert.severity, alert.rule, alert.subject_id, alert.message)
            self.recent.appendleft(alert)
            for listener in self.listeners:
                try:
                    listener(alert, outcome)
                except Exception:  # noqa: BLE001 - a sink's bug must not block cases
                    self.stats["errors"] += 1
                    log.exception("alert listener %r failed", listener)

    def close(self) -> None:
        self._desk_thread.shutdown(wait=True)
