"""Durable store-and-forward queue for cases, and the gateway's local case store (SQLite, WAL).

A case is committed here (synchronous=FULL: the WAL is fsynced before `enqueue` returns) before
anything else learns of it; the delivery worker (gateway/sinks/central.py) marks it delivered only
after the central platform acknowledged it. A `kill -9` or a power cut at any instant therefore
loses nothing; at worst a case is sent twice, and its `case_id` is the idempotency key.

Statuses:
- ``pending``   waiting for delivery (due at ``next_attempt_at``);
- ``delivered`` acknowledged by the central platform;
- ``dead``      permanently rejected (4xx other than 408/429); see ``dead_letters``;
- ``stored``    kept locally only, because the deployment has no central platform
                (``Outbox(..., deliver=False)``); `retry()` turns one into ``pending``;
- ``held``      waiting for an operator's review (its rule is in review mode, `cases.review`): never
                handed to the delivery worker; `confirm()` turns it into ``pending`` (or ``stored``);
- ``rejected``  an operator rejected it before the central platform heard of it: never sent.

Review before dispatch: `confirm()` and `reject()` record the operator's decision (``review``,
``reviewed_by``, ``reviewed_at``, ``review_reason``) on the case row. A held case's events wait
behind it like any event behind an undelivered case; rejecting it rejects them too and sets its
state to withdrawn (later alerts are only counted). Rejecting a case the platform may already have
(pending or delivered) commits a ``withdrawn`` event instead. `review_counts()` feeds each rule's
precision (confirmed / reviewed).

Bounds: enqueue raises `OutboxFull` when ``max_cases`` cases are pending or held (`has_room()` asks first,
so the case desk refuses a case before it writes evidence; the caller alerts);
`is_near_full()` says when 80 % is reached. Delivered and stored cases are kept for the status
page and pruned beyond the newest ``keep_done`` (with their events); pending and dead cases and
those with an undelivered event are never pruned.

Case lifecycle: the case row is the ``opened`` event (sequence 1, its id is the case_id). Later
events -- ``updated`` (reopened, recurrence, escalated; with new evidence), ``cleared``, ``withdrawn`` -- are
rows of the ``events`` table with their own id (``<case_id>:<seq>``) and the next sequence number,
committed in the same transaction as the case's new state (open, cleared, withdrawn) and severity.
They have the same statuses and guarantees as cases; `due_events` hands out an event only once its
case and every earlier event of that case are delivered, so a platform sees each case's events in
order, and one case's failing event never holds back another case. Recurrences are also counted on
the case row: a case that is still pending carries them in its payload (``recurrences``, ...).

Counters: `counts()` and `fill_ratio()` read a small table kept by triggers (``outbox_counts``) on
a separate read connection, so the status page and the ticks never scan the outbox nor wait for
the commit lock held during an fsync; another process's writes (the CLI) keep it exact too.

Threading: every method is synchronous and thread-safe (one connection behind a lock). A commit
waits for one fsync: 0.2 ms on an idle disk, several ms on a busy one or an SD card, so async code
should call ``await asyncio.to_thread(outbox.enqueue, case)`` and then ``delivery.notify()``
(CentralDelivery itself does all its outbox calls in threads). `enqueue_many` commits a batch with
one fsync. Reads are cheap and may be called directly. One process owns an outbox file for
writing; other processes (the CLI) may open the same file: SQLite's locking keeps them consistent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.model import Case, require_aware

STATUSES: tuple[str, ...] = ("pending", "delivered", "dead", "stored", "held", "rejected")
REVIEWS: tuple[str, ...] = ("confirmed", "rejected")
MAX_REASON = 500  # characters of an operator's reason kept
CASE_STATES: tuple[str, ...] = ("open", "cleared", "withdrawn")
EVENT_KINDS: tuple[str, ...] = ("opened", "updated", "cleared", "withdrawn")
MAX_DEAD_BODY = 64 * 1024  # bytes of a rejection's response body kept in the dead-letter table
MAX_REPLY = 2000  # characters of the platform's reply (or of an error) kept per case or event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id            TEXT PRIMARY KEY,
    created_at         REAL NOT NULL,
    json               TEXT NOT NULL,
    status             TEXT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    REAL NOT NULL,
    last_error         TEXT,
    delivered_at       REAL,
    recurrences        INTEGER NOT NULL DEFAULT 0,
    last_recurrence_at REAL,
    recurrence_facts   TEXT,
    updated_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_due ON cases (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS cases_created ON cases (created_at);
CREATE INDEX IF NOT EXISTS cases_done ON cases (status, delivered_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id       TEXT NOT NULL,
    at            REAL NOT NULL,
    status_code   INTEGER NOT NULL,
    response_body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_case ON dead_letters (case_id, at);
CREATE TABLE IF NOT EXISTS events (
    event_id        TEXT PRIMARY KEY,
    case_id         TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    created_at      REAL NOT NULL,
    json            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    delivered_at    REAL,
    reply           TEXT,
    updated_at      REAL NOT NULL,
    ready           INTEGER NOT NULL DEFAULT 0,  -- 1 once the case and every earlier event are delivered
    UNIQUE (case_id, seq)
);
CREATE INDEX IF NOT EXISTS events_due ON events (status, ready, next_attempt_at);
CREATE TABLE IF NOT EXISTS outbox_counts (
    tbl    TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tbl, status)
);
"""

