"""A small tmpfs for disk-full and read-only tests (the test machine runs them as root).

`small_tmpfs` mounts one and unmounts it afterwards; where mounting is refused (no privilege, a
locked-down container) it returns None and the caller falls back to a simulated condition."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "4m", *, read_only: bool = False) -> Iterator[Path | None]:
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system refuses another byte."""
    with open(folder / "filler", "wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    with open(folder / "filler-tail", "wb", buffering=0) as f:  # the last partial block
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
