"""The data directory's health: can the gateway write there at all (start, `citygate check`), and
is its file system running out of space (a component that alerts while the gateway keeps running).

A data directory that is a file, read-only or full cannot hold a single case: the gateway refuses
to start with one sentence naming the path and the reason (exit code `EXIT_DATA_DIR` in
gateway/cli.py), instead of a traceback that a service manager would restart every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.model import Alert
from gateway.aio import wait_or_stop

log = logging.getLogger(__name__)

PROBE_BYTES = 4096  # one file-system block: a full disk refuses it even when an empty file still fits


def check_data_dir(path: str | Path, *, create: bool = False) -> str | None:
    """Why `path` cannot be the data directory, as a sentence naming it, or None when it can.

    With `create`, a missing folder is made (as the gateway does at start); without it (`citygate
    check`), the nearest existing parent must be a writable folder. An existing folder is probed by
    writing, fsyncing and removing a small file, which catches read-only mounts and full disks even
    for root, whom permission bits do not stop."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            break
    if not parent.is_dir():
        what = "is a file" if parent == path else f"cannot be created: {parent} is a file"
        return f"data directory {path} {what}, not a folder"
    if parent != path:
        if not create:
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"data directory {path} cannot be created: {parent} is not writable"
            return None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"data directory {path} cannot be created: {_reason(exc)}"
    probe = path / f".citygate-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"data directory {path} is not usable: {_reason(exc)}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "the file system is mounted read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total_bytes: int
    free_bytes: int  # available to the gateway's user (statvfs f_bavail), not counting root's reserve

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def disk_usage(path: Path) -> DiskUsage:
    usage = shutil.disk_usage(path)
    return DiskUsage(usage.total, usage.free)


class DiskSpaceMonitor:
    """Raises the critical alert `disk_nearly_full` when the data directory's file system has less
    than `alert_free_percent` free, and clears it once twice that is free again (hysteresis, so a
    disk hovering at the threshold does not flap). The gateway keeps running and delivering: cases
    waiting for delivery need no new space, and delivered evidence is what the retention janitor frees."""

    name = "disk-space"

    def __init__(self, path: Path, submit: Callable[[Alert], None], *, gateway_id: str,
                 alert_free_percent: float = 5.0, check_s: float = 30.0) -> None:
        self.path = Path(path)
        self.submit = submit
        self.gateway_id = gateway_id
        self.alert_free_percent = alert_free_percent
        self.clear_free_percent = min(100.0, 2 * alert_free_percent)
        self.check_s = check_s
        self.nearly_full = False
        self.last: DiskUsage | None = None
        self._counts = {"checks": 0, "alerts": 0, "errors": 0}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                usage = await asyncio.to_thread(disk_usage, self.path)
            except OSError as exc:  # the folder vanished or the mount went away: say so, keep watching
                self._counts["errors"] += 1
                if self._counts["errors"] == 1 or self._counts["errors"] % 100 == 0:
                    log.error("cannot read the free space of %s: %s (%d times)", self.path, exc,
                              self._counts["errors"])
            else:
                self.observe(usage, datetime.now(UTC))
            if await wait_or_stop(stop, self.check_s):
                break

    def observe(self, usage: DiskUsage, now: datetime) -> None:
        """Judge one reading of the free space; raises or clears the alert on a change."""
        self._counts["checks"] += 1
        self.last = usage
        percent = usage.free_percent
        if not self.nearly_full and percent < self.alert_free_percent:
            self.nearly_full = True
            self._counts["alerts"] += 1
            log.critical("disk nearly full: %s has %s free (%.1f %%); evidence of delivered cases is freed "
                         "by retention, undelivered cases are kept", self.path, _size(usage.free_bytes), percent)
            self._alert("open", usage, now, f"data directory {self.path}: only {_size(usage.free_bytes)} "
                        f"({percent:.1f} %) free")
        elif self.nearly_full and percent >= self.clear_free_percent:
            self.nearly_full = False
            log.warning("disk space recovered: %s has %s free (%.1f %%)", self.path, _size(usage.free_bytes),
                        percent)
            self._alert("closed", usage, now, f"data directory {self.path}: {percent:.1f} % free again")

    def _alert(self, state: str, usage: DiskUsage, now: datetime, message: str) -> None:
        self.submit(Alert(rule="disk_nearly_full", subject_kind="gateway", subject_id=self.gateway_id,
                          state=state, time=now, source="system", severity="critical", message=message,
                          facts={"path": str(self.path), "free_bytes": usage.free_bytes,
                                 "total_bytes": usage.total_bytes, "free_percent": round(usage.free_percent, 2)}))

    def stats(self) -> dict[str, Any]:
        last = self.last
        return {"path": str(self.path), "nearly_full": self.nearly_full,
                "free_bytes": last.free_bytes if last else None, "total_bytes": last.total_bytes if last else None,
                "free_percent": round(last.free_percent, 2) if last else None,
                "alert_below_percent": self.alert_free_percent, **self._counts}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


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


class JsonSaver:
    """Saves a state document (`snapshot()`, JSON) soon after it changed (`version()` moved on): off the
    event loop, one writer at a time, the last state winning. `on_error(exc)` hears a failed write; the
    next change tries again."""

    def __init__(self, path: Path | None, snapshot: Callable[[], Any], version: Callable[[], int],
                 on_error: Callable[[OSError], None]) -> None:
        self.path, self._snapshot, self._version, self._on_error = path, snapshot, version, on_error
        self.saved_version = version()
        self._task: asyncio.Task | None = None

    def soon(self) -> None:
        """Start a save if something changed (a no-op without a path, or outside the event loop: the
        next change on it saves)."""
        if self.path is None or self._version() == self.saved_version:
            return
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._task = loop.create_task(self._save())

    async def flush(self) -> None:
        """Save what is pending and wait for it (at shutdown)."""
        self.soon()
        if self._task is not None:
            await self._task

    async def _save(self) -> None:
        assert self.path is not None
        while self._version() != self.saved_version:
            version = self._version()
            data = json.dumps(self._snapshot(), ensure_ascii=False).encode()  # on the loop: a consistent state
            try:
                await asyncio.to_thread(write_durably, self.path, data)
            except OSError as exc:
                self._on_error(exc)
                return
            self.saved_version = version
