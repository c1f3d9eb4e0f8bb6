"""The map's data: the config's layers and the live picture as GeoJSON, in the map's coordinate system.

Layers come in two kinds. Static ones are built once from the config: the unit grid, the fleet's
forbidden zones, routes, approved sites and covered roads (each drawn in its own `crs`), cameras
and sensors at their configured positions. Live ones are read at each request: the newest cases
with a position, and, when the time series is the embedded SQLite store, each vehicle's last fix
with its recent track and each sensor's last reading.

Everything is converted to the map's `crs` (`web.map_tiles_crs`): WGS-84 by default, GCJ-02 when
the deployment's tile server draws Chinese web-map tiles, so a zone drawn in GCJ-02 and a GNSS fix
in WGS-84 land on the same street. Conversions go through core/coords.py only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.coords import from_wgs84, to_wgs84

log = logging.getLogger(__name__)

VEHICLE_WINDOW_S = 1800.0  # tracks of the last half hour
SENSOR_WINDOW_S = 6 * 3600.0  # sensor readings of the last six hours
MAX_POINTS = 50_000  # rows read from the time series per request at most
TRACK_POINTS = 60  # fixes of each vehicle's track
MAX_CASES = 500


def _convert(points: Iterable[Sequence[float]], src: str, dst: str) -> list[list[float]]:
    out = []
    for lon, lat, *_ in points:
        if src != dst:
            lon, lat = from_wgs84(*to_wgs84(lon, lat, src), dst)
        out.append([round(lon, 7), round(lat, 7)])
    return out


def _feature(layer: str, geometry: dict, **props: Any) -> dict:
    return {"type": "Feature", "properties": {"layer": layer, **props}, "geometry": geometry}


def _collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def _geometry(geom: dict, src: str, dst: str) -> dict | None:
    """A GeoJSON Polygon / MultiPolygon / LineString / Point converted from `src` to `dst`."""
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "Point":
        return {"type": kind, "coordinates": _convert([coords], src, dst)[0]}
    if kind == "LineString":
        return {"type": kind, "coordinates": _convert(coords, src, dst)}
    if kind == "Polygon":
        return {"type": kind, "coordinates": [_convert(ring, src, dst) for ring in coords]}
    if kind == "MultiPolygon":
        return {"type": kind, "coordinates": [[_convert(ring, src, dst) for ring in poly] for poly in coords]}
    return None


def static_layers(config: Any, grid_path: Path | None, crs: str) -> dict[str, dict]:
    """Grid, zones, routes, sites, roads, cameras and sensors from the config, in `crs`."""
    layers: dict[str, dict] = {}
    grid: list[dict] = []
    if grid_path is not None:
        try:
            data = json.loads(Path(grid_path).read_text(encoding="utf-8"))
            for f in data.get("features", []):
                geom = _geometry(f.get("geometry") or {}, "wgs84", crs)  # grid layers are WGS-84 GeoJSON
                if geom is not None:
                    props = f.get("properties") or {}
                    grid.append(_feature("grid", geom, code=props.get("grid_code", ""),
                                         name=props.get("street", ""), community=props.get("community", "")))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("map: grid layer %s not drawn: %s", grid_path, exc)
    layers["grid"] = _collection(grid)
    fleet = config.vehicles.fleet
    layers["zones"] = _collection([_feature("zones", {"type": "Polygon", "coordinates": [_convert(
        [*z.polygon, z.polygon[0]], z.crs, crs)]}, id=z.id, name=z.name or z.id) for z in fleet.zones])
    layers["sites"] = _collection([_feature("sites", {"type": "Polygon", "coordinates": [_convert(
        [*s.polygon, s.polygon[0]], s.crs, crs)]}, id=s.id, name=s.name or s.id) for s in fleet.sites])
    layers["routes"] = _collection([_feature("routes", {"type": "LineString", "coordinates": _convert(
        r.line, r.crs, crs)}, id=r.id, name=r.name or r.id) for r in fleet.routes])
    layers["roads"] = _collection([_feature("roads", {"type": "LineString", "coordinates": _convert(
        r.line, r.crs, crs)}, id=r.id, name=r.name or r.id) for r in fleet.roads])
    layers["cameras"] = _collection([
        _feature("cameras", {"type": "Point", "coordinates": _convert([(c.lon, c.lat)], "wgs84", crs)[0]},
                 id=c.name, name=c.address or c.name)
        for c in config.video.cameras if c.lon is not None and c.lat is not None])
    layers["sensors"] = _collection([
        _feature("sensors", {"type": "Point", "coordinates": _convert([(d.lon, d.lat)], "wgs84", crs)[0]},
                 id=d.id, name=d.name or d.id, sensor=d.kind)
        for d in config.sensors.devices])
    return layers


class SeriesReader:
    """Last vehicle fixes and sensor readings from the embedded time series (read-only connection)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _rows(self, measurement: str, since: float) -> list[tuple[float, dict, dict]]:
        if not self.path.exists():
            return []
        with self._lock:
            if self._db is None:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=5)
            rows = self._db.execute(
                "SELECT time, tags, fields FROM points WHERE measurement = ? AND time >= ? ORDER BY time DESC LIMIT ?",
                (measurement, since, MAX_POINTS)).fetchall()
        return [(t, json.loads(tags), json.loads(fields)) for t, tags, fields in reversed(rows)]

    def vehicles(self, now: float) -> dict[str, list[tuple[float, dict, dict]]]:
        """Fixes of the last half hour per vehicle (or terminal), oldest first."""
        out: dict[str, list] = {}
        for t, tags, fields in self._rows("vehicle_position", now - VEHICLE_WINDOW_S):
            key = tags.get("vehicle") or tags.get("terminal") or "?"
            out.setdefault(key, []).append((t, tags, fields))
        return out

    def readings(self, now: float) -> dict[str, list[tuple[float, dict]]]:
        """Readings of the last six hours per sensor, oldest first."""
        out: dict[str, list] = {}
        for t, tags, fields in self._rows("sensor_reading", now - SENSOR_WINDOW_S):
            out.setdefault(tags.get("device", "?"), []).append((t, fields))
        return out

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def vehicle_layer(tracks: dict[str, list[tuple[float, dict, dict]]], crs: str) -> dict:
    features = []
    for vehicle, fixes in sorted(tracks.items()):
        fixes = [f for f in fixes if f[2].get("valid", True) is not False][-TRACK_POINTS:]
        if not fixes:
            continue
        t, tags, last = fixes[-1]
        points = _convert([(f[2]["lon"], f[2]["lat"]) for f in fixes], "wgs84", crs)
        if len(points) >= 2:
            features.append(_feature("tracks", {"type": "LineString", "coordinates": points}, id=vehicle))
        features.append(_feature("vehicles", {"type": "Point", "coordinates": points[-1]}, id=vehicle,
                                 name=vehicle, type=tags.get("type", ""), time=t,
                                 speed_kmh=last.get("speed_kmh")))
    return _collection(features)


def case_layer(records: Iterable[Any], crs: str) -> dict:
    features = []
    for r in records:
        loc = r.case.get("location") or {}
        lon, lat = loc.get("lon"), loc.get("lat")
        if not isinstance(lon, int | float) or not isinstance(lat, int | float):
            continue
        cat = r.case.get("category") or {}
        features.append(_feature("cases", {"type": "Point", "coordinates": _convert([(lon, lat)], "wgs84", crs)[0]},
                                 id=r.case_id, name=cat.get("name", ""), rule=r.case.get("rule", ""),
                                 status=r.status, time=r.case.get("detected_at", "")))
    return _collection(features)


def with_readings(sensors: dict, readings: dict[str, list[tuple[float, dict]]]) -> dict:
    """The sensors layer with each sensor's last reading (and when it came)."""
    features = []
    for f in sensors["features"]:
        series = readings.get(f["properties"]["id"]) or []
        props = dict(f["properties"])
        if series:
            t, fields = series[-1]
            props["last"] = {k: v for k, v in fields.items() if isinstance(v, int | float)}
            props["time"] = t
        features.append({**f, "properties": props})
    return _collection(features)
