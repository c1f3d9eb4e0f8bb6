"""The case desk: turns opening alerts into cases (立案), with dedup, grid codes and evidence.

Order of durability: evidence files are written and fsynced first, then the case is committed to
the outbox, and only then does anything else (MQTT, status page) learn of it. A crash between
the two leaves an orphan evidence file, never a case without its evidence; a failed commit (a
full disk) removes the case's folder, and a full outbox refuses the case before anything is written.

Lifecycle: the case's state (open, cleared, withdrawn) and current severity live in the outbox, set
in the same transaction as the event that changes them. A close of the condition emits ``cleared``
(with the closing alert's evidence, e.g. the empty kerb); a repeat within the cooldown after that
emits ``updated`` (reopened); a repeat at a higher severity ``updated`` (escalated); a plain repeat
while open ``updated`` (recurrence). A withdrawn case sends nothing more: repeats are only counted.

Review before dispatch: a new case of a rule in review mode (`cases.review`, `gateway/review.py`) is
committed ``held``: the delivery worker does not send it, nor its later events, until an operator
confirms it; a rejected one is never sent (gateway/outbox.py `confirm`, `reject`).

Dedup: one open case per (rule, subject, place, grid cell, tracked object). While that case is
open, or within `cooldown_s` after its condition cleared, another opening alert for the same key
is a recurrence of the existing case, not a new case. The dedup state lives in a small SQLite
table so that a restart does not reopen the same case.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Literal, Protocol

from core.model import SEVERITIES, Alert, Case, Evidence, condition_key
from gateway.catalog import Catalog
from gateway.geo import GridIndex
from gateway.ids import case_id as new_case_id
from gateway.outbox import CaseEvent, OutboxFull
from gateway.review import ReviewPolicy
from gateway.storage import write_durably

log = logging.getLogger(__name__)


class CaseOutbox(Protocol):
    def has_room(self, n: int = 1) -> bool: ...
    def enqueue(self, case: Case, *, held: bool = False) -> bool: ...
    def add_event(self, case_id: str, kind: str, at: datetime, body: dict, *, state: str | None = None,
                  severity: str | None = None, recurrence_facts: dict | None = None,
                  recurrence: bool = False) -> CaseEvent | None: ...
    def case_state(self, case_id: str) -> tuple[str, str | None] | None: ...
    def withdraw(self, case_id: str, reason: str, by: str, at: datetime | None = None) -> CaseEvent | None: ...


OutcomeKind = Literal["new", "recurrence", "updated", "cleared", "refused"]


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """What an alert did to the case store. `new`: a case was filed; `updated`: its case got an
    ``updated`` event (reopened, recurrence, escalated); `cleared`: a ``cleared`` event;
    `recurrence`: counted on a withdrawn case, nothing sent; `refused`: the outbox is full."""

    kind: OutcomeKind
    case_id: str
    case: Case | None = None  # set for new cases
    event: CaseEvent | None = None  # set for updated and cleared

    @property
    def committed(self) -> bool:
        """Something new waits for delivery to the central platform."""
        return self.kind == "new" or self.event is not None


class CaseDesk:
    def __init__(self, *, catalog: Catalog, grid: GridIndex, outbox: CaseOutbox, evidence_dir: Path,
                 state_path: Path, gateway_id: str, timezone: tzinfo, cooldown_s: float = 600.0,
                 review: ReviewPolicy | None = None) -> None:
        self.catalog = catalog
        self.grid = grid
        self.outbox = outbox
        self.evidence_dir = Path(evidence_dir)
        self.gateway_id = gateway_id
        self.timezone = timezone
        self.cooldown = timedelta(seconds=cooldown_s)
        self.review = review or ReviewPolicy()
        self.stats = {"cases": 0, "recurrences": 0, "closed": 0, "unknown_category": 0, "evidence_errors": 0,
                      "escalations": 0, "reopened": 0, "refused_full": 0, "withdrawn_recurrences": 0,
                      "held": 0}
        self._lock = threading.Lock()
        # The alert whose outbox commit succeeded but whose dedup-state write failed (a full disk):
        # when the bus retries that same alert, the commit is not repeated (no duplicate case or event).
        self._committed: tuple[Alert, CaseOutcome] | None = None
        self._db = sqlite3.connect(state_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS case_state (dedup_key TEXT PRIMARY KEY, alert_key TEXT NOT NULL,"
            " case_id TEXT NOT NULL, opened_at TEXT NOT NULL, closed_at TEXT)")
        self._db.execute("CREATE INDEX IF NOT EXISTS case_state_alert ON case_state(alert_key)")

    def close(self) -> None:
        self._db.close()

    def handle(self, alert: Alert) -> CaseOutcome | None:
        """Open, recur, escalate or clear a case for this alert; None when the alert is not case-worthy.

        Raises what the disk raises (ENOSPC, sqlite "database or disk is full"): the caller keeps the
        alert and hands the same object in again later; a half-done alert is then finished, not redone."""
        with self._lock:
            if alert.state == "closed":
                return self._clear(alert)
            if not alert.category:
                return None
            return self._open(alert)

    def withdraw(self, case_id: str, reason: str, by: str) -> CaseEvent | None:
        """An operator rejected the case (the console calls this): a ``withdrawn`` event goes to the
        central platform and later alerts of the condition are only counted; None if the case is
        unknown or already withdrawn, or was held for review (then it is rejected: never sent)."""
        with self._lock:
            return self.outbox.withdraw(case_id, reason, by)

    def latest_case(self, rule: str, subject_kind: str, subject_id: str, place: str) -> str | None:
        """The case most recently filed for a condition (an alert's rule, subject and place, without a
        tracked object), or None: whose state says whether a restored episode outlived its clear."""
        key = f"{condition_key(rule, subject_kind, subject_id, place)}|"
        with self._lock:
            row = self._db.execute("SELECT case_id FROM case_state WHERE alert_key=? ORDER BY rowid DESC LIMIT 1",
                                   (key,)).fetchone()
        return row[0] if row else None

    # -- internals ---------------------------------------------------------------------------

    def _alert_key(self, alert: Alert) -> str:
        return f"{alert.key}|{alert.track_id if alert.track_id is not None else ''}"

    def _done_before(self, alert: Alert) -> CaseOutcome | None:
        if self._committed is not None and self._committed[0] is alert:
            return self._committed[1]
        return None

    def _clear(self, alert: Alert) -> CaseOutcome | None:
        rows = self._db.execute("SELECT case_id, opened_at FROM case_state WHERE alert_key=? AND closed_at IS NULL",
                                (self._alert_key(alert),)).fetchall()
        outcome = self._done_before(alert)
        if outcome is None:
            for case_id, opened_at in rows:
                state = self.outbox.case_state(case_id)
                if state is None or state[0] != "open":
                    continue  # withdrawn by an operator (nothing to verify) or pruned
                evidence = self._store_event_evidence(case_id, datetime.fromisoformat(opened_at), "cleared",
                                                      alert)
                event = self.outbox.add_event(case_id, "cleared", alert.time.astimezone(self.timezone), {
                    "reason": "condition_ended", "message": alert.message, "facts": dict(alert.facts),
                    "evidence": evidence}, state="cleared")
                outcome = CaseOutcome("cleared", case_id, event=event)
            self._committed = (alert, outcome) if outcome is not None else None
        cur = self._db.execute("UPDATE case_state SET closed_at=? WHERE alert_key=? AND closed_at IS NULL",
                               (alert.time.isoformat(), self._alert_key(alert)))
        self._committed = None
        self.stats["closed"] += cur.rowcount
        return outcome

    def _open(self, alert: Alert) -> CaseOutcome:
        cell = self.grid.lookup(alert.lon, alert.lat) if alert.lon is not None and alert.lat is not None else None
        grid_code = cell.grid_code if cell else ""
        dedup_key = f"{self._alert_key(alert)}|{grid_code}"
        row = self._db.execute("SELECT case_id, closed_at, opened_at FROM case_state WHERE dedup_key=?",
                               (dedup_key,)).fetchone()
        if row is not None:
            existing, closed_at, opened_at = row
            if closed_at is None or alert.time - datetime.fromisoformat(closed_at) < self.cooldown:
                outcome = self._done_before(alert) or self._recur(existing, datetime.fromisoformat(opened_at), alert)
                self._committed = (alert, outcome)
                self._db.execute("UPDATE case_state SET closed_at=NULL, alert_key=? WHERE dedup_key=?",
                                 (self._alert_key(alert), dedup_key))
                self._committed = None
                return outcome
        outcome = self._done_before(alert)
        if outcome is None:
            if not self.outbox.has_room():  # refused before any evidence is written
                self.stats["refused_full"] += 1
                return CaseOutcome("refused", "")
            outcome = self._file(alert, cell)
            if outcome.kind == "refused":
                return outcome
            self._committed = (alert, outcome)
        self._db.execute(
            "INSERT OR REPLACE INTO case_state(dedup_key, alert_key, case_id, opened_at, closed_at)"
            " VALUES (?, ?, ?, ?, NULL)", (dedup_key, self._alert_key(alert), outcome.case_id, alert.time.isoformat()))
        self._committed = None
        self.stats["cases"] += 1
        return outcome

    def _file(self, alert: Alert, cell) -> CaseOutcome:
        """Write the evidence and commit the case; on any failure the case's evidence folder goes too."""
        cid = new_case_id(self.gateway_id, int(alert.time.timestamp() * 1000))
        folder = self._folder(cid, alert.time)
        try:
            case = self._build(cid, alert, cell)
            held = self.review.holds(alert.rule)
            self.outbox.enqueue(case, held=held)  # durable before anyone else hears of it
        except OutboxFull:
            shutil.rmtree(folder, ignore_errors=True)
            self.stats["refused_full"] += 1
            return CaseOutcome("refused", "")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no orphan evidence of a case that was not filed
            raise
        self.stats["held"] += held
        return CaseOutcome("new", case.case_id, case)

    def _recur(self, case_id: str, opened: datetime, alert: Alert) -> CaseOutcome:
        """Another opening alert of a known case: reopened, escalated or a plain recurrence; the
        evidence it carries (a video snapshot) goes along, what it would draw on demand does not."""
        state, severity = self.outbox.case_state(case_id) or ("open", alert.severity)
        facts = dict(alert.facts)
        if state == "withdrawn":  # an operator said it is not a case: count it, send nothing
            self.stats["withdrawn_recurrences"] += 1
            return CaseOutcome("recurrence", case_id)
        escalated = SEVERITIES.index(alert.severity) > SEVERITIES.index(severity or alert.severity)
        reason = "reopened" if state == "cleared" else "escalated" if escalated else "recurrence"
        body: dict = {"reason": reason, "severity": alert.severity if escalated else severity,
                      "message": alert.message, "facts": facts}
        if escalated:
            body["previous_severity"] = severity
        if alert.evidence:
            body["evidence"] = self._store_event_evidence(case_id, opened, "updated", alert)
        event = self.outbox.add_event(case_id, "updated", alert.time.astimezone(self.timezone), body, state="open",
                                      severity=alert.severity if escalated else None, recurrence_facts=facts,
                                      recurrence=True)
        self.stats["recurrences"] += 1
        self.stats["escalations"] += escalated
        self.stats["reopened"] += state == "cleared"
        return CaseOutcome("updated", case_id, event=event)

    def _category(self, key: str) -> dict[str, str]:
        if key in self.catalog:
            return self.catalog[key].as_category()
        # Config validation rejects unknown keys; this only guards a catalog edited under a running
        # gateway. The case is still created (never lost), filed under "other events".
        self.stats["unknown_category"] += 1
        log.error("category %r is not in the case catalog; filing the case as 其他事件", key)
        return {"key": key, "type": "event", "major": "06", "minor": "99", "code": "0699", "name": key,
                "name_en": key, "major_name": "其他事件"}

    def _build(self, cid: str, alert: Alert, cell) -> Case:
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

    def _folder(self, cid: str, opened: datetime) -> Path:
        return self.evidence_dir / opened.astimezone(self.timezone).strftime("%Y%m%d") / cid

    def _store_event_evidence(self, cid: str, opened: datetime, kind: str, alert: Alert) -> list[dict[str, str]]:
        """An event's evidence beside the case's, its names prefixed so the opening files stay."""
        stamp = alert.time.astimezone(self.timezone).strftime("%Y%m%dT%H%M%S.%f")[:-3]  # ms: repeats differ
        return [self._store_evidence(cid, opened, e, prefix=f"{kind}-{stamp}-") for e in alert.evidence]

    def _store_evidence(self, cid: str, when: datetime, evidence: Evidence, prefix: str = "") -> dict[str, str]:
        folder = self._folder(cid, when)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (prefix + Path(evidence.name).name)
        write_durably(path, evidence.data)
        return {"name": path.name, "media_type": evidence.media_type,
                "sha256": hashlib.sha256(evidence.data).hexdigest(), "path": str(path), "size": str(len(evidence.data))}
