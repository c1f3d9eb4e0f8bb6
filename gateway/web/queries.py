"""Read-only queries over the case store for the console: filters, text search, pages.

The outbox (gateway/outbox.py) answers the gateway's own questions; the console asks others
(by street, by text, page 3 of 40) on its own read-only SQLite connection, so a slow search
never holds the outbox's lock while the case desk commits. Rows are decoded by the outbox's
own row reader, so the two never disagree about a case.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.outbox import _SELECT, STATUSES, CaseRecord, _record

MAX_PAGE = 200  # cases per page at most
FACET_CASES = 5000  # filter menus offer the values of the newest cases only
FACETS_TTL_S = 300.0  # the menus are recomputed at most this often (a scan of the newest cases)
SOURCES = ("video", "vehicle", "sensor", "system")


class QueryError(ValueError):
    """A filter value that cannot be used; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class CaseQuery:
    status: str | None = None
    source: str | None = None
    category: str | None = None  # catalog key, code or name
    rule: str | None = None
    grid: str | None = None  # unit-grid code (prefix matches)
    street: str | None = None
    since: datetime | None = None  # filed at or after
    until: datetime | None = None  # filed before
    text: str | None = None
    limit: int = 50
    offset: int = 0

    @classmethod
    def from_params(cls, params, tz) -> CaseQuery:
        """From URL query parameters (a Mapping of str); naive times are in `tz`."""
        def get(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            return value or None

        def when(name: str) -> datetime | None:
            raw = get(name)
            if raw is None:
                return None
            try:
                t = datetime.fromisoformat(raw)
            except ValueError as exc:
                raise QueryError(f"{name}: expected a date or time like 2026-11-23T09:00, got {raw!r}") from exc
            return t if t.tzinfo is not None else t.replace(tzinfo=tz)

        def number(name: str, default: int, lo: int, hi: int) -> int:
            raw = get(name)
            try:
                value = default if raw is None else int(raw)
            except ValueError:
                value = lo - 1
            if not lo <= value <= hi:
                raise QueryError(f"{name}: expected an integer from {lo} to {hi}, got {raw!r}")
            return value

        status = get("status")
        if status is not None and status not in STATUSES:
            raise QueryError(f"status: unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        return cls(status=status, source=get("source"), category=get("category"), rule=get("rule"),
                   grid=get("grid"), street=get("street"), since=when("since"), until=when("until"),
                   text=get("q"), limit=number("limit", 50, 1, MAX_PAGE), offset=number("offset", 0, 0, 10**9))


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def where_clause(q: CaseQuery) -> tuple[str, list]:
    terms: list[str] = []
    args: list = []
    if q.status:
        terms.append("c.status = ?")
        args.append(q.status)
    if q.source:
        terms.append("json_extract(c.json, '$.source') = ?")
        args.append(q.source)
    if q.category:
        terms.append("? IN (json_extract(c.json, '$.category.key'), json_extract(c.json, '$.category.code'),"
                     " json_extract(c.json, '$.category.name'))")
        args.append(q.category)
    if q.rule:
        terms.append("json_extract(c.json, '$.rule') = ?")
        args.append(q.rule)
    if q.grid:
        terms.append("json_extract(c.json, '$.location.grid_code') LIKE ? ESCAPE '\\'")
        args.append(_like(q.grid)[1:])  # a prefix: a code names a cell, shorter codes a district
    if q.street:
        terms.append("json_extract(c.json, '$.location.street') LIKE ? ESCAPE '\\'")
        args.append(_like(q.street))
    if q.since:
        terms.append("c.created_at >= ?")
        args.append(q.since.timestamp())
    if q.until:
        terms.append("c.created_at < ?")
        args.append(q.until.timestamp())
    if q.text:
        terms.append("c.json LIKE ? ESCAPE '\\'")  # case id, message, names, facts: all in the JSON
        args.append(_like(q.text))
    return (" WHERE " + " AND ".join(terms)) if terms else "", args


class CaseSearch:
    """Searches the case store at `path` through one read-only connection (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._cache: dict[str, tuple[object, object]] = {}

    def _cached(self, key: str, ttl: float, compute):
        """compute() (called with the lock held), reused for `ttl` seconds."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = compute()
        self._cache[key] = (now, value)
        return value

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
        return self._db

    def search(self, q: CaseQuery) -> tuple[int, list[CaseRecord]]:
        """(number of matching cases, the page asked for), newest first."""
        where, args = where_clause(q)
        with self._lock:
            db = self._conn()
            total = db.execute("SELECT COUNT(*) FROM cases c" + where, args).fetchone()[0]
            rows = db.execute(_SELECT + where + " ORDER BY c.created_at DESC, c.case_id DESC LIMIT ? OFFSET ?",
                              [*args, q.limit, q.offset]).fetchall()
        return total, [_record(r) for r in rows]

    def facets(self) -> dict[str, list[str]]:
        """Values seen in the newest cases for the filter menus (sources, categories, rules, streets)."""
        def compute() -> dict[str, list[str]]:
            db = self._conn()
            out: dict[str, list[str]] = {}
            for key, path in (("source", "$.source"), ("category", "$.category.name"), ("rule", "$.rule"),
                              ("street", "$.location.street")):
                rows = db.execute(f"SELECT DISTINCT json_extract(json, '{path}') AS v FROM (SELECT json FROM cases"
                                  " ORDER BY created_at DESC LIMIT ?) WHERE v IS NOT NULL ORDER BY v LIMIT 200",
                                  (FACET_CASES,)).fetchall()
                out[key] = [str(r[0]) for r in rows]
            return out

        with self._lock:
            return self._cached("facets", FACETS_TTL_S, compute)

    def store_stats(self, now: float) -> dict:
        """For /metrics: cases by rule, delivery rejections by HTTP status, age of the oldest pending case."""
        with self._lock:
            db = self._conn()
            # Counting by rule scans every case's JSON: only when cases came or went since the last scrape.
            version = db.execute("SELECT COUNT(*), MAX(created_at) FROM cases").fetchone()
            hit = self._cache.get("by_rule")
            if hit is None or hit[0] != version:
                hit = (version, dict(db.execute(
                    "SELECT json_extract(json, '$.rule'), COUNT(*) FROM cases GROUP BY 1").fetchall()))
                self._cache["by_rule"] = hit
            by_rule = hit[1]
            by_status = dict(db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status").fetchall())
            rejected = dict(db.execute("SELECT status_code, COUNT(*) FROM dead_letters GROUP BY status_code").fetchall())
            oldest = db.execute("SELECT MIN(created_at) FROM cases WHERE status = 'pending'").fetchone()[0]
        return {"by_rule": {str(k): v for k, v in by_rule.items()},
                "by_status": {s: by_status.get(s, 0) for s in STATUSES} | by_status,
                "rejected_by_status": {str(k): v for k, v in rejected.items()},
                "oldest_pending_age_s": 0.0 if oldest is None else max(0.0, now - oldest)}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
