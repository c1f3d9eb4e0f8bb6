"""Recorded vehicle tracks as CSV: `time,device,lon,lat[,speed_kmh,course,status,alarm,altitude_m]`.

`time` is ISO 8601 with an offset (a naive time is an error: recordings travel between zones).
Pure: text in, positions out; errors name the line.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime

from core.model import Position

REQUIRED = ("time", "device", "lon", "lat")
_FLOATS = ("speed_kmh", "course", "altitude_m")
_INTS = ("status", "alarm")


class TrackError(ValueError):
    pass


def parse_positions_csv(text: str, source: str = "track") -> list[Position]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise TrackError(f"{source}: line 1: missing column(s) {', '.join(missing)}")
    positions = []
    for row in reader:
        where = f"{source}: line {reader.line_num}"
        try:
            when = datetime.fromisoformat(row["time"].strip())
            if when.tzinfo is None:
                raise TrackError(f"{where}: time {row['time']!r} has no UTC offset")
            extra = {k: float(row[k]) for k in _FLOATS if row.get(k) not in (None, "")}
            extra.update({k: int(row[k], 0) for k in _INTS if row.get(k) not in (None, "")})
            status = int(extra.pop("status", 0b10))  # bit 1 = fix valid; default: valid
            positions.append(Position(lat=float(row["lat"]), lon=float(row["lon"]), time=when,
                                      device=row["device"].strip(), status=status, valid=bool(status & 0b10),
                                      **extra))
        except TrackError:
            raise
        except (ValueError, TypeError) as exc:
            raise TrackError(f"{where}: {exc}") from exc
    return positions