# Columns added since the first schema: a store written by an older gateway is upgraded in place.
_ADDED_COLUMNS = {
    "cases": {"state": "TEXT NOT NULL DEFAULT 'open'", "severity": "TEXT", "last_seq": "INTEGER NOT NULL DEFAULT 1",
              "reply": "TEXT", "review": "TEXT", "reviewed_at": "REAL", "reviewed_by": "TEXT", "review_reason": "TEXT"},
    "dead_letters": {"event_id": "TEXT"},
}


def _count_triggers(table: str) -> str:
    bump = (f"INSERT INTO outbox_counts (tbl, status, n) VALUES ('{table}', NEW.status, 1)"
            " ON CONFLICT (tbl, status) DO UPDATE SET n = n + 1;")
    drop = f"UPDATE outbox_counts SET n = n - 1 WHERE tbl = '{table}' AND status = OLD.status;"
    return f"""
CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} BEGIN {bump} END;
CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} BEGIN {drop} END;
CREATE TRIGGER {table}_count_update AFTER UPDATE OF status ON {table} WHEN OLD.status IS NOT NEW.status
BEGIN {drop} {bump} END;
"""


class OutboxFull(Exception):
    """Raised by `Outbox.enqueue` when ``max_cases`` cases are already pending or held."""


class ReviewError(Exception):
    """A confirm or reject that the case's review state does not allow; the message says why."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A pending case or case event handed to the delivery worker; `payload` is what the central
    platform gets. A case (its ``opened`` event) has no `event_id`."""

    case_id: str
    payload: dict[str, Any]
    attempts: int
    event_id: str | None = None

    @property
    def key(self) -> str:
        """The idempotency key: the event's id, or the case_id for the case itself."""
        return self.event_id or self.case_id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    at: datetime
    status_code: int
    response_body: str


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One lifecycle event of a case as stored (the ``opened`` event is the case row itself)."""

    event_id: str
    case_id: str
    seq: int
    kind: str
    status: str
    created_at: datetime
    attempts: int
    last_error: str | None
    reply: str | None  # the platform's answer to the delivering request
    delivered_at: datetime | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """One row of the local case store, for the CLI and the status page."""

    case_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    attempts: int
    next_attempt_at: datetime | None  # None unless pending
    last_error: str | None
    delivered_at: datetime | None
    recurrences: int
    last_recurrence_at: datetime | None
    case: dict[str, Any]  # Case.to_json()
    dead_letter: DeadLetter | None  # the latest rejection, if any
    state: str = "open"  # open | cleared | withdrawn
    severity: str | None = None  # now (an escalation raises it above the case JSON's)
    reply: str | None = None
    review: dict[str, Any] | None = None  # {decision, by, at, reason} once an operator reviewed it

    def to_case(self) -> Case:
        return Case.from_json(self.case)

    def to_json(self) -> dict[str, Any]:
        """The case JSON plus its delivery state in the local store (CLI and status API)."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {**self.case, "status": self.status, "attempts": self.attempts, "recurrences": self.recurrences,
                "last_error": self.last_error, "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at), "next_attempt_at": iso(self.next_attempt_at),
                "delivered_at": iso(self.delivered_at), "last_recurrence_at": iso(self.last_recurrence_at),
                "state": self.state, "current_severity": self.severity or self.case.get("severity"),
                "review": self.review}


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _epoch(value: datetime | float | None) -> float:
    if value is None:
        return time.time()
    if isinstance(value, datetime):
        require_aware(value, "outbox time")
        return value.timestamp()
    return float(value)


