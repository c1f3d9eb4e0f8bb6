"""WGS-84 <-> GCJ-02 conversion: the ONE place coordinate systems are converted.

Terminals report WGS-84 (GNSS); Chinese city map layers are often in GCJ-02 ("Mars coordinates"),
the obfuscated system that Chinese web maps use. GCJ-02 adds a smooth offset of a few hundred
metres inside China and nothing outside it. The forward transform is the well-known published
algorithm (Krasovsky ellipsoid constants); the inverse has no closed form, so it is solved by
fixed-point iteration to well under a centimetre.

Pure functions, (lon, lat) order everywhere, degrees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

Crs = Literal["wgs84", "gcj02"]
CRS_NAMES: tuple[str, ...] = ("wgs84", "gcj02")

_A = 6378245.0  # Krasovsky 1940 semi-major axis, as the GCJ-02 algorithm uses
_EE = 0.00669342162296594323  # its first eccentricity squared


def out_of_china(lon: float, lat: float) -> bool:
    """GCJ-02 leaves points outside this rough box of China untouched (as the published code does)."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _transform_lat(x: float, y: float) -> float:
    ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    ret += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return ret


def _transform_lon(x: float, y: float) -> float:
    ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    ret += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return ret


def _offset(lon: float, lat: float) -> tuple[float, float]:
    """The GCJ-02 offset (dlon, dlat) in degrees at a WGS-84 point."""
    dlat = _transform_lat(lon - 105.0, lat - 35.0)
    dlon = _transform_lon(lon - 105.0, lat - 35.0)
    radlat = lat / 180.0 * math.pi
    magic = math.sin(radlat)
    magic = 1 - _EE * magic * magic
    sqrtmagic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrtmagic) * math.pi)
    dlon = (dlon * 180.0) / (_A / sqrtmagic * math.cos(radlat) * math.pi)
    return dlon, dlat


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    if out_of_china(lon, lat):
        return lon, lat
    dlon, dlat = _offset(lon, lat)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84(lon: float, lat: float, tolerance_deg: float = 1e-9) -> tuple[float, float]:
    """Inverse by iteration: find w with wgs84_to_gcj02(w) == (lon, lat). Converges in a few steps
    because the offset changes slowly (its gradient is ~1e-3)."""
    if out_of_china(lon, lat):
        return lon, lat
    wlon, wlat = lon, lat
    for _ in range(30):
        glon, glat = wgs84_to_gcj02(wlon, wlat)
        ex, ey = glon - lon, glat - lat
        wlon -= ex
        wlat -= ey
        if abs(ex) < tolerance_deg and abs(ey) < tolerance_deg:
            break
    return wlon, wlat


def to_wgs84(lon: float, lat: float, crs: Crs) -> tuple[float, float]:
    """Convert one point given in `crs` to WGS-84."""
    if crs == "wgs84":
        return lon, lat
    if crs == "gcj02":
        return gcj02_to_wgs84(lon, lat)
    raise ValueError(f"unknown coordinate system {crs!r}; expected one of {', '.join(CRS_NAMES)}")


def from_wgs84(lon: float, lat: float, crs: Crs) -> tuple[float, float]:
    """Convert one WGS-84 point to `crs` (for drawing a result back on a layer's own map)."""
    if crs == "wgs84":
        return lon, lat
    if crs == "gcj02":
        return wgs84_to_gcj02(lon, lat)
    raise ValueError(f"unknown coordinate system {crs!r}; expected one of {', '.join(CRS_NAMES)}")


def coords_to_wgs84(points: Iterable[tuple[float, float]], crs: Crs) -> list[tuple[float, float]]:
    """Convert a vertex list (a polygon ring or a line) given in `crs` to WGS-84."""
    return [to_wgs84(float(lon), float(lat), crs) for lon, lat in points]


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres (mean Earth radius)."""
    r = 6371008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(h)))
