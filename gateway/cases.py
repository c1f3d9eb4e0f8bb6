"""The case desk: turns opening alerts into cases (立案), with dedup, grid codes and evidence.

Order of durability: evidence files are written and fsynced first, then the case is committed to
the outbox, and only then does anything else (MQTT, status page) learn of it. A crash between
the two leaves an orphan evidence file, never a case without its evidence.

Dedup: one open case per (rule, subject, place, grid cell, tracked object). While that case is
open, or within `cooldown_s` after its condition cleared, another opening alert for the same key
is a recurrence of the existing case, not a new case. The dedup state lives in a small SQLite
table so that a restart does not reopen the same case.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Literal, Protocol

from core.model import Alert, Case, Evidence
from gateway.catalog import Catalog
from gateway.geo import GridIndex
from gateway.ids import case_id as new_case_id

log = logging.getLogger(__name__)


class CaseOutbox(Protocol):
    def enqueue(self, case: Case) -> bool: ...
    def add_recurrence(self, case_id: str, at: datetime, facts: dict | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    kind: Literal["new", "recurrence"]
    case_id: str
    case: Case | None = None  # set for new cases


class CaseDesk:
    def __init__(self, *, catalog: Catalog, grid: GridIndex, outbox: CaseOutbox, evidence_dir: Path,
                 state_path: Path, gateway_id: str, timezone: tzinfo, cooldown_s: float = 600.0) -> None:
        self.catalog = catalog
        self.grid = grid
        self.outbox = outbox
        self.evidence_dir = Path(evidence_dir)
        self.gateway_id = gateway_id
        self.timezone = timezone
        self.cooldown = timedelta(seconds=cooldown_s)
        self.stats = {"cases": 0, "recurrences": 0, "closed": 0, "unknown_category": 0, "evidence_errors": 0}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(state_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS case_state (dedup_key TEXT PRIMARY KEY, alert_key TEXT NOT NULL,"
            " case_id TEXT NOT NULL, opened_at TEXT NOT NULL, closed_at TEXT)")
        self._db.execute("CREATE INDEX IF NOT EXISTS case_state_alert ON case_state(alert_key)")

    def close(self) -> None:
        self._db.close()

    def handle(self, alert: Alert) -> CaseOutcome | None:
        """Open, recur or clear a case for this alert; None when the alert is not case-worthy."""
        with self._lock:
            if alert.state == "closed":
                self._clear(alert)
                return None
            if not alert.category:
                return None
            return self._open(alert)

    # -- internals ---------------------------------------------------------------------------

    def _alert_key(self, alert: Alert) -> str:
        return f"{alert.key}|{alert.track_id if alert.track_id is not None else ''}"

    def _clear(self, alert: Alert) -> None:
        cur = self._db.execute("UPDATE case_state SET closed_at=? WHERE alert_key=? AND closed_at IS NULL",
                               (alert.time.isoformat(), self._alert_key(alert)))
        self.stats["closed"] += cur.rowcount

    def _open(self, alert: Alert) -> CaseOutcome:
        cell = self.grid.lookup(alert.lon, alert.lat) if alert.lon is not None and alert.lat is not None else None
        grid_code = cell.grid_code if cell else ""
        dedup_key = f"{self._alert_key(alert)}|{grid_code}"
        row = self._db.execute("SELECT case_id, closed_at FROM case_state WHERE dedup_key=?", (dedup_key,)).fetchone()
        if row is not None:
            existing, closed_at = row
            if closed_at is None or alert.time - datetime.fromisoformat(closed_at) < self.cooldown:
                self.outbox.add_recurrence(existing, alert.time, dict(alert.facts))
                self._db.execute("UPDATE case_state SET closed_at=NULL, alert_key=? WHERE dedup_key=?",
                                 (self._alert_key(alert), dedup_key))
                self.stats["recurrences"] += 1
                return CaseOutcome("recurrence", existing)
        case = self._build(alert, cell)
        self.outbox.enqueue(case)  # durable before anyone else hears of it
        self._db.execute(
            "INSERT OR REPLACE INTO case_state(dedup_key, alert_key, case_id, opened_at, closed_at)"
            " VALUES (?, ?, ?, ?, NULL)", (dedup_key, self._alert_key(alert), case.case_id, alert.time.isoformat()))
        self.stats["cases"] += 1
        return CaseOutcome("new", case.case_id, case)

    def _category(self, key: str) -> dict[str, str]:
        if key in self.catalog:
            return self.catalog[key].as_category()
        # Config validation rejects unknown keys; this only guards a catalog edited under a running
        # gateway. The case is still created (never lost), filed under "other events".
        self.stats["unknown_category"] += 1
        log.error("category %r is not in the case catalog; filing the case as 其他事件", key)
        return {"key": key, "type": "event", "major": "06", "minor": "99", "code": "0699", "name": key,
                "name_en": key, "major_name": "其他事件"}

    def _build(self, alert: Alert, cell) -> Case:
        cid = new_case_id(self.gateway_id, int(alert.time.timestamp() * 1000))
        location: dict = {"lon": alert.lon, "lat": alert.lat, "grid_code": None, "street": "", "community": "",
                          "address": str(alert.facts.get("address", ""))}
        if cell is not None:
            location.update(cell.as_location())
        subject = {"kind": alert.subject_kind, "id": alert.subject_id, "place": alert.place}
        if alert.track_id is not None:
            subject["track_id"] = alert.track_id
        try:
            drawn = alert.all_evidence()
        except Exception:  # noqa: BLE001 - a drawing bug must not cost the case; file it without the drawing
            self.stats["evidence_errors"] += 1
            log.exception("case %s: rendering evidence for %s failed; filing the case without it", cid, alert.rule)
            drawn = alert.evidence
        evidence = tuple(self._store_evidence(cid, alert.time, e) for e in drawn)
        return Case(case_id=cid, source=alert.source, category=self._category(alert.category or ""),
                    rule=alert.rule, severity=alert.severity, detected_at=alert.time.astimezone(self.timezone),
                    location=location, subject=subject, evidence=evidence, facts=dict(alert.facts),
                    message=alert.message)

    def _store_evidence(self, cid: str, when: datetime, evidence: Evidence) -> dict[str, str]:
        folder = self.evidence_dir / when.astimezone(self.timezone).strftime("%Y%m%d") / cid
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / Path(evidence.name).name
        write_durably(path, evidence.data)
        return {"name": path.name, "media_type": evidence.media_type,
                "sha256": hashlib.sha256(evidence.data).hexdigest(), "path": str(path), "size": str(len(evidence.data))}


def write_durably(path: Path, data: bytes) -> None:
    """Write, fsync and atomically rename, so a power cut leaves either the whole file or none."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