def event_id(case_id: str, seq: int) -> str:
    """Id of a case's `seq`-th event: stable, so a re-sent event carries the same idempotency key."""
    return case_id if seq == 1 else f"{case_id}:{seq}"


class Outbox:
    """The durable case queue and local case store at `path` (created if missing)."""

    def __init__(
        self,
        path: str | Path,
        max_cases: int = 100_000,
        *,
        keep_done: int = 10_000,
        deliver: bool = True,
    ) -> None:
        if max_cases < 1:
            raise ValueError(f"Outbox max_cases must be >= 1, got {max_cases}")
        self.path = Path(path)
        self.max_cases = max_cases
        self.keep_done = keep_done
        self.deliver = deliver
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each commit is explicit.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._lock:
            self._upgrade()
        # Counters are read on their own connection: a WAL reader never waits for the writer's fsync.
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._read_lock = threading.Lock()
        self._done_since_prune = 0
        self._initial = "pending" if deliver else "stored"

    # -- writing ---------------------------------------------------------------------------

    def enqueue(self, case: Case, now: datetime | float | None = None, *, held: bool = False) -> bool:
        """Commit `case` durably (``held``: waiting for an operator's review); False if its case_id
        is already present (idempotent)."""
        return self.enqueue_many([case], now, held=held)[0]

    def enqueue_many(self, cases: Iterable[Case], now: datetime | float | None = None, *,
                     held: bool = False) -> list[bool]:
        """Commit several cases in one transaction (one fsync); one bool per case as in `enqueue`."""
        cases = list(cases)
        t = _epoch(now)
        status = "held" if held else self._initial
        rows = [(c.case_id, t, json.dumps(c.to_json(), ensure_ascii=False), status, t, t, c.severity)
                for c in cases]
        with self._lock:
            added = []
            with self._tx():
                if self.deliver:
                    pending = self._count(self._db, "cases", "pending") + self._count(self._db, "cases", "held")
                    if pending + len(rows) > self.max_cases:
                        raise OutboxFull(f"outbox {self.path} is full: {pending} of {self.max_cases} cases"
                                         " pending or held")
                for row in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO cases (case_id, created_at, json, status, next_attempt_at,"
                        " updated_at, severity) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    added.append(cur.rowcount == 1)
        return added

    def add_event(self, case_id: str, kind: str, at: datetime, body: dict[str, Any], *,
                  state: str | None = None, severity: str | None = None,
                  recurrence_facts: dict[str, Any] | None = None, recurrence: bool = False) -> CaseEvent | None:
        """Commit the case's next lifecycle event, with the case's new `state` and `severity`, in
        one transaction; None if the case is unknown. `recurrence` also counts one more occurrence."""
        if kind not in EVENT_KINDS[1:]:
            raise ValueError(f"unknown case event kind {kind!r}; expected one of {', '.join(EVENT_KINDS[1:])}")
        if state is not None and state not in CASE_STATES:
            raise ValueError(f"unknown case state {state!r}; expected one of {', '.join(CASE_STATES)}")
        with self._lock, self._tx():
            return self._add_event(case_id, kind, at, body, state=state, severity=severity,
                                   recurrence_facts=recurrence_facts, recurrence=recurrence)

    def _add_event(self, case_id: str, kind: str, at: datetime, body: dict[str, Any], *,
                   state: str | None = None, severity: str | None = None,
                   recurrence_facts: dict[str, Any] | None = None, recurrence: bool = False) -> CaseEvent | None:
        """`add_event` inside the caller's lock and transaction."""
        t_at = _epoch(at)
        now = time.time()
        row = self._db.execute("SELECT last_seq, status FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            return None
        status = "rejected" if row[1] == "rejected" else self._initial  # a rejected case sends nothing
        seq = row[0] + 1
        ready = self._delivered(case_id, seq - 1, row[1])
        eid = event_id(case_id, seq)
        payload = {"event_id": eid, "case_id": case_id, "seq": seq, "kind": kind,
                   "at": at.isoformat(), **body}
        if state is not None:
            payload.setdefault("state", state)
        js = json.dumps(payload, ensure_ascii=False)
        self._db.execute(
            "INSERT INTO events (event_id, case_id, seq, kind, created_at, json, status, next_attempt_at,"
            " updated_at, ready) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (eid, case_id, seq, kind, now, js, status, now, now, int(ready)))
        facts_json = None if recurrence_facts is None else json.dumps(recurrence_facts, ensure_ascii=False)
        self._db.execute(
            "UPDATE cases SET last_seq = ?, state = COALESCE(?, state), severity = COALESCE(?, severity),"
            " recurrences = recurrences + ?, last_recurrence_at = CASE WHEN ? THEN ? ELSE last_recurrence_at END,"
            " recurrence_facts = CASE WHEN ? THEN COALESCE(?, recurrence_facts) ELSE recurrence_facts END,"
            " updated_at = ? WHERE case_id = ?",
            (seq, state, severity, int(recurrence), recurrence, t_at, recurrence, facts_json, now, case_id))
        return CaseEvent(eid, case_id, seq, kind, status, _dt(now), 0, None, None, None, payload)

    def withdraw(self, case_id: str, reason: str, by: str, at: datetime | None = None) -> CaseEvent | None:
        """An operator rejected the case: commit a ``withdrawn`` event; None if the case is unknown or
        already withdrawn, or if it was held for review (it becomes ``rejected``: never sent). Callable from any process that opens the store (the CLI, the console)."""
        if not reason.strip():
            raise ValueError("a withdrawal needs a reason")
        with self._lock, self._tx():
            row = self._db.execute("SELECT status, state FROM cases WHERE case_id = ?", (case_id,)).fetchone()
            if row is None or row[1] == "withdrawn":
                return None
            return self._withdraw(case_id, row[0], reason, by, at or datetime.now(UTC))

    def _withdraw(self, case_id: str, status: str, reason: str, by: str, at: datetime) -> CaseEvent | None:
        """In the caller's transaction: a held case (the platform never heard of it) is rejected here
        and its events with it; any other gets a withdrawn event (pending: perhaps in flight)."""
        if status == "held":
            t = time.time()
            self._db.execute("UPDATE cases SET status = 'rejected', state = 'withdrawn', updated_at = ?"
                             " WHERE case_id = ?", (t, case_id))
            self._db.execute("UPDATE events SET status = 'rejected', updated_at = ? WHERE case_id = ?"
                             " AND status != 'delivered'", (t, case_id))
            return None
        return self._add_event(case_id, "withdrawn", at, {"reason": reason, "by": by}, state="withdrawn")

    def confirm(self, case_id: str, by: str, reason: str = "", at: datetime | None = None) -> str | None:
        """An operator confirmed the case: a held one becomes due now (``pending``, or ``stored``
        without a central platform), any other is only marked confirmed (its rule's precision).
        Returns the case's status, None if unknown; ReviewError if it was already reviewed."""
        t = _epoch(at)
        with self._lock, self._tx():
            row = self._db.execute("SELECT status, review, reviewed_by FROM cases WHERE case_id = ?",
                                   (case_id,)).fetchone()
            if row is None:
                return None
            status, review, reviewed_by = row
            if review is not None:
                raise ReviewError(f"case {case_id} was already {review} by {reviewed_by}")
            if status == "held":
                status = self._initial
                self._db.execute("UPDATE cases SET status = ?, next_attempt_at = ? WHERE case_id = ?",
                                 (status, t, case_id))
            self._record_review(case_id, "confirmed", by, reason, t)
            return status

    def reject(self, case_id: str, reason: str, by: str, at: datetime | None = None) -> tuple[str, CaseEvent | None] | None:
        """An operator rejected the case (not a real problem): a held one becomes ``rejected`` and is
        never sent; any other (delivered, or pending: perhaps in flight) is withdrawn through a
        ``withdrawn`` event. Returns (status, that event or None), None if the
        case is unknown; ReviewError if it was already rejected; ValueError without a reason."""
        if not reason.strip():
            raise ValueError("a rejection needs a reason")
        when = at or datetime.now(UTC)
        with self._lock, self._tx():
            row = self._db.execute("SELECT status, state, review, reviewed_by FROM cases WHERE case_id = ?",
                                   (case_id,)).fetchone()
            if row is None:
                return None
            status, state, review, reviewed_by = row
            if review == "rejected":
                raise ReviewError(f"case {case_id} was already rejected by {reviewed_by}")
            event = None if state == "withdrawn" else self._withdraw(case_id, status, reason, by, when)
            self._record_review(case_id, "rejected", by, reason, when.timestamp())
            new = self._db.execute("SELECT status FROM cases WHERE case_id = ?", (case_id,)).fetchone()[0]
            return new, event

    def _record_review(self, case_id: str, decision: str, by: str, reason: str, t: float) -> None:
        self._db.execute("UPDATE cases SET review = ?, reviewed_by = ?, reviewed_at = ?, review_reason = ?,"
                         " updated_at = ? WHERE case_id = ?",
                         (decision, by[:200], t, reason.strip()[:MAX_REASON] or None, time.time(), case_id))

    def mark_delivered(self, case_id: str, now: datetime | float | None = None) -> None:
        self.mark_delivered_many([case_id], now)

    def mark_delivered_many(self, case_ids: Iterable[str], now: datetime | float | None = None,
                            replies: dict[str, str] | None = None) -> None:
        """Record acknowledgements of cases and events (by their key) in one transaction."""
        t = _epoch(now)
        ids = list(case_ids)
        replies = replies or {}
        with self._lock:
            with self._tx():
                changed = 0
                for key in ids:
                    table, col = self._table_of(key)
                    cur = self._db.execute(
                        f"UPDATE {table} SET status = 'delivered', attempts = attempts + 1, delivered_at = ?,"
                        f" last_error = NULL, reply = ?, updated_at = ? WHERE {col} = ? AND status = 'pending'",
                        (t, replies.get(key, "")[:MAX_REPLY] or None, t, key),
                    )
                    changed += cur.rowcount
                    if cur.rowcount:  # the case's next event may go now
                        case_id, _, seq = key.partition(":")
                        self._db.execute("UPDATE events SET ready = 1 WHERE case_id = ? AND seq = ?",
                                         (case_id, int(seq or 1) + 1))
            self._done_since_prune += changed
            if self._done_since_prune >= max(100, self.keep_done // 10):
                self._prune()

    def mark_failed(self, case_id: str, error: str, retry_at: datetime | float) -> None:
        """Record a failed attempt of a case or event (by its key); it is due again at `retry_at`."""
        t = time.time()
        table, col = self._table_of(case_id)
        with self._lock, self._tx():
            self._db.execute(
                f"UPDATE {table} SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                f" updated_at = ? WHERE {col} = ? AND status = 'pending'",
                (error[:MAX_REPLY], _epoch(retry_at), t, case_id),
            )

    def mark_dead(self, case_id: str, status_code: int, body: str | bytes) -> None:
        """Move a permanently rejected case or event to the dead letters, keeping the response body."""
        if isinstance(body, bytes):
            body = body[:MAX_DEAD_BODY].decode("utf-8", errors="replace")
        else:
            body = body[:MAX_DEAD_BODY]
        t = time.time()
        table, col = self._table_of(case_id)
        with self._lock, self._tx():
            row = (self._db.execute(f"SELECT case_id FROM {table} WHERE {col} = ? AND status = 'pending'",
                                    (case_id,)).fetchone())
            if row is None:
                return
            self._db.execute(
                f"UPDATE {table} SET status = 'dead', attempts = attempts + 1, last_error = ?,"
                f" updated_at = ? WHERE {col} = ?",
                (f"rejected with HTTP {status_code}", t, case_id),
            )
            self._db.execute(
                "INSERT INTO dead_letters (case_id, at, status_code, response_body, event_id) VALUES (?, ?, ?, ?, ?)",
                (row[0], t, status_code, body, None if table == "cases" else case_id),
            )

    def retry(self, case_id: str) -> bool:
        """Make a dead, stored or pending case (and its dead or stored events), or one event by its
        id, due now; False if unknown or nothing is left to deliver. A held case waits for `confirm`
        and a rejected one is never sent: retry leaves both alone."""
        t = time.time()
        table, col = self._table_of(case_id)
        with self._lock, self._tx():
            row = self._db.execute(f"SELECT status FROM {table} WHERE {col} = ?", (case_id,)).fetchone()
            if row is None or row[0] in ("held", "rejected"):
                return False
            changed = 0
            if row[0] != "delivered":
                changed += self._db.execute(
                    f"UPDATE {table} SET status = 'pending', next_attempt_at = ?, updated_at = ? WHERE {col} = ?",
                    (t, t, case_id)).rowcount
            if table == "cases":  # the case's undelivered events follow it
                changed += self._db.execute(
                    "UPDATE events SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                    " WHERE case_id = ? AND status NOT IN ('delivered', 'rejected')", (t, t, case_id)).rowcount
            return changed > 0

    # -- reading ---------------------------------------------------------------------------

    def has_room(self, n: int = 1) -> bool:
        """Whether `n` more cases fit (always, for a store without delivery); a cheap read."""
        return not self.deliver or self._undelivered() + n <= self.max_cases

    def due(self, now: datetime | float | None = None, limit: int = 50) -> list[OutboxItem]:
        """Pending cases whose next attempt is due, oldest due first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT case_id, json, attempts, recurrences, last_recurrence_at, recurrence_facts"
                " FROM cases WHERE status = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (_epoch(now), limit),
            ).fetchall()
        items = []
        for cid, js, attempts, rec, rec_at, rec_facts in rows:
            payload = json.loads(js)
            if rec:
                payload["recurrences"] = rec
                payload["last_recurrence_at"] = _dt(rec_at).isoformat()
                if rec_facts is not None:
                    payload["recurrence_facts"] = json.loads(rec_facts)
            items.append(OutboxItem(cid, payload, attempts))
        return items

    def due_events(self, now: datetime | float | None = None, limit: int = 50) -> list[OutboxItem]:
        """Pending events that are due and whose case and earlier events are all delivered (`ready`,
        set when the predecessor is acknowledged: events waiting behind an undelivered case are
        never scanned)."""
        if not self._read_count("events", "pending"):
            return []  # the usual case: skip the query
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, case_id, json, attempts FROM events"
                " WHERE status = 'pending' AND ready = 1 AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (_epoch(now), limit),
            ).fetchall()
        return [OutboxItem(cid, json.loads(js), attempts, eid) for eid, cid, js, attempts in rows]

    def next_due_after(self, after: datetime | float) -> float | None:
        """Epoch seconds of the earliest pending attempt (case or event) later than `after`, or None.

        The delivery worker sleeps until then: cases due earlier are already in its hands."""
        t = _epoch(after)
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM cases WHERE status = 'pending' AND next_attempt_at > ?", (t,),
            ).fetchone()
            ev = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM events WHERE status = 'pending' AND next_attempt_at > ?", (t,),
            ).fetchone()
        times = [x for x in (row[0], ev[0]) if x is not None]
        return min(times) if times else None

    def get(self, case_id: str) -> CaseRecord | None:
        with self._lock:
            row = self._db.execute(_SELECT + " WHERE c.case_id = ?", (case_id,)).fetchone()
        return None if row is None else _record(row)

    def case_state(self, case_id: str) -> tuple[str, str | None] | None:
        """(state, current severity) of a case, or None if unknown."""
        with self._read_lock:
            return self._reader.execute("SELECT state, severity FROM cases WHERE case_id = ?",
                                        (case_id,)).fetchone()

    def open_cases(self, subject_kind: str) -> list[CaseRecord]:
        """The cases about subjects of one kind whose condition is still open (state open, held ones
        included), oldest first: what the sensor rules square their restored state with at start-up."""
        with self._lock:
            rows = self._db.execute(
                _SELECT + " WHERE c.state = 'open' AND json_extract(c.json, '$.subject.kind') = ?"
                " ORDER BY c.created_at, c.case_id", (subject_kind,)).fetchall()
        return [_record(r) for r in rows]

    def events(self, case_id: str) -> list[CaseEvent]:
        """The events after ``opened``, in sequence order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, case_id, seq, kind, status, created_at, attempts, last_error, reply,"
                " delivered_at, json FROM events WHERE case_id = ? ORDER BY seq", (case_id,)).fetchall()
        return [CaseEvent(eid, cid, seq, kind, status, _dt(created), attempts, err, reply, _dt(delivered),
                          json.loads(js))
                for eid, cid, seq, kind, status, created, attempts, err, reply, delivered, js in rows]

    def dead_letters(self, case_id: str) -> list[DeadLetter]:
        """Every rejection of one case or event (by its key), oldest first."""
        where = "case_id = ? AND event_id IS NULL" if self._table_of(case_id)[0] == "cases" else "event_id = ?"
        with self._lock:
            rows = self._db.execute(
                f"SELECT at, status_code, response_body FROM dead_letters WHERE {where} ORDER BY at, id",
                (case_id,),
            ).fetchall()
        return [DeadLetter(_dt(at), code, body) for at, code, body in rows]

    def review_counts(self, since: datetime | float) -> dict[str, tuple[int, int]]:
        """(confirmed, rejected) per rule of the cases reviewed at or after `since` (the rule
        precision's numbers); through the reviewed_at index, on the read connection."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT json_extract(json, '$.rule'), SUM(review = 'confirmed'), SUM(review = 'rejected')"
                " FROM cases WHERE reviewed_at IS NOT NULL AND reviewed_at >= ? GROUP BY 1",
                (_epoch(since),)).fetchall()
        return {str(rule): (int(c), int(r)) for rule, c, r in rows}

    def reviewed(self, since: datetime | float | None = None, *, source: str | None = None,
                 limit: int = 100_000) -> list[CaseRecord]:
        """Cases an operator confirmed or rejected (at or after `since`), oldest review first."""
        terms, args = ["c.reviewed_at IS NOT NULL"], []
        if since is not None:
            terms.append("c.reviewed_at >= ?")
            args.append(_epoch(since))
        if source is not None:
            terms.append("json_extract(c.json, '$.source') = ?")
            args.append(source)
        with self._lock:
            rows = self._db.execute(_SELECT + " WHERE " + " AND ".join(terms) + " ORDER BY c.reviewed_at LIMIT ?",
                                    (*args, limit)).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of cases per status (every status present, zero if none); reads the counters
        table, never the cases, and never waits for a commit."""
        return self._counts("cases")

    def event_counts(self) -> dict[str, int]:
        """Number of lifecycle events (after ``opened``) per status."""
        return self._counts("events")

    def fill_ratio(self) -> float:
        """Pending and held cases as a fraction of ``max_cases``."""
        return self._undelivered() / self.max_cases

    def is_near_full(self, threshold: float = 0.8) -> bool:
        return self.fill_ratio() >= threshold

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list(self, status: str | None = None, limit: int = 50) -> list[CaseRecord]:
        """The newest cases, optionally of one status (defined last: `list` shadows the builtin)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown case status {status!r}; expected one of {', '.join(STATUSES)}")
        where, args = ("", ()) if status is None else (" WHERE c.status = ?", (status,))
        with self._lock:
            rows = self._db.execute(
                _SELECT + where + " ORDER BY c.created_at DESC, c.case_id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [_record(r) for r in rows]

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _table_of(key: str) -> tuple[str, str]:
        """Cases are keyed by case_id, events by event_id (`<case_id>:<seq>`; a gateway id has no colon)."""
        return ("events", "event_id") if ":" in key else ("cases", "case_id")

    def _counts(self, table: str) -> dict[str, int]:
        with self._read_lock:
            rows = self._reader.execute("SELECT status, n FROM outbox_counts WHERE tbl = ?", (table,)).fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update(dict(rows))
        return out

    def _undelivered(self) -> int:
        return self._read_count("cases", "pending") + self._read_count("cases", "held")

    def _read_count(self, table: str, status: str) -> int:
        with self._read_lock:
            return self._count(self._reader, table, status)

    @staticmethod
    def _count(db: sqlite3.Connection, table: str, status: str) -> int:
        row = db.execute("SELECT n FROM outbox_counts WHERE tbl = ? AND status = ?", (table, status)).fetchone()
        return row[0] if row else 0

    def _delivered(self, case_id: str, seq: int, case_status: str) -> bool:
        """Whether event `seq` of the case (1: the case itself) is acknowledged; in a transaction."""
        if seq == 1:
            return case_status == "delivered"
        row = self._db.execute("SELECT status FROM events WHERE case_id = ? AND seq = ?", (case_id, seq)).fetchone()
        return row is not None and row[0] == "delivered"

    def _upgrade(self) -> None:
        """Add the columns and counting triggers a store from an older version lacks (called once)."""
        with self._tx():
            for table, columns in _ADDED_COLUMNS.items():
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns.items():
                    if name not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            triggers = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
            for table in ("cases", "events"):
                if f"{table}_count_insert" in triggers:
                    continue
                self._db.execute("DELETE FROM outbox_counts WHERE tbl = ?", (table,))
                self._db.execute(f"INSERT INTO outbox_counts (tbl, status, n) SELECT '{table}', status, COUNT(*)"
                                 f" FROM {table} GROUP BY status")
                for statement in _count_triggers(table).split("END;"):
                    if statement.strip():
                        self._db.execute(statement + "END;")
            self._db.execute("CREATE INDEX IF NOT EXISTS cases_reviewed ON cases (reviewed_at)"
                             " WHERE reviewed_at IS NOT NULL")

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _prune(self) -> None:
        """Called with the lock held."""
        self._done_since_prune = 0
        with self._tx():
            for status in ("delivered", "stored", "rejected"):
                self._db.execute(
                    "DELETE FROM cases WHERE status = ? AND case_id NOT IN (SELECT case_id"
                    " FROM cases WHERE status = ? ORDER BY COALESCE(delivered_at, created_at) DESC LIMIT ?)"
                    " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.case_id = cases.case_id"
                    " AND e.status IN ('pending', 'dead'))",
                    (status, status, self.keep_done),
                )
            self._db.execute("DELETE FROM events WHERE NOT EXISTS"
                             " (SELECT 1 FROM cases c WHERE c.case_id = events.case_id)")


_SELECT = (
    "SELECT c.case_id, c.status, c.created_at, c.updated_at, c.attempts, c.next_attempt_at, c.last_error,"
    " c.delivered_at, c.recurrences, c.last_recurrence_at, c.json, c.state, c.severity, c.reply,"
    " c.review, c.reviewed_by, c.reviewed_at, c.review_reason,"
    " (SELECT d.at FROM dead_letters d WHERE d.case_id = c.case_id AND d.event_id IS NULL"
    " ORDER BY d.at DESC, d.id DESC LIMIT 1),"
    " (SELECT d.status_code FROM dead_letters d WHERE d.case_id = c.case_id AND d.event_id IS NULL"
    " ORDER BY d.at DESC, d.id DESC LIMIT 1),"
    " (SELECT d.response_body FROM dead_letters d WHERE d.case_id = c.case_id AND d.event_id IS NULL"
    " ORDER BY d.at DESC, d.id DESC LIMIT 1)"
    " FROM cases c"
)


def _record(row: tuple) -> CaseRecord:
    (cid, status, created, updated, attempts, next_at, err, delivered, rec, rec_at, js, state, severity, reply,
     review, reviewed_by, reviewed_at, review_reason, d_at, d_code, d_body) = row
    return CaseRecord(
        case_id=cid,
        status=status,
        created_at=_dt(created),
        updated_at=_dt(updated),
        attempts=attempts,
        next_attempt_at=_dt(next_at) if status == "pending" else None,
        last_error=err,
        delivered_at=_dt(delivered),
        recurrences=rec,
        last_recurrence_at=_dt(rec_at),
        case=json.loads(js),
        dead_letter=None if d_at is None else DeadLetter(_dt(d_at), d_code, d_body),
        state=state,
        severity=severity,
        reply=reply,
        review=None if review is None else {"decision": review, "by": reviewed_by,
                                            "at": _dt(reviewed_at).isoformat(), "reason": review_reason},
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the stdlib context manager would not BEGIN)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
