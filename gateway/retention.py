"""Evidence retention: an edge box must not fill its disk with snapshots of cases long delivered.

Evidence lives in ``<data_dir>/<cases.evidence_dir>/<yyyymmdd>/<case_id>/``. A periodic sweep
deletes, oldest first (by the folder's last write):

1. evidence of delivered cases (``stored`` ones where there is no central platform) older than
   ``evidence.keep_days``;
2. then more of it while the evidence folder is larger than ``evidence.max_disk_gb`` or the data
   directory's file system has less than ``evidence.min_free_percent`` free.

Evidence of a case that is pending or dead-lettered is never deleted: it is what the central
platform has not received yet. A folder whose case is not in the outbox at all is the evidence of a
delivered case that the outbox already pruned (it keeps the newest ``keep_done``), or of a filing that
never committed; it is deleted like delivered evidence once it is older than ``UNKNOWN_GRACE_S``, and
never while `protected()` names it (cases the desk still holds in memory, e.g. while the disk is full).
The statuses are read through a read-only connection to the outbox file, in chunks, so the sweep
never takes the outbox's lock or blocks its writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.aio import wait_or_stop
from gateway.config import EvidenceRetentionConfig
from gateway.storage import DiskUsage, disk_usage

log = logging.getLogger(__name__)

DELETABLE = ("delivered", "stored", "rejected")
UNKNOWN_GRACE_S = 86400.0  # a folder no outbox row names is left alone for a day
_CHUNK = 500  # case ids per status query (below SQLite's bound-parameter limit)


@dataclass(frozen=True, slots=True)
class EvidenceFolder:
    path: Path
    case_id: str
    size: int  # bytes of its files
    written_at: float  # epoch seconds of the last file added to it (the folder's mtime)


def scan_evidence(root: Path, sizes: dict[str, tuple[float, int]] | None = None) -> list[EvidenceFolder]:
    """Every case folder under root/<yyyymmdd>/, with its size; vanished entries are skipped.

    Evidence files are written once and renamed into place, so a folder whose mtime has not moved
    still holds what it held: `sizes` (path → (mtime, bytes), updated here) spares re-reading its files."""
    sizes = {} if sizes is None else sizes
    seen: set[str] = set()
    folders = []
    try:
        days = [d for d in os.scandir(root) if d.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    for day in days:
        try:
            cases = [c for c in os.scandir(day.path) if c.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        for case in cases:
            try:
                written_at = case.stat(follow_symlinks=False).st_mtime
                cached = sizes.get(case.path)
                if cached is not None and cached[0] == written_at:
                    size = cached[1]
                else:
                    size = sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(case.path))
                    sizes[case.path] = (written_at, size)
            except FileNotFoundError:
                continue
            seen.add(case.path)
            folders.append(EvidenceFolder(Path(case.path), case.name, size, written_at))
    for gone in sizes.keys() - seen:
        del sizes[gone]
    return folders


def case_statuses(outbox_path: Path, case_ids: Iterable[str]) -> dict[str, str]:
    """Status of each case id the outbox knows (read-only; ids it does not know are absent)."""
    if not outbox_path.exists():
        return {}
    ids = list(case_ids)
    db = sqlite3.connect(outbox_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, str] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            rows = db.execute(f"SELECT case_id, status FROM cases WHERE case_id IN ({','.join('?' * len(chunk))})",
                              chunk).fetchall()
            out.update(rows)
        return out
    finally:
        db.close()


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted_cases: int
    deleted_bytes: int
    evidence_cases: int  # folders left
    evidence_bytes: int  # bytes left
    kept_undelivered: int  # folders of pending / dead cases (never deleted)
    over_limit: bool  # still above max_disk_gb or below min_free_percent: undelivered evidence fills it


class RetentionJanitor:
    """Periodic evidence sweeps (component: `name`, `run(stop)`, `stats()`); the file work runs in a
    thread, so the event loop never waits for a directory walk."""

    name = "retention"

    def __init__(self, evidence_dir: Path, outbox_path: Path, config: EvidenceRetentionConfig, *,
                 protected: Callable[[], Collection[str]] = frozenset,
                 usage: Callable[[Path], DiskUsage] = disk_usage) -> None:
        self.evidence_dir = Path(evidence_dir)
        self.outbox_path = Path(outbox_path)
        self.config = config
        self.protected = protected
        self.usage = usage
        self.last: SweepResult | None = None
        self._sizes: dict[str, tuple[float, int]] = {}  # folder → (mtime, bytes), see scan_evidence
        self._counts = {"sweeps": 0, "deleted_cases": 0, "deleted_bytes": 0, "errors": 0}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sweep)
            except (OSError, sqlite3.Error) as exc:  # deleted nothing it was unsure of; try next time
                self._counts["errors"] += 1
                if self._counts["errors"] == 1 or self._counts["errors"] % 100 == 0:
                    log.error("evidence retention sweep failed (%d times): %s", self._counts["errors"], exc)
            if await wait_or_stop(stop, self.config.sweep_s):
                break

    def sweep(self, now: float | None = None) -> SweepResult:
        now = time.time() if now is None else now
        folders = scan_evidence(self.evidence_dir, self._sizes)
        statuses = case_statuses(self.outbox_path, {f.case_id for f in folders})
        protected = set(self.protected())
        deletable, undelivered = [], 0
        for folder in folders:
            status = statuses.get(folder.case_id)
            if status in DELETABLE or (status is None and folder.case_id not in protected
                                       and now - folder.written_at > UNKNOWN_GRACE_S):
                deletable.append(folder)
            elif status is not None:
                undelivered += 1
        deletable.sort(key=lambda f: f.written_at)

        total = sum(f.size for f in folders)
        cap = None if self.config.max_disk_gb is None else self.config.max_disk_gb * 1e9
        disk = self.usage(self.evidence_dir) if folders else None
        free = disk.free_bytes if disk else 0
        min_free = disk.total_bytes * self.config.min_free_percent / 100 if disk else 0

        def over_limit() -> bool:
            return (cap is not None and total > cap) or free < min_free

        keep_s = self.config.keep_days * 86400.0
        deleted = deleted_bytes = 0
        for folder in deletable:
            if now - folder.written_at <= keep_s and not over_limit():
                break  # sorted oldest first: the rest is younger and fits
            if self._delete(folder):
                deleted += 1
                deleted_bytes += folder.size
                total -= folder.size
                free += folder.size
        self._remove_empty_days(now)
        if deleted:
            log.info("evidence retention: deleted %d case folder(s), %.1f MB; %d folder(s), %.1f MB left",
                     deleted, deleted_bytes / 1e6, len(folders) - deleted, total / 1e6)
        result = SweepResult(deleted, deleted_bytes, len(folders) - deleted, total, undelivered, over_limit())
        if result.over_limit and (self.last is None or not self.last.over_limit):
            log.warning("evidence retention: still over the limit after deleting all delivered evidence it may "
                        "(%d undelivered case folder(s) are kept)", undelivered)
        self.last = result
        self._counts["sweeps"] += 1
        self._counts["deleted_cases"] += deleted
        self._counts["deleted_bytes"] += deleted_bytes
        return result

    def _delete(self, folder: EvidenceFolder) -> bool:
        try:
            shutil.rmtree(folder.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._counts["errors"] += 1
            log.error("evidence retention: cannot delete %s: %s", folder.path, exc)
            return False
        return True

    def _remove_empty_days(self, now: float) -> None:
        """Empty day folders older than two days go; today's may be about to receive a case folder."""
        cutoff = (datetime.fromtimestamp(now, UTC) - timedelta(days=2)).strftime("%Y%m%d")
        try:
            days = [d for d in os.scandir(self.evidence_dir) if d.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for day in days:
            if len(day.name) == 8 and day.name.isdigit() and day.name < cutoff:
                with contextlib.suppress(OSError):  # not empty
                    os.rmdir(day.path)

    def stats(self) -> dict[str, Any]:
        last = self.last
        return {**self._counts,
                "evidence_cases": last.evidence_cases if last else None,
                "evidence_bytes": last.evidence_bytes if last else None,
                "kept_undelivered": last.kept_undelivered if last else None,
                "over_limit": last.over_limit if last else False,
                "keep_days": self.config.keep_days, "max_disk_gb": self.config.max_disk_gb}
