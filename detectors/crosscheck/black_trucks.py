"""Black trucks (黑头车): a truck seen by a checkpoint camera that no registered truck accounts for.

Unregistered muck trucks carry no terminal, so GPS alone cannot see them; a checkpoint camera can.
A truck sighted at time T by a camera with a `checkpoint` is a suspected unregistered truck when no
registered vehicle of the checkpoint's `vehicle_types` reported a fix within `radius_m` of the
camera between T - window_s and T + window_s. The verdict waits until T + window_s, so a fix that
arrives late (GPS lag, a blind-area supplement) still accounts for the truck.

Two halves, each used from one thread only:
- `CheckpointWatch` (one per camera, on that camera's analysis thread): picks the detections that
  are new trucks in the checkpoint zone, one per track, and keeps one JPEG of their frame.
- `BlackTruckRule` (on the event loop): a bounded, time-indexed memory of recent fleet fixes and
  of pending sightings; `tick(now)` decides the sightings whose window has passed.

Pure: no I/O, no clock reads (times come from the frames, the fixes and the router's tick). Camera
lon/lat and fleet fixes are both WGS-84 (positions are WGS-84 by the time they reach the rules).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Any

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from core.model import Alert, Detection, Evidence, Frame
from detectors.video.config import CameraConfig
from detectors.video.evidence import crop, render_snapshot

M_PER_DEG_LAT = 111195.0  # metres per degree of latitude on the mean Earth radius (core.coords.haversine_m's)
CELL_M = 500.0  # fixes are filed in square cells of this size, so a decision reads only those nearby
LIST_RADIUS_M = 5000.0  # registered vehicles this close (or within the radius) are listed in a case
MAX_FIXES_PER_CELL = 4096  # a depot cell full of 1 Hz terminals over the longest horizon
HORIZON_SLACK_S = 60.0  # sightings may reach the rule a little after their frame time
MAX_LISTED = 20  # registered vehicles listed in a case's facts, nearest first
SEEN_TRACKS = 4096  # track ids a watch remembers (ids only grow: older ones never come back)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A truck at a checkpoint, as its camera saw it first (one per track)."""

    camera: str
    track_id: int
    label: str
    confidence: float
    box: tuple[float, float, float, float]
    time: datetime
    picture: bytes  # JPEG of the whole frame, for the snapshot and the crop


class CheckpointWatch:
    """One camera's side: which detections of an analysed frame are trucks newly at the checkpoint.
    Owned by the camera's analysis thread."""

    def __init__(self, camera: CameraConfig) -> None:
        cp = camera.checkpoint
        if cp is None:
            raise ValueError(f"camera {camera.name!r} is not a checkpoint")
        self.camera = camera.name
        self.classes = frozenset(cp.classes)
        self.min_confidence = cp.min_confidence
        self.quality = camera.evidence.jpeg_quality
        zone = next((z for z in camera.zones if z.name == cp.zone), None) if cp.zone else None
        self.zone = Polygon(zone.polygon) if zone is not None else None
        if self.zone is not None:
            shapely.prepare(self.zone)
        self._seen: OrderedDict[int, None] = OrderedDict()

    def sightings(self, detections: Iterable[Detection], frame: Frame) -> list[Sighting]:
        """The new trucks among `detections` (tracked, of `frame`); the frame is encoded once, only
        when there is one."""
        new = [d for d in detections if self._qualifies(d)]
        if not new:
            return []
        for d in new:
            self._seen[d.track_id] = None  # type: ignore[index]
        while len(self._seen) > SEEN_TRACKS:
            self._seen.popitem(last=False)
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, int(self.quality)])
        picture = buf.tobytes() if ok else b""  # no picture: the case is still filed, without the drawing
        return [Sighting(self.camera, d.track_id, d.label, d.confidence, d.box, frame.time, picture)  # type: ignore[arg-type]
                for d in new]

    def _qualifies(self, d: Detection) -> bool:
        if d.track_id is None or d.track_id in self._seen:
            return False
        if d.label not in self.classes or d.confidence < self.min_confidence:
            return False
        return self.zone is None or bool(shapely.intersects_xy(self.zone, *d.foot))


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    camera: str
    lon: float
    lat: float
    radius_m: float
    window_s: float
    vehicle_types: frozenset[str]
    zone: str | None
    zone_polygon: tuple[tuple[float, float], ...] | None
    rule: str
    category: str | None
    severity: str
    max_pending: int
    address: str | None
    quality: int


