"""The camera inventory of patrol mode: a CSV or YAML file with thousands of rows, checked row by row.

Every problem names the file, the row and the column, and all of them are reported at once (up to
a limit), so a city's export can be fixed in one pass. `in_shard` splits an inventory between boxes
by a stable hash of the camera id: each box computes its own share, no coordinator.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.patrol.config import PatrolAuth, PatrolConfig, PatrolShard

COLUMNS = ("id", "name", "url", "lon", "lat", "address", "group", "preset", "auth")
REQUIRED = ("id", "url")
SCHEMES = ("http://", "https://", "rtsp://", "rtsps://")
MAX_PROBLEMS = 50  # a wholly wrong file must not print 10,000 lines
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class InventoryError(Exception):
    def __init__(self, source: str, problems: list[str], more: int = 0) -> None:
        self.source = source
        self.problems = problems
        tail = [f"... and {more} more"] if more else []
        super().__init__(f"{source}: {len(problems) + more} problem(s)\n" + "\n".join(f"  {p}" for p in problems + tail))


@dataclass(frozen=True, slots=True)
class PatrolCamera:
    id: str
    name: str
    url: str
    group: str
    preset: str
    lon: float | None = None
    lat: float | None = None
    address: str | None = None
    auth: PatrolAuth | None = None


def shard_of(camera_id: str, count: int) -> int:
    """The share (0..count-1) a camera id belongs to; the same on every box, Python version and run."""
    digest = hashlib.blake2b(camera_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def in_shard(camera_id: str, shard: PatrolShard | None) -> bool:
    return shard is None or shard_of(camera_id, shard.count) == shard.index


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; `where` names the row as a person finds it in the file."""
    text = path.read_text(encoding="utf-8-sig")  # exports from Excel start with a BOM
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        unknown = [c for c in reader.fieldnames or [] if c not in COLUMNS]
        if not reader.fieldnames:
            raise InventoryError(str(path), ["line 1: no header row (expected columns: " + ", ".join(COLUMNS) + ")"])
        if unknown:
            raise InventoryError(str(path), [f"line 1, column {c!r}: unknown column (known: {', '.join(COLUMNS)})"
                                             for c in unknown])
        missing = [c for c in REQUIRED if c not in reader.fieldnames]
        if missing:
            raise InventoryError(str(path), [f"line 1: required column {c!r} is missing" for c in missing])
        out = []
        for n, row in enumerate(reader, start=1):
            if None in row:  # more fields than the header has
                out.append((f"row {n} (line {reader.line_num})", {"__extra__": row.pop(None)} | row))
            else:
                out.append((f"row {n} (line {reader.line_num})", row))
        return out
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise InventoryError(str(path), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if isinstance(data, dict) and "cameras" in data:
        data = data["cameras"]
    if not isinstance(data, list):
        raise InventoryError(str(path), ["(top level): expected a list of cameras (or `cameras:` with one)"])
    return [(f"row {n} (cameras[{n - 1}])", row) for n, row in enumerate(data, start=1)]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _coordinate(value: Any, limit: float) -> float | None:
    s = _text(value)
    if s is None:
        return None
    v = float(s)  # ValueError names the text
    if not math.isfinite(v) or not -limit <= v <= limit:
        raise ValueError(f"{s} is outside -{limit:g}..{limit:g}")
    return v


def load_inventory(path: str | Path, config: PatrolConfig) -> list[PatrolCamera]:
    """Every camera of the inventory (all shards), or InventoryError naming each bad row and column."""
    path = Path(path)
    try:
        rows = _rows(path)
    except OSError as exc:
        raise InventoryError(str(path), [f"(file): cannot read: {exc.strerror}"]) from exc
    problems: list[str] = []
    cameras: list[PatrolCamera] = []
    seen: dict[str, str] = {}
    only_group = next(iter(config.groups)) if len(config.groups) == 1 else None
    only_preset = next(iter(config.presets)) if len(config.presets) == 1 else None
    for where, row in rows:
        if not isinstance(row, dict):
            problems.append(f"{where}: expected a mapping of columns, got {type(row).__name__}")
            continue
        bad = len(problems)

        def problem(column: str, message: str, where: str = where) -> None:
            problems.append(f"{where}, column {column}: {message}")

        if "__extra__" in row:
            problem("(end)", f"more fields than the header has: {row.pop('__extra__')}")
        for key in row:
            if key not in COLUMNS:
                problem(str(key), f"unknown column (known: {', '.join(COLUMNS)})")
        cam_id = _text(row.get("id"))
        if cam_id is None:
            problem("id", "required, but empty")
        elif not _ID.match(cam_id):
            problem("id", f"{cam_id!r} may only contain letters, digits and _ . : - (1-128 characters)")
        elif cam_id in seen:
            problem("id", f"{cam_id!r} is used already in {seen[cam_id]}")
        else:
            seen[cam_id] = where
        url = _text(row.get("url"))
        if url is None:
            problem("url", "required, but empty")
        elif not url.lower().startswith(SCHEMES):
            problem("url", f"{url!r} is not an http(s) snapshot URL or an rtsp URL")
        lon = lat = None
        for column, limit in (("lon", 180.0), ("lat", 90.0)):
            try:
                value = _coordinate(row.get(column), limit)
            except ValueError as exc:
                problem(column, f"not a coordinate: {exc}")
                continue
            if column == "lon":
                lon = value
            else:
                lat = value
        group = _text(row.get("group")) or only_group
        if group is None:
            problem("group", f"required when there are several groups ({', '.join(sorted(config.groups))})")
        elif group not in config.groups:
            problem("group", f"unknown group {group!r} (groups: {', '.join(sorted(config.groups))})")
        preset = _text(row.get("preset")) or only_preset
        if preset is None:
            problem("preset", f"required (presets: {', '.join(sorted(config.presets)) or 'none defined'})")
        elif preset not in config.presets:
            problem("preset", f"unknown preset {preset!r} (presets: {', '.join(sorted(config.presets))})")
        auth_name = _text(row.get("auth")) or (config.groups[group].auth if group in config.groups else None)
        if auth_name is not None and auth_name not in config.credentials:
            problem("auth", f"unknown credentials {auth_name!r} (credentials: {', '.join(sorted(config.credentials))})")
        if len(problems) > bad:
            continue
        assert cam_id and url and group and preset
        cameras.append(PatrolCamera(id=cam_id, name=_text(row.get("name")) or cam_id, url=url, group=group,
                                    preset=preset, lon=lon, lat=lat, address=_text(row.get("address")),
                                    auth=config.credentials.get(auth_name) if auth_name else None))
    if problems:
        raise InventoryError(str(path), problems[:MAX_PROBLEMS], max(0, len(problems) - MAX_PROBLEMS))
    return cameras


def my_share(cameras: list[PatrolCamera], shard: PatrolShard | None) -> list[PatrolCamera]:
    return [c for c in cameras if in_shard(c.id, shard)]
