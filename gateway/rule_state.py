"""Keeps the sensor rules' state across restarts: open episodes, rain windows, last values, and the
previous count of every cumulative counter (a tipping bucket's tips), in `data_dir/sensor_rules.sqlite3`,
one row per device.

`load()` (when the graph is built, before any reading) hands the saved state to the monitor and to
the sources' counter trackers; `run(stop)` saves every `interval_s` and once more at shutdown, and
within `PROMPT_S` of a sensor alert the case desk has handled it saves that alert's device alone (in a
storm, saving every changed device each second wrote each one several times between periodic saves).

A save writes only the devices whose state changed since the last one (the monitor's and the
trackers' change sets). On the event loop it encodes them, device by device, for at most `SLICE_S`
at a time, giving the loop back between slices, so however large the fleet a save never holds the
loop for more than a slice; the SQLite transaction runs in a thread, as one statement per
ROWS_PER_STATEMENT rows over a JSON document of them, so the thread takes the interpreter's lock a
few times rather than once a row (an `executemany` of 10,000 rows fought the event loop for it:
370 ms a save, the loop slowed meanwhile); the document's members are made in the slices. Each
device becomes one JSON string at once: a copy of the whole state as lists and dicts kept until the write would be hundreds
of thousands of containers that survive long enough to start a full garbage collection, which at
10,000 devices held the loop for most of a second (measured; bench/rule_state.py).

Consistency. A device's row is taken at one moment, its rules' state and its counters' counts
together: sources decode a message and hand its readings to the rules without giving the loop up
in between, so whenever a slice runs a counter's count and the rain the rules have counted from it
agree. Rows need not come from the same moment: no rule state spans devices. A slice is only taken
while every alert the rules have emitted has been handled by the case desk (bus empty, nothing in
flight): a saved episode is then always one whose alerts are committed, so a kill between the two can
repeat an alert (at least once, deduplicated by the desk) but never lose one. One save is one SQLite
transaction: a kill leaves the previous save or the new one.

A kill -9 loses the readings the rules saw after the last save (see docs/DESIGN.md, "State across
restarts", for what that means for episodes, cases and rain); `reconcile()`, right after `load()`,
squares the restored episodes with the case desk (gateway/sensor_cases.py), so no case is left open
by an alert the last save missed.

Upgrading: a gateway from before this store kept the whole state in one JSON document,
`data_dir/sensor_rules.json` (version 1). When the SQLite file does not exist yet, `load()` converts
that document into it once and renames it `sensor_rules.json.imported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from core.model import Alert
from detectors.sensor.monitor import STATE_VERSION, SensorMonitor
from detectors.sensor.state_v1 import upgrade_v1
from gateway.aio import wait_or_stop
from gateway.alerts import AlertBus
from gateway.cases import CaseDesk, CaseOutcome
from gateway.outbox import Outbox
from gateway.profiles import CounterTracker
from gateway.sensor_cases import reconcile

log = logging.getLogger(__name__)

SETTLE_POLL_S = 0.05
SLICE_S = 0.005  # how long a slice encodes devices before the loop gets its turn
PROMPT_S = 1.0  # a sensor alert that touched a case is saved within this (the hole a kill can leave)
LEGACY_NAME = "sensor_rules.json"  # the whole state as one document (version 1), beside the SQLite file
ROWS_PER_STATEMENT = 500  # one statement's JSON document: SQLite's parse of 10,000 rows at once took ~20 MB
SHOWN_ORPHANS = 50  # open cases nothing can clear, listed by id in the status


class RuleStateStore:
    name = "rule-state"

    def __init__(self, monitor: SensorMonitor, path: Path, *, interval_s: float, bus: AlertBus) -> None:
        self.monitor, self.path, self.interval_s, self.bus = monitor, path, interval_s, bus
        self.trackers: dict[str, CounterTracker] = {}  # source name -> the counter tracker of its intake
        self._handled = 0
        self._prompted: set[str] = set()  # devices whose sensor alert touched a case since their last save
        self._pending: set[str] = set()  # devices to write: changed, and not yet in a save
        self._db: sqlite3.Connection | None = None
        bus.listeners.append(self._after_alert)
        self.counters: dict[str, Any] = {"saves": 0, "deferred": 0, "errors": 0, "bytes": 0, "devices": 0,
                                         "longest_slice_ms": 0.0, "loaded": False, "last_save": None,
                                         "imported": False, "adopted": 0, "forgotten": 0, "orphaned": 0,
                                         "orphaned_cases": []}

    def _after_alert(self, alert: Alert, outcome: CaseOutcome | None) -> None:
        self._handled += 1
        if outcome is not None and alert.subject_kind == "sensor":
            self._prompted.add(alert.subject_id)

    def settled(self) -> bool:
        """No alert queued or in flight on the bus."""
        return self.bus.pending == 0 and self.bus.stats()["alerts"] == self._handled

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "pending": len(self._pending)}

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> bool:
        """Restore the saved state, if any, into the monitor and the trackers (register those first).
        A file that cannot be read is moved aside (`.bad`) and the rules start empty: a broken state
        file must not keep the gateway from starting."""
        legacy = self.path.with_name(LEGACY_NAME)
        if not self.path.exists() and legacy.exists():
            self._import(legacy)
        if not self.path.exists():
            return False
        try:
            with contextlib.closing(self._connect()) as db:
                state, counts = _read(db)
                if state:
                    self.monitor.restore_state(state)
                    gone = [d for d in state["devices"] if d not in self.monitor.devices]
                    with db:  # devices no longer configured (counted by the monitor as restore_dropped)
                        db.executemany("DELETE FROM devices WHERE device=?", [(d,) for d in gone])
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as exc:
            bad = self.path.with_suffix(self.path.suffix + ".bad")
            log.error("sensor rule state %s unreadable (%s); moved to %s, rules start empty", self.path, exc, bad)
            self.path.replace(bad)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            self.counters["errors"] += 1
            return False
        if not state:
            return False
        for device, by_source in counts.items():
            for source, fields in by_source.items():
                if source in self.trackers:
                    self.trackers[source].restore(device, fields)
        self.counters["loaded"] = True
        log.info("sensor rule state of %d device(s) restored from %s", len(state["devices"]), self.path)
        return True

    def _import(self, legacy: Path) -> None:
        """The version-1 JSON document written into a new SQLite file in one transaction, then renamed
        aside (a kill in between leaves both: the next start reads the SQLite file and ignores the JSON).
        One that cannot be read is moved aside (`.bad`) like an unreadable SQLite file."""
        try:
            state = upgrade_v1(json.loads(legacy.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            bad = legacy.with_name(legacy.name + ".bad")
            log.error("old sensor rule state %s unreadable (%s); moved to %s, rules start empty", legacy, exc, bad)
            legacy.replace(bad)
            self.counters["errors"] += 1
            return
        rows = [(device, json.dumps({"rules": entry}, separators=(",", ":")))
                for device, entry in state["devices"].items()]
        try:
            with contextlib.closing(self._connect()) as db, db:
                db.executemany("INSERT OR REPLACE INTO devices(device, state) VALUES (?, ?)", rows)
                db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                               [("version", str(STATE_VERSION)), ("epoch", json.dumps(state["epoch"]))])
        except (OSError, sqlite3.Error) as exc:  # a full disk: the JSON stays, the next start tries again
            log.error("could not import %s into %s (%s); rules start empty", legacy, self.path, exc)
            for suffix in ("", "-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            self.counters["errors"] += 1
            return
        legacy.replace(legacy.with_name(legacy.name + ".imported"))
        self.counters["imported"] = True
        log.info("sensor rule state of %d device(s) imported from %s into %s", len(rows), legacy, self.path)

    def reconcile(self, outbox: Outbox, desk: CaseDesk) -> None:
        """After `load()`, before any source starts: the case desk's open sensor cases and the restored
        episodes made to agree (gateway/sensor_cases.py); what it did goes into the stats."""
        done = reconcile(self.monitor, outbox, desk)
        self.counters.update(adopted=len(done.adopted), forgotten=len(done.forgotten), orphaned=len(done.orphaned),
                             orphaned_cases=done.orphaned[:SHOWN_ORPHANS])

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)  # saves use it from a thread, one at a time
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed save survives a power cut, as a case does
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, state TEXT NOT NULL)")
        return db

    # -- saving ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        next_save = time.monotonic() + self.interval_s
        try:
            while not await wait_or_stop(stop, min(self.interval_s, PROMPT_S)):
                if time.monotonic() >= next_save:
                    next_save = time.monotonic() + self.interval_s
                    await self.save(stop)
                elif self._prompted:
                    await self.save(stop, only=self._prompted)
            await self.save(None)
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def save(self, stop: asyncio.Event | None, only: set[str] | None = None) -> None:
        """Write the devices whose state changed (of them, those in `only` when given). Slices are taken
        only while the bus is settled; when it does not settle within `interval_s` (or `stop` is set)
        what was taken is written and the rest waits for the next save."""
        self._prompted = set()
        self._pending |= self.monitor.take_dirty()
        for tracker in self.trackers.values():
            self._pending |= tracker.take_changed()
        self._pending &= self.monitor.devices.keys()  # a counter of a device the rules do not know: not theirs
        todo = self._pending if only is None else self._pending & only
        rows: list[tuple[str, str]] = []
        deadline = time.monotonic() + self.interval_s
        while todo:
            while not self.settled():
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    self.counters["deferred"] += 1
                    if only is not None:
                        self._prompted |= todo  # still prompt
                    return await self._write(rows)
                await asyncio.sleep(SETTLE_POLL_S)
            rows += self._slice(todo)
            await asyncio.sleep(0)  # the loop's turn
        await self._write(rows)

    def _slice(self, todo: set[str]) -> list[tuple[str, str]]:
        """Rows of devices taken from `todo` (and so from the pending ones) for up to SLICE_S: each
        device's rules and counters together, as JSON."""
        rows = []
        start = time.perf_counter()
        end = start + SLICE_S
        while todo and (not rows or time.perf_counter() < end):  # one device at least
            device = todo.pop()
            self._pending.discard(device)
            state = self.monitor.export_state([device])
            row: dict[str, Any] = {"rules": state["devices"].get(device, {})}
            counts = {name: c for name, t in self.trackers.items() if (c := t.export(device)) is not None}
            if counts:
                row["counters"] = counts
            # the row as a member of the save's JSON document, `"device":{...}`, made here in the slice
            rows.append((device, f"{json.dumps(device)}:{json.dumps(row, separators=(',', ':'))}"))
        held_ms = (time.perf_counter() - start) * 1000
        self.counters["longest_slice_ms"] = round(max(self.counters["longest_slice_ms"], held_ms), 1)
        return rows

    async def _write(self, rows: list[tuple[str, str]]) -> None:
        epoch = self.monitor.export_state([])["epoch"]  # no device, only the monitor-wide epoch
        try:
            size = await asyncio.to_thread(self._commit, rows, epoch)
        except (OSError, sqlite3.Error) as exc:
            self._pending.update(device for device, _ in rows)  # written by the next save instead
            self.counters["errors"] += 1
            log.error("could not save sensor rule state to %s: %s", self.path, exc)
            return
        self.counters.update(saves=self.counters["saves"] + 1, bytes=size, devices=len(rows), last_save=time.time())

    def _commit(self, rows: list[tuple[str, str]], epoch: float | None) -> int:
        """In a thread: the rows in one transaction; returns the bytes written."""
        if self._db is None:
            self._db = self._connect()
        size = 0
        with self._db:
            for i in range(0, len(rows), ROWS_PER_STATEMENT):
                # rows as one JSON object {device: state}: SQLite keeps each state's text as it was written
                document = "{" + ",".join([member for _, member in rows[i:i + ROWS_PER_STATEMENT]]) + "}"
                self._db.execute("INSERT OR REPLACE INTO devices(device, state) SELECT key, value FROM json_each(?)",
                                 (document,))
                size += len(document)
            self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                 [("version", str(STATE_VERSION)), ("epoch", json.dumps(epoch))])
        return size


def _read(db: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, int]]]]:
    """The saved state as the monitor's `restore_state` takes it, and the counters per device."""
    meta = dict(db.execute("SELECT key, value FROM meta"))
    if not meta:
        return {}, {}
    devices, counts = {}, {}
    for device, text in db.execute("SELECT device, state FROM devices"):
        row = json.loads(text)
        devices[device] = row["rules"]
        if "counters" in row:
            counts[device] = row["counters"]
    return {"version": int(meta["version"]), "epoch": json.loads(meta["epoch"]), "devices": devices}, counts
