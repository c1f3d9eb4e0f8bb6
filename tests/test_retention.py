"""Evidence retention and the low-disk alert, on real evidence folders written by the case desk,
a real outbox, and (where the machine allows a mount) a real small tmpfs that fills up."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from tmpfs import fill, small_tmpfs

from core.model import Alert, Evidence
from gateway.cases import CaseDesk
from gateway.catalog import Catalog
from gateway.config import EvidenceRetentionConfig
from gateway.geo import GridIndex
from gateway.outbox import Outbox
from gateway.retention import RetentionJanitor
from gateway.storage import DiskSpaceMonitor, DiskUsage, disk_usage

DAY = 86400.0
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Site:
    """A data directory with the outbox and a case desk that writes evidence as the gateway does."""

    def __init__(self, data: Path, *, deliver: bool = True) -> None:
        self.data = data
        self.evidence = data / "evidence"
        self.outbox = Outbox(data / "cases.sqlite3", deliver=deliver)
        self.desk = CaseDesk(catalog=Catalog.load(), grid=GridIndex.empty(), outbox=self.outbox,
                             evidence_dir=self.evidence, state_path=data / "case_state.sqlite3",
                             gateway_id="ret", timezone=ZoneInfo("Asia/Shanghai"))
        self.n = 0

    def file(self, *, age_days: float, size: int = 10_000, status: str = "pending") -> str:
        """File one case with `size` bytes of evidence written `age_days` ago; bring it to `status`."""
        self.n += 1
        when = NOW - timedelta(days=age_days)
        outcome = self.desk.handle(Alert(
            rule="no-parking", subject_kind="camera", subject_id="cam-1", state="open", time=when,
            source="video", category="illegal_parking", place=f"kerb-{self.n}",
            evidence=(Evidence("snapshot.jpg", "image/jpeg", os.urandom(size)),)))
        folder = self.folder(outcome.case_id)
        for path in (*folder.iterdir(), folder):
            os.utime(path, (when.timestamp(), when.timestamp()))
        if status == "delivered":
            self.outbox.mark_delivered(outcome.case_id)
        elif status == "dead":
            self.outbox.mark_dead(outcome.case_id, 422, "grid_code unknown")
        return outcome.case_id

    def folder(self, case_id: str) -> Path:
        (found,) = self.evidence.glob(f"*/{case_id}")
        return found

    def has(self, case_id: str) -> bool:
        return any(self.evidence.glob(f"*/{case_id}/snapshot.jpg"))

    def janitor(self, **config) -> RetentionJanitor:
        return RetentionJanitor(self.evidence, self.outbox.path, EvidenceRetentionConfig(**config))

    def close(self) -> None:
        self.desk.close()
        self.outbox.close()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path / "var")
    yield s
    s.close()


def test_old_delivered_evidence_goes_and_undelivered_evidence_stays(site):
    old_delivered = site.file(age_days=40, status="delivered")
    old_pending = site.file(age_days=40)
    old_dead = site.file(age_days=45, status="dead")
    young_delivered = site.file(age_days=3, status="delivered")
    result = site.janitor(keep_days=30, min_free_percent=0).sweep(NOW.timestamp())
    assert not site.has(old_delivered)
    assert site.has(old_pending) and site.has(old_dead) and site.has(young_delivered)
    assert (result.deleted_cases, result.kept_undelivered, result.evidence_cases) == (1, 2, 3)
    assert site.outbox.get(old_delivered).status == "delivered"  # the case record itself stays


def test_locally_stored_cases_age_out_when_there_is_no_central_platform(tmp_path):
    site = Site(tmp_path / "var", deliver=False)
    try:
        old, young = site.file(age_days=31, status="stored"), site.file(age_days=1, status="stored")
        site.janitor(keep_days=30, min_free_percent=0).sweep(NOW.timestamp())
        assert not site.has(old) and site.has(young)
    finally:
        site.close()


def test_over_the_disk_cap_the_oldest_delivered_evidence_goes_first(site):
    delivered = [site.file(age_days=10 - i, status="delivered") for i in range(5)]  # oldest first
    pending = [site.file(age_days=20 - i) for i in range(3)]  # older than every delivered one
    janitor = site.janitor(keep_days=30, max_disk_gb=55_000 / 1e9, min_free_percent=0)  # 8 x 10 kB on disk
    result = janitor.sweep(NOW.timestamp())
    assert [site.has(c) for c in delivered] == [False, False, False, True, True]
    assert all(site.has(c) for c in pending)
    assert result.evidence_bytes <= 55_000 and not result.over_limit

    tight = site.janitor(keep_days=30, max_disk_gb=20_000 / 1e9, min_free_percent=0)
    result = tight.sweep(NOW.timestamp())
    assert not any(site.has(c) for c in delivered) and all(site.has(c) for c in pending)
    assert result.over_limit and result.kept_undelivered == 3  # 30 kB of undelivered evidence stays over 20 kB
    assert tight.stats()["over_limit"] is True


def test_a_folder_the_outbox_does_not_know_waits_a_day_and_protected_ones_stay(site):
    pruned = site.file(age_days=3, status="delivered")
    site.outbox._db.execute("DELETE FROM cases WHERE case_id = ?", (pruned,))  # as the outbox prunes old done cases
    in_memory = site.file(age_days=3)
    site.outbox._db.execute("DELETE FROM cases WHERE case_id = ?", (in_memory,))  # not committed yet (disk full)
    just_written = site.file(age_days=0.01)
    site.outbox._db.execute("DELETE FROM cases WHERE case_id = ?", (just_written,))
    janitor = RetentionJanitor(site.evidence, site.outbox.path, EvidenceRetentionConfig(keep_days=1, max_disk_gb=1e-9,
                               min_free_percent=0), protected=lambda: {in_memory})
    janitor.sweep(NOW.timestamp())
    assert not site.has(pruned) and site.has(in_memory) and site.has(just_written)


def test_below_the_free_space_floor_delivered_evidence_is_freed_on_a_small_disk(tmp_path):
    with small_tmpfs(tmp_path / "disk", "4m") as mount:
        site = Site(mount or tmp_path / "disk")
        try:
            delivered = [site.file(age_days=5 - i / 10, size=400_000, status="delivered") for i in range(6)]
            pending = [site.file(age_days=6, size=400_000) for _ in range(2)]
            usage = disk_usage(site.data) if mount else DiskUsage(4 * 2**20, 4 * 2**20 - 8 * 400_000)
            janitor = RetentionJanitor(site.evidence, site.outbox.path,
                                       EvidenceRetentionConfig(keep_days=30, min_free_percent=40),
                                       usage=lambda _: usage if not mount else disk_usage(site.data))
            assert usage.free_percent < 40
            result = janitor.sweep(NOW.timestamp())
            after = disk_usage(site.data)
            if mount:
                assert after.free_percent >= 40
            kept = [site.has(c) for c in delivered]
            assert kept[:2] == [False, False] and kept == sorted(kept)  # oldest went first
            assert all(site.has(c) for c in pending) and not result.over_limit
        finally:
            site.close()


async def test_the_janitor_runs_as_a_component_until_stopped(site):
    old = site.file(age_days=(datetime.now(UTC) - NOW).total_seconds() / DAY + 40, status="delivered")
    janitor = site.janitor(keep_days=30, sweep_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(janitor.run(stop))
    while janitor.stats()["sweeps"] == 0:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert not site.has(old)
    assert janitor.name == "retention" and janitor.stats()["deleted_cases"] == 1


# -- the low-disk alert ------------------------------------------------------------------------------

CAPACITY = 4 * 2**20


def simulated_disk(folder: Path, monkeypatch) -> Path:
    """Where no tmpfs can be mounted: a folder whose reported free space is CAPACITY minus its files."""
    folder.mkdir(parents=True, exist_ok=True)

    def usage(path):
        used = sum(f.stat().st_size for f in Path(path).iterdir())
        return shutil._ntuple_diskusage(CAPACITY, used, max(0, CAPACITY - used))
    monkeypatch.setattr(shutil, "disk_usage", usage)
    return folder


def test_disk_nearly_full_is_raised_and_cleared_with_hysteresis_on_a_filling_disk(tmp_path, monkeypatch):
    alerts: list[Alert] = []
    with small_tmpfs(tmp_path / "disk", "4m") as mount:
        disk = mount or simulated_disk(tmp_path / "disk", monkeypatch)
        monitor = DiskSpaceMonitor(disk, alerts.append, gateway_id="edge-7", alert_free_percent=5)
        monitor.observe(disk_usage(disk), NOW)
        assert alerts == [] and monitor.stats()["nearly_full"] is False

        if mount:
            fill(disk)
        else:
            (disk / "filler").write_bytes(b"\0" * CAPACITY)
        monitor.observe(disk_usage(disk), NOW)
        (raised,) = alerts
        assert (raised.rule, raised.state, raised.severity, raised.subject_id) == ("disk_nearly_full", "open",
                                                                                    "critical", "edge-7")
        assert raised.facts["free_bytes"] < 0.05 * CAPACITY and str(disk) in raised.message
        assert monitor.stats()["nearly_full"] is True and monitor.stats()["free_percent"] < 5

        os.truncate(disk / "filler", (disk / "filler").stat().st_size - 300_000)  # ~7 % free: not yet clear
        monitor.observe(disk_usage(disk), NOW)
        assert len(alerts) == 1 and 5 < monitor.stats()["free_percent"] < 10
        (disk / "filler").unlink()
        monitor.observe(disk_usage(disk), NOW + timedelta(minutes=1))
        assert [a.state for a in alerts] == ["open", "closed"]
        assert monitor.stats()["nearly_full"] is False and monitor.stats()["free_percent"] > 10


async def test_the_disk_monitor_runs_as_a_component_and_alerts_through_its_callback(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        usage = None if mount else DiskUsage(2**20, 0)
        where = mount or tmp_path
        if mount:
            fill(mount)
        stop = asyncio.Event()
        alerts: list[Alert] = []

        def submit(alert: Alert) -> None:
            alerts.append(alert)
            stop.set()

        monitor = DiskSpaceMonitor(where, submit, gateway_id="edge-7", check_s=0.05)
        if usage is not None:
            monitor.observe(usage, NOW)
        else:
            await asyncio.wait_for(monitor.run(stop), 10)
        assert [a.rule for a in alerts] == ["disk_nearly_full"] and monitor.stats()["checks"] >= 1