class BlackTruckRule:
    """The loop's side: fixes and sightings in, suspected unregistered trucks out (at T + window)."""

    def __init__(self, cameras: Sequence[CameraConfig], vehicle_types: Mapping[str, str], *,
                 timezone: tzinfo = UTC) -> None:
        """`cameras`: those with a checkpoint; `vehicle_types`: fleet vehicle id -> type."""
        self.timezone = timezone  # the time printed on snapshots
        self.checkpoints: dict[str, _Checkpoint] = {}
        for cam in cameras:
            cp = cam.checkpoint
            if cp is None:
                continue
            assert cam.lon is not None and cam.lat is not None  # CameraConfig requires them for a checkpoint
            zone = next((z for z in cam.zones if z.name == cp.zone), None) if cp.zone else None
            self.checkpoints[cam.name] = _Checkpoint(
                cam.name, cam.lon, cam.lat, cp.radius_m, cp.window_s, frozenset(cp.vehicle_types), cp.zone,
                tuple(zone.polygon) if zone else None, cp.rule, cp.category, cp.severity, cp.max_pending,
                cam.address, cam.evidence.jpeg_quality)
        self.watches = {c.name: CheckpointWatch(c) for c in cameras if c.checkpoint is not None}
        wanted = set().union(*(cp.vehicle_types for cp in self.checkpoints.values()))
        # only the vehicles some checkpoint asks about are remembered
        self.vehicle_types = {v: t for v, t in vehicle_types.items() if t in wanted}
        self._by_type: dict[str, list[str]] = {}
        for vehicle, kind in self.vehicle_types.items():
            self._by_type.setdefault(kind, []).append(vehicle)
        windows = [cp.window_s for cp in self.checkpoints.values()]
        self.horizon_s = 2 * max(windows, default=0.0) + HORIZON_SLACK_S  # how long a fix can still matter
        # metres on one equirectangular plane through the first checkpoint: exact enough at a city's scale
        first = next(iter(self.checkpoints.values()), None)
        self._lon0, self._lat0 = (first.lon, first.lat) if first else (0.0, 0.0)
        self._kx = M_PER_DEG_LAT * math.cos(math.radians(self._lat0))
        # cell -> fixes (t, x, y, vehicle) in arrival order (mostly time order; blind-area supplements
        # come late and old), dropped once older than the horizon
        self._cells: dict[tuple[int, int], deque[tuple[float, float, float, str]]] = {}
        self._last_fix: dict[str, float] = {}  # vehicle -> its newest fix time
        self._pending: dict[str, deque[Sighting]] = {name: deque() for name in self.checkpoints}
        self.stats: dict[str, int] = {"fixes": 0, "sightings": 0, "accounted": 0, "suspected": 0,
                                      "dropped_full": 0}

    # -- input -----------------------------------------------------------------------------

    def on_fix(self, vehicle: str, lon: float, lat: float, time: datetime) -> None:
        """An accepted fix of a fleet vehicle (resolved to its vehicle id); others are ignored."""
        if vehicle not in self.vehicle_types:
            return
        t = time.timestamp()
        x, y = (lon - self._lon0) * self._kx, (lat - self._lat0) * M_PER_DEG_LAT
        key = (math.floor(x / CELL_M), math.floor(y / CELL_M))
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = deque(maxlen=MAX_FIXES_PER_CELL)
        cell.append((t, x, y, vehicle))
        if t > self._last_fix.get(vehicle, -math.inf):
            self._last_fix[vehicle] = t
        self.stats["fixes"] += 1

    @property
    def fixes_held(self) -> int:
        return sum(len(c) for c in self._cells.values())

    def on_sightings(self, sightings: Iterable[Sighting]) -> None:
        for s in sightings:
            pending = self._pending.get(s.camera)
            if pending is None:
                continue  # not a checkpoint (any more)
            if len(pending) >= self.checkpoints[s.camera].max_pending:
                self.stats["dropped_full"] += 1  # bounded: each holds a JPEG
                continue
            pending.append(s)
            self.stats["sightings"] += 1

    # -- clock -----------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[Alert]:
        """Decide every sighting whose window has passed; forget fixes too old to matter."""
        t_now = now.timestamp()
        out: list[Alert] = []
        for name, pending in self._pending.items():
            cp = self.checkpoints[name]
            if not any(s.time.timestamp() + cp.window_s <= t_now for s in pending):
                continue
            due = [s for s in pending if s.time.timestamp() + cp.window_s <= t_now]
            self._pending[name] = deque(s for s in pending if s.time.timestamp() + cp.window_s > t_now)
            for s in due:
                alert = self._decide(cp, s)
                if alert is None:
                    self.stats["accounted"] += 1
                else:
                    self.stats["suspected"] += 1
                    out.append(alert)
        cutoff = t_now - self.horizon_s
        for key, cell in list(self._cells.items()):
            while cell and cell[0][0] < cutoff:
                cell.popleft()
            if not cell:
                del self._cells[key]
        return out

    @property
    def pending(self) -> int:
        return sum(len(p) for p in self._pending.values())

    # -- verdict ---------------------------------------------------------------------------

    def _decide(self, cp: _Checkpoint, s: Sighting) -> Alert | None:
        t = s.time.timestamp()
        lo, hi = t - cp.window_s, t + cp.window_s
        cx, cy = (cp.lon - self._lon0) * self._kx, (cp.lat - self._lat0) * M_PER_DEG_LAT
        reach = max(LIST_RADIUS_M, cp.radius_m)
        r2 = cp.radius_m * cp.radius_m
        types, kinds = cp.vehicle_types, self.vehicle_types
        nearest: dict[str, tuple[float, float]] = {}  # vehicle -> squared distance, fix time
        x0, x1 = math.floor((cx - reach) / CELL_M), math.floor((cx + reach) / CELL_M)
        y0, y1 = math.floor((cy - reach) / CELL_M), math.floor((cy + reach) / CELL_M)
        for ix in range(x0, x1 + 1):
            for iy in range(y0, y1 + 1):
                for ft, x, y, vehicle in self._cells.get((ix, iy), ()):
                    if lo <= ft <= hi and kinds[vehicle] in types:
                        d2 = (x - cx) ** 2 + (y - cy) ** 2
                        if d2 <= r2:
                            return None  # a registered truck was there: this was (most likely) it
                        best = nearest.get(vehicle)
                        if best is None or d2 < best[0]:
                            nearest[vehicle] = (d2, ft)
        checked = sorted((math.sqrt(d2), v, ft) for v, (d2, ft) in nearest.items() if d2 <= reach * reach)
        vehicles = [v for kind in sorted(types) for v in self._by_type.get(kind, ())]
        reporting = sum(1 for v in vehicles if self._last_fix.get(v, -math.inf) >= lo)
        return self._alert(cp, s, checked[:MAX_LISTED], len(vehicles), reporting, reach)

    def _alert(self, cp: _Checkpoint, s: Sighting, checked: list[tuple[float, str, float]],
               registered: int, reporting: int, listed_within_m: float) -> Alert:
        nearest = [{"vehicle": v, "distance_m": round(d), "fix_time": datetime.fromtimestamp(ft, UTC).isoformat()}
                   for d, v, ft in checked]
        facts: dict[str, Any] = {
            "object": s.label, "confidence": round(s.confidence, 2), "radius_m": cp.radius_m,
            "window_s": cp.window_s, "vehicle_types": sorted(cp.vehicle_types),
            # how many registered vehicles could have vouched, how many were reporting at the time, and
            # those that were within `registered_listed_within_m` (nearest first, with that fix's time)
            "registered_vehicles": registered, "registered_reporting": reporting,
            "registered_listed_within_m": listed_within_m, "registered_nearest": nearest,
        }
        if cp.address:
            facts["address"] = cp.address
        who = f"{s.label} #{s.track_id}"
        if checked:
            why = f"nearest registered {checked[0][1]} at {checked[0][0]:.0f} m"
        else:
            why = f"none of {registered} registered vehicles within {listed_within_m:.0f} m"
        message = (f"{cp.rule}: {who} at checkpoint {cp.camera} with no registered "
                   f"{'/'.join(sorted(cp.vehicle_types))} within {cp.radius_m:.0f} m ±{cp.window_s:.0f} s ({why})")
        render = partial(render_sighting, s, cp.zone_polygon, s.time.astimezone(self.timezone), cp.quality)
        return Alert(rule=cp.rule, subject_kind="camera", subject_id=cp.camera, state="open", time=s.time,
                     source="video", severity=cp.severity, message=message, category=cp.category,  # type: ignore[arg-type]
                     place=cp.zone or "", lon=cp.lon, lat=cp.lat, track_id=s.track_id, facts=facts,
                     render_evidence=render if cp.category is not None else None)


def render_sighting(s: Sighting, zone_polygon: Sequence[Sequence[float]] | None, local_time: datetime,
                    quality: int) -> tuple[Evidence, ...]:
    """The snapshot (zone and truck drawn) and the crop, from the sighting's frame; drawn by the case
    desk, only for a new case."""
    image = cv2.imdecode(np.frombuffer(s.picture, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"camera {s.camera}: the picture of track {s.track_id} cannot be decoded")
    det = Detection(s.label, 0, s.confidence, s.box, s.track_id)
    snapshot = render_snapshot(image, det, zone_polygon, s.label, s.track_id, local_time, s.camera, quality)
    return (Evidence("snapshot.jpg", "image/jpeg", snapshot),
            Evidence("crop.jpg", "image/jpeg", crop(image, s.box, quality)))
