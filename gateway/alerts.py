"""The alert bus: every alert from every detector passes here, in order, to the case desk first
and to the live sinks after.

Queue policy: bounded at `max_alerts`. When full, alerts that cannot become a case (information,
health) are dropped and counted; case-worthy alerts and closes go past the bound (counted as
`overflow`) up to `max_waiting` more, because the outbox bound, not this queue, is where a case may
be refused (the desk refuses it before writing evidence, and the bus raises one `outbox_full`
critical alert per `outbox_full_every_s`). Beyond both bounds an alert is lost, counted and logged.

A full disk (ENOSPC, sqlite "database or disk is full") while the desk commits: the alert stays at
the head of the queue, in memory, with everything behind it (so a case's close never overtakes its
open); a `disk_full` critical alert goes to the live sinks; the desk is retried with backoff and the
alerts are committed, in order, once space returns. `stats` says how many wait and since when.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Literal

from core.model import Alert
from gateway.aio import Backoff, wait_or_stop
from gateway.cases import CaseDesk, CaseOutcome

log = logging.getLogger(__name__)


def is_disk_full(exc: BaseException) -> bool:
    """The write failed for want of space: worth keeping the alert and trying again later."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class AlertBus:
    name = "alerts"

    def __init__(self, desk: CaseDesk, *, max_alerts: int = 10_000, max_waiting: int | None = None,
                 recent: int = 200, outbox_full_every_s: float = 600.0, retry_first_s: float = 1.0,
                 retry_max_s: float = 30.0) -> None:
        self.desk = desk
        self.max_alerts = max_alerts
        self.max_waiting = max_alerts if max_waiting is None else max_waiting
        self.outbox_full_every_s = outbox_full_every_s
        self._retry = Backoff(retry_first_s, retry_max_s)
        self._queue: collections.deque[Alert] = collections.deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # one thread: the desk's disk writes stay in alert order and off the event loop
        self._desk_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="case-desk")
        self.listeners: list[Callable[[Alert, CaseOutcome | None], None]] = []
        self.recent: collections.deque[Alert] = collections.deque(maxlen=recent)
        self.counters: dict = {"alerts": 0, "dropped": 0, "overflow": 0, "lost": 0, "cases": 0, "recurrences": 0,
                            "events": 0, "refused_full": 0, "errors": 0, "disk_full_errors": 0,
                            "waiting_for_disk": 0, "disk_full_since": None}
        self._last_full_alert: float | None = None
        self._disk_full_at: datetime | None = None

    def stats(self) -> dict:
        """The bus's counters, its queue depth and the case desk's counters."""
        return {**self.counters, "pending": len(self._queue), "desk": dict(self.desk.stats)}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def submit(self, alert: Alert) -> None:
        """Queue an alert; call from the event loop's thread."""
        if len(self._queue) >= self.max_alerts:
            if alert.category is None and alert.state == "open":
                self.counters["dropped"] += 1
                return
            if len(self._queue) >= self.max_alerts + self.max_waiting:
                self.counters["lost"] += 1
                if self.counters["lost"] == 1 or self.counters["lost"] % 1000 == 0:
                    log.error("alert queue at its hard bound (%d): %d case alert(s) lost so far",
                              self.max_alerts + self.max_waiting, self.counters["lost"])
                return
            self.counters["overflow"] += 1
        self._queue.append(alert)
        if self._disk_full_at is not None:
            self.counters["waiting_for_disk"] = len(self._queue)
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
            alert = self._queue[0]
            outcome = None
            try:
                outcome = await loop.run_in_executor(self._desk_thread, self.desk.handle, alert)
            except Exception as exc:  # noqa: BLE001 - one bad alert must not stop the bus; it is logged with the error
                if is_disk_full(exc):
                    if await self._wait_for_space(exc, stop):
                        continue  # try the same alert again
                    log.error("stopping with %d alert(s) not committed: the disk is still full", len(self._queue))
                    return
                self.counters["errors"] += 1
                log.exception("case desk failed on alert %s", alert.key)
            self._queue.popleft()
            self.counters["alerts"] += 1
            if self._disk_full_at is not None:
                self._space_returned()
            self._count(alert, outcome)
            self._publish(alert, outcome)

    def _count(self, alert: Alert, outcome: CaseOutcome | None) -> None:
        if outcome is None:
            if alert.state == "open":
                log.info("alert %s %s %s %s", alert.severity, alert.rule, alert.subject_id, alert.message)
            return
        if outcome.kind == "new":
            self.counters["cases"] += 1
            log.info("case %s opened: %s %s at %s", outcome.case_id, alert.rule, alert.subject_id, alert.place or "-")
        elif outcome.kind == "refused":
            self.counters["refused_full"] += 1
            self._outbox_full(alert)
        elif outcome.kind in ("updated", "recurrence"):
            self.counters["recurrences"] += 1
        if outcome.event is not None:
            self.counters["events"] += 1
            log.info("case %s %s (event %d)", outcome.case_id, outcome.event.kind, outcome.event.seq)

    def _publish(self, alert: Alert, outcome: CaseOutcome | None) -> None:
        self.recent.appendleft(alert)
        for listener in self.listeners:
            try:
                listener(alert, outcome)
            except Exception:  # noqa: BLE001 - a sink's bug must not block cases
                self.counters["errors"] += 1
                log.exception("alert listener %r failed", listener)

    def _system_alert(self, rule: str, state: Literal["open", "closed"], when: datetime, message: str, **facts: object) -> Alert:
        return Alert(rule=rule, subject_kind="gateway", subject_id=self.desk.gateway_id, state=state,
                     time=when, source="system", severity="critical", message=message, facts=facts)

    def _outbox_full(self, alert: Alert) -> None:
        """One critical alert per `outbox_full_every_s`, however many cases are refused meanwhile."""
        now = time.monotonic()
        if self._last_full_alert is not None and now - self._last_full_alert < self.outbox_full_every_s:
            return
        self._last_full_alert = now
        refused = self.counters["refused_full"]
        log.error("outbox full: case for %s %s refused (%d refused so far); is the central platform reachable?",
                  alert.rule, alert.subject_id, refused)
        self._publish(self._system_alert(
            "outbox_full", "open", alert.time, f"outbox full: new cases are refused ({refused} so far); "
            "is the central platform reachable?", refused=refused), None)

    async def _wait_for_space(self, exc: BaseException, stop: asyncio.Event) -> bool:
        """Keep the alerts, say so, wait with backoff; False when stopping (after a last try)."""
        self.counters["disk_full_errors"] += 1
        self.counters["waiting_for_disk"] = len(self._queue)
        if self._disk_full_at is None:
            self._disk_full_at = datetime.now(UTC)
            self.counters["disk_full_since"] = self._disk_full_at.isoformat()
            log.error("cannot commit cases, the disk is full (%s): %d alert(s) kept in memory, retrying",
                      exc, len(self._queue))
            self._publish(self._system_alert(
                "disk_full", "open", self._disk_full_at, f"disk full: {len(self._queue)} alert(s) wait in memory "
                "to become cases; free space on the data directory", waiting=len(self._queue)), None)
        if stop.is_set():
            return False
        await wait_or_stop(stop, self._retry.next())
        return True  # after a stop, one last try

    def _space_returned(self) -> None:
        log.warning("disk space is back: committing the %d alert(s) that waited", len(self._queue) + 1)
        self._disk_full_at = None
        self._retry.reset()
        self.counters["waiting_for_disk"] = 0
        self.counters["disk_full_since"] = None
        self._publish(self._system_alert("disk_full", "closed", datetime.now(UTC), "disk space is back"), None)

    def close(self) -> None:
        self._desk_thread.shutdown(wait=True)
