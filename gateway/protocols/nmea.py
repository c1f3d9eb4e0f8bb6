"""NMEA 0183 RMC and GGA sentences -> Position. Pure: no I/O.

`parse` checks the `*hh` checksum (XOR of the characters between `$` and `*`) and returns a
Position, or None for a well-formed sentence that carries no fix position (other sentence types
such as GSV/GSA, or an RMC/GGA with empty coordinates). Malformed sentences raise DecodeError.
NMEA times are UTC. GGA has no date: it is taken from `ref` (the receive time), choosing the day
that puts the fix closest to it so that a fix just before midnight is not dated a day late.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta

from core.model import Position

KNOT_KMH = 1.852


class DecodeError(ValueError):
    """A sentence that is not valid NMEA 0183; the message says why."""


def checksum(payload: str) -> int:
    """XOR of the characters between '$' and '*'."""
    value = 0
    for char in payload.encode("ascii", errors="replace"):
        value ^= char
    return value


def _split(sentence: str) -> list[str]:
    text = sentence.strip()
    if not text.startswith(("$", "!")):
        raise DecodeError(f"sentence must start with '$': {text[:20]!r}")
    star = text.rfind("*")
    if star < 0:
        raise DecodeError(f"sentence has no '*hh' checksum: {text[:20]!r}")
    payload, given = text[1:star], text[star + 1 :]
    try:
        expected = int(given, 16)
    except ValueError:
        raise DecodeError(f"checksum {given!r} is not hex") from None
    if len(given) != 2 or checksum(payload) != expected:
        raise DecodeError(f"checksum mismatch: sentence says {given}, computed {checksum(payload):02X}")
    return payload.split(",")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DecodeError(f"{what}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DecodeError(f"{what}: not a finite number: {text!r}")
    return value


def _coordinate(value: str, hemisphere: str, degree_digits: int, what: str) -> float:
    """ddmm.mmmm / dddmm.mmmm with N/S or E/W -> signed degrees."""
    if len(value) < degree_digits + 2 or value[degree_digits:].startswith("."):
        raise DecodeError(f"{what}: malformed {value!r}")
    degrees = _number(value[:degree_digits], what)
    minutes = _number(value[degree_digits:], what)
    if minutes >= 60:
        raise DecodeError(f"{what}: minutes {minutes} out of range")
    result = degrees + minutes / 60
    if hemisphere in ("S", "W"):
        result = -result
    elif hemisphere not in ("N", "E"):
        raise DecodeError(f"{what}: hemisphere {hemisphere!r}")
    if result > (90 if degree_digits == 2 else 180) or result < -(90 if degree_digits == 2 else 180):
        raise DecodeError(f"{what}: {result} out of range")
    return result


def _time(text: str) -> time:
    if len(text) < 6 or not text[:6].isdigit():
        raise DecodeError(f"time: malformed {text!r}")
    fraction = _number(text[6:], "time") if len(text) > 6 else 0.0
    try:
        return time(
            int(text[0:2]), int(text[2:4]), int(text[4:6]), round(fraction * 1e6) % 1_000_000, tzinfo=UTC
        )
    except ValueError as exc:
        raise DecodeError(f"time {text!r}: {exc}") from None


def _date(text: str) -> date:
    if len(text) != 6 or not text.isdigit():
        raise DecodeError(f"date: malformed {text!r}")
    try:
        year = int(text[4:6])
        return date(year + (1900 if year >= 80 else 2000), int(text[2:4]), int(text[0:2]))
    except ValueError as exc:
        raise DecodeError(f"date {text!r}: {exc}") from None


def _optional(text: str, what: str) -> float:
    return _number(text, what) if text else 0.0


def parse(sentence: str, device: str = "", *, ref: datetime | None = None) -> Position | None:
    """Parse one RMC or GGA sentence (any talker: GP, GN, BD, GL, GA) into a Position."""
    fields = _split(sentence)
    kind = fields[0][-3:] if len(fields[0]) >= 5 else ""
    try:
        if kind == "RMC":
            return _rmc(fields, device)
        if kind == "GGA":
            return _gga(fields, device, ref or datetime.now(UTC))
    except IndexError:
        raise DecodeError(f"{fields[0]}: too few fields ({len(fields)})") from None
    except (ValueError, OverflowError) as exc:  # DecodeError is re-raised as it is
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"{fields[0]}: {exc}") from None
    return None


def _rmc(f: list[str], device: str) -> Position | None:
    # $xxRMC,time,status,lat,N/S,lon,E/W,speed knots,course,date,magvar,E/W[,mode]
    if not f[3] or not f[5]:
        return None
    when = datetime.combine(_date(f[9]), _time(f[1]))
    return Position(
        lat=_coordinate(f[3], f[4], 2, "latitude"),
        lon=_coordinate(f[5], f[6], 3, "longitude"),
        time=when,
        speed_kmh=_optional(f[7], "speed") * KNOT_KMH,
        course=_optional(f[8], "course"),
        device=device,
        valid=f[2] == "A" and (len(f) < 13 or f[12][:1] != "N"),
        extras={"source": "nmea_rmc"},
    )


def _gga(f: list[str], device: str, ref: datetime) -> Position | None:
    # $xxGGA,time,lat,N/S,lon,E/W,quality,satellites,hdop,altitude,M,geoid,M,age,station
    if not f[2] or not f[4]:
        return None
    clock = _time(f[1])
    ref = ref.astimezone(UTC)
    candidates = [datetime.combine(ref.date() + timedelta(days=d), clock) for d in (-1, 0, 1)]
    when = min(candidates, key=lambda c: abs(c - ref))
    quality = int(_optional(f[6], "fix quality"))
    extras: dict[str, float | int | str] = {"source": "nmea_gga", "fix_quality": quality}
    if f[7]:
        extras["satellites"] = int(_number(f[7], "satellites"))
    if f[8]:
        extras["hdop"] = _number(f[8], "hdop")
    return Position(
        lat=_coordinate(f[2], f[3], 2, "latitude"),
        lon=_coordinate(f[4], f[5], 3, "longitude"),
        time=when,
        altitude_m=_optional(f[9], "altitude"),
        device=device,
        valid=quality > 0,
        extras=extras,
    )
