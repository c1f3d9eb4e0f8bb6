"""Sensor series as CSV, for replay and demos: text in, Readings out (pure parsing, no file I/O).

Format: a header `time,device,<field>,...`, then one reading per row. `time` is ISO 8601 with a
UTC offset (e.g. 2026-07-15T14:00:30+08:00); an empty cell means the reading lacks that field.
Blank lines and lines starting with '#' are skipped. Units come from the field name's suffix
(level_cm -> cm, rain_mm -> mm, battery_v -> V, temp_c -> °C).

The runtime replays a series by the gaps between the rows' times (optionally sped up), so the
absolute date in a file does not matter; `schedule` gives those gaps.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime

from core.model import Reading

_UNIT_SUFFIXES = {"_cm": "cm", "_mm": "mm", "_m": "m", "_v": "V", "_c": "°C", "_pct": "%"}


class SensorCsvError(ValueError):
    """A malformed sensor CSV; the message names the line (1-based) and the column."""


def unit_of(field: str) -> str:
    for suffix, unit in _UNIT_SUFFIXES.items():
        if field.lower().endswith(suffix):
            return unit
    return ""


def parse_readings_csv(text: str, profile: str = "") -> list[Reading]:
    """Parse a sensor CSV into Readings in file order; raises SensorCsvError naming the line."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SensorCsvError("sensor CSV is empty: expected a header 'time,device,<field>,...'")
    rows = [next(csv.reader([line])) for _, line in lines]  # one row per line keeps line numbers exact
    header_no = lines[0][0]
    header = [h.strip() for h in rows[0]]
    if header[:2] != ["time", "device"] or len(header) < 3:
        raise SensorCsvError(f"line {header_no}: header must be 'time,device,<field>,...', got {','.join(header)!r}")
    fields = header[2:]
    if any(not f for f in fields):
        raise SensorCsvError(f"line {header_no}: empty column name in header")
    repeated = sorted({f for f in fields if fields.count(f) > 1})
    if repeated:
        raise SensorCsvError(f"line {header_no}: repeated column {', '.join(repeated)}")
    units = {f: unit_of(f) for f in fields if unit_of(f)}
    readings: list[Reading] = []
    for (n, _), row in zip(lines[1:], rows[1:], strict=True):
        if len(row) != len(header):
            raise SensorCsvError(f"line {n}: {len(row)} cells, the header has {len(header)}")
        time = _parse_time(row[0].strip(), n)
        device = row[1].strip()
        if not device:
            raise SensorCsvError(f"line {n}: empty device")
        values: dict[str, float] = {}
        for name, cell in zip(fields, row[2:], strict=True):
            cell = cell.strip()
            if not cell:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise SensorCsvError(f"line {n}: column {name!r} is {cell!r}, not a number") from None
            if not math.isfinite(value):
                raise SensorCsvError(f"line {n}: column {name!r} is {cell!r}, not a finite number")
            values[name] = value
        if not values:
            raise SensorCsvError(f"line {n}: no values (every field column is empty)")
        readings.append(Reading(device=device, time=time, values=values, profile=profile,
                                units={k: u for k, u in units.items() if k in values}))
    return readings


def _parse_time(cell: str, line: int) -> datetime:
    try:
        time = datetime.fromisoformat(cell)
    except ValueError:
        raise SensorCsvError(f"line {line}: time {cell!r} is not ISO 8601 (e.g. 2026-07-15T14:00:00+08:00)") from None
    if time.tzinfo is None or time.utcoffset() is None:
        raise SensorCsvError(f"line {line}: time {cell!r} has no UTC offset (add e.g. +08:00)")
    return time


def schedule(readings: list[Reading], speed: float = 1.0) -> list[tuple[float, Reading]]:
    """(seconds after the first reading, divided by speed, reading) in time order, for a replayer."""
    if speed <= 0:
        raise ValueError(f"replay speed must be > 0, got {speed}")
    ordered = sorted(readings, key=lambda r: r.time)
    if not ordered:
        return []
    start = ordered[0].time
    return [((r.time - start).total_seconds() / speed, r) for r in ordered]
