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
                (``Outbox(..., deliver=False)``); `retry()` turns one into ``pending``.

Bounds: enqueue raises `OutboxFull` when ``max_cases`` cases are pending (the caller alerts);
`is_near_full()` says when 80 % is reached. Delivered and stored cases are kept for the status
page and pruned beyond the newest ``keep_done``; pending and dead cases are never pruned.

Recurrences (`add_recurrence`) are counted locally; a case that is still pending carries them to
the central platform in its payload (``recurrences``, ``last_recurrence_at``, ``recurrence_facts``);
after delivery they stay local (the central platform gets no updates).

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

STATUSES: tuple[str, ...] = ("pending", "delivered", "dead", "stored")
MAX_DEAD_BODY = 64 * 1024  # bytes of a rejection's response body kept in the dead-letter table

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
"""


class OutboxFull(Exception):
    """Raised by `Outbox.enqueue` when ``max_cases`` cases are already pending."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A pending case handed to the delivery worker; `payload` is what the central platform gets."""

    case_id: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    at: datetime
    status_code: int
    response_body: str


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

    def to_case(self) -> Case:
        return Case.from_json(self.case)

    def to_json(self) -> dict[str, Any]:
        """The case JSON plus its delivery state in the local store (CLI and status API)."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {**self.case, "status": self.status, "attempts": self.attempts, "recurrences": self.recurrences,
                "last_error": self.last_error, "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at), "next_attempt_at": iso(self.next_attempt_at),
                "delivered_at": iso(self.delivered_at), "last_recurrence_at": iso(self.last_recurrence_at)}


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _epoch(value: datetime | float | None) -> float:
    if value is None:
        return time.time()
    if isinstance(value, datetime):
        require_aware(value, "outbox time")
        return value.timestamp()
    return float(value)


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
        self._pending = 0
        self._since_recount = 0
        self._done_since_prune = 0
        with self._lock:
            self._recount()

    # -- writing ---------------------------------------------------------------------------

    def enqueue(self, case: Case, now: datetime | float | None = None) -> bool:
        """Commit `case` durably; False if its case_id is already present (idempotent)."""
        return self.enqueue_many([case], now)[0]

    def enqueue_many(self, cases: Iterable[Case], now: datetime | float | None = None) -> list[bool]:
        """Commit several cases in one transaction (one fsync); one bool per case as in `enqueue`."""
        cases = list(cases)
        t = _epoch(now)
        status = "pending" if self.deliver else "stored"
        rows = [(c.case_id, t, json.dumps(c.to_json(), ensure_ascii=False), status, t, t) for c in cases]
        with self._lock:
            if self.deliver and self._pending + len(rows) > self.max_cases:
                self._recount()  # another process (the CLI) may have changed the count
                if self._pending + len(rows) > self.max_cases:
                    raise OutboxFull(
                        f"outbox {self.path} is full: {self._pending} of {self.max_cases} cases pending"
                    )
            added = []
            with self._tx():
                for row in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO cases (case_id, created_at, json, status, next_attempt_at,"
                        " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    added.append(cur.rowcount == 1)
            if self.deliver:
                self._pending += sum(added)
            self._maybe_recount(len(rows))
        return added

    def add_recurrence(
        self, case_id: str, at: datetime, facts: dict[str, Any] | None = None
    ) -> bool:
        """Count one more occurrence of an open case; False if the case is unknown."""
        t = _epoch(at)
        facts_json = None if facts is None else json.dumps(facts, ensure_ascii=False)
        with self._lock, self._tx():
            cur = self._db.execute(
                "UPDATE cases SET recurrences = recurrences + 1, last_recurrence_at = ?,"
                " recurrence_facts = COALESCE(?, recurrence_facts), updated_at = ? WHERE case_id = ?",
                (t, facts_json, time.time(), case_id),
            )
            return cur.rowcount == 1

    def mark_delivered(self, case_id: str, now: datetime | float | None = None) -> None:
        self.mark_delivered_many([case_id], now)

    def mark_delivered_many(self, case_ids: Iterable[str], now: datetime | float | None = None) -> None:
        """Record acknowledgements in one transaction."""
        t = _epoch(now)
        ids = list(case_ids)
        with self._lock:
            with self._tx():
                changed = 0
                for cid in ids:
                    cur = self._db.execute(
                        "UPDATE cases SET status = 'delivered', attempts = attempts + 1, delivered_at = ?,"
                        " last_error = NULL, updated_at = ? WHERE case_id = ? AND status = 'pending'",
                        (t, t, cid),
                    )
                    changed += cur.rowcount
            self._pending -= changed
            self._done_since_prune += changed
            if self._done_since_prune >= max(100, self.keep_done // 10):
                self._prune()

    def mark_failed(self, case_id: str, error: str, retry_at: datetime | float) -> None:
        """Record a failed attempt; the case is due again at `retry_at`."""
        t = time.time()
        with self._lock, self._tx():
            self._db.execute(
                "UPDATE cases SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                " updated_at = ? WHERE case_id = ? AND status = 'pending'",
                (error[:2000], _epoch(retry_at), t, case_id),
            )

    def mark_dead(self, case_id: str, status_code: int, body: str | bytes) -> None:
        """Move a permanently rejected case to the dead letters, keeping the response body."""
        if isinstance(body, bytes):
            body = body[:MAX_DEAD_BODY].decode("utf-8", errors="replace")
        else:
            body = body[:MAX_DEAD_BODY]
        t = time.time()
        with self._lock:
            with self._tx():
                cur = self._db.execute(
                    "UPDATE cases SET status = 'dead', attempts = attempts + 1, last_error = ?,"
                    " updated_at = ? WHERE case_id = ? AND status = 'pending'",
                    (f"rejected with HTTP {status_code}", t, case_id),
                )
                if cur.rowcount:
                    self._db.execute(
                        "INSERT INTO dead_letters (case_id, at, status_code, response_body)"
                        " VALUES (?, ?, ?, ?)",
                        (case_id, t, status_code, body),
                    )
            self._pending -= cur.rowcount

    def retry(self, case_id: str) -> bool:
        """Make a dead, stored or pending case due now; False if unknown or already delivered."""
        t = time.time()
        with self._lock:
            with self._tx():
                row = self._db.execute("SELECT status FROM cases WHERE case_id = ?", (case_id,)).fetchone()
                if row is None or row[0] == "delivered":
                    return False
                self._db.execute(
                    "UPDATE cases SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                    " WHERE case_id = ?",
                    (t, t, case_id),
                )
            if row[0] != "pending":
                self._pending += 1
            return True

    # -- reading ---------------------------------------------------------------------------

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

    def next_due_after(self, after: datetime | float) -> float | None:
        """Epoch seconds of the earliest pending attempt later than `after`, or None.

        The delivery worker sleeps until then: cases due earlier are already in its hands."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM cases WHERE status = 'pending' AND next_attempt_at > ?",
                (_epoch(after),),
            ).fetchone()
        return row[0]

    def get(self, case_id: str) -> CaseRecord | None:
        with self._lock:
            row = self._db.execute(_SELECT + " WHERE c.case_id = ?", (case_id,)).fetchone()
        return None if row is None else _record(row)

    def dead_letters(self, case_id: str) -> list[DeadLetter]:
        """Every rejection of one case, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, status_code, response_body FROM dead_letters WHERE case_id = ? ORDER BY at, id",
                (case_id,),
            ).fetchall()
        return [DeadLetter(_dt(at), code, body) for at, code, body in rows]

    def counts(self) -> dict[str, int]:
        """Number of cases per status (every status present, zero if none)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update(dict(rows))
        return out

    def fill_ratio(self) -> float:
        """Pending cases as a fraction of ``max_cases``."""
        with self._lock:
            return self._pending / self.max_cases

    def is_near_full(self, threshold: float = 0.8) -> bool:
        return self.fill_ratio() >= threshold

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    # -- internals (called with the lock held) ----------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _recount(self) -> None:
        row = self._db.execute("SELECT COUNT(*) FROM cases WHERE status = 'pending'").fetchone()
        self._pending = row[0]
        self._since_recount = 0

    def _maybe_recount(self, n: int) -> None:
        # The cached count drifts only if another process writes (the CLI's retry): refresh now and then.
        self._since_recount += n
        if self._since_recount >= 1000:
            self._recount()

    def _prune(self) -> None:
        self._done_since_prune = 0
        with self._tx():
            for status in ("delivered", "stored"):
                self._db.execute(
                    "DELETE FROM cases WHERE status = ? AND case_id NOT IN (SELECT case_id FROM cases"
                    " WHERE status = ? ORDER BY COALESCE(delivered_at, created_at) DESC LIMIT ?)",
                    (status, status, self.keep_done),
                )


_SELECT = (
    "SELECT c.case_id, c.status, c.created_at, c.updated_at, c.attempts, c.next_attempt_at, c.last_error,"
    " c.delivered_at, c.recurrences, c.last_recurrence_at, c.json,"
    " (SELECT d.at FROM dead_letters d WHERE d.case_id = c.case_id ORDER BY d.at DESC, d.id DESC LIMIT 1),"
    " (SELECT d.status_code FROM dead_letters d WHERE d.case_id = c.case_id ORDER BY d.at DESC, d.id DESC"
    " LIMIT 1),"
    " (SELECT d.response_body FROM dead_letters d WHERE d.case_id = c.case_id ORDER BY d.at DESC, d.id DESC"
    " LIMIT 1)"
    " FROM cases c"
)


def _record(row: tuple) -> CaseRecord:
    (cid, status, created, updated, attempts, next_at, err, delivered, rec, rec_at, js, d_at, d_code,
     d_body) = row
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
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the stdlib context manager would not BEGIN)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
