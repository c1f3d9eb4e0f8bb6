"""Zone rules of one camera: tracked detections in, case open/close events out.

Robust to what real trackers do:
- fragmentation: a parked car often gets two or three track ids in a minute. A new track whose
  box overlaps a just-lost track of the same rule inherits its timers, and one that overlaps the
  box of an open case's object continues that case: never a second case for the same object.
- false positives: an object is trusted on its track's median score, not one frame's score.
- low, irregular detect rates: timers tolerate gaps up to the rule's clear_after_s.

Times are the frames' timezone-aware datetimes; schedules are read in their own time zone.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count
from typing import Any, Literal
from zoneinfo import ZoneInfo

import shapely
from shapely.geometry import Polygon

from core.model import Detection
from detectors.video.config import CameraConfig, ScheduleConfig, VideoRuleConfig

CONTINUE_IOU = 0.3  # overlap that makes a new track the same object as a lost track or an open case
DEFAULT_MOTION_FRACTION = 0.03  # dwell: stationary within 3% of the frame diagonal, unless configured

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """A case opens (with the object that made it) or closes."""

    rule: VideoRuleConfig
    state: Literal["open", "closed"]
    time: datetime
    zone: str  # zone name, "" for whole-frame and line rules
    category: str | None
    detection: Detection  # the object (count rule: a detection covering the crowd)
    track_id: int | None
    facts: dict[str, Any]
    case_no: int  # per-camera sequence number of the case; the open and its close share it


def schedule_active(schedule: ScheduleConfig | None, when: datetime) -> bool:
    """Whether `when` falls on one of the schedule's days and inside one of its hour windows."""
    if schedule is None:
        return True
    local = when.astimezone(ZoneInfo(schedule.timezone))
    if local.weekday() not in schedule.days:
        return False
    if not schedule.hours:
        return True
    minute = local.hour * 60 + local.minute + local.second / 60
    for window in schedule.hours:
        start_s, end_s = window.strip().split("-")
        start = int(start_s[:2]) * 60 + int(start_s[3:])
        end = int(end_s[:2]) * 60 + int(end_s[3:])
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return False


def box_iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(point: tuple[float, float], box: Box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _side(line: tuple[tuple[float, float], tuple[float, float]], p: tuple[float, float]) -> float:
    """> 0: p is right of the directed line A→B (image coordinates, y down); < 0: left."""
    (ax, ay), (bx, by) = line
    return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)


def _segments_cross(p: tuple[float, float], q: tuple[float, float],
                    line: tuple[tuple[float, float], tuple[float, float]]) -> bool:
    """Whether the step p→q crosses the segment A-B (not just its infinite extension)."""
    a, b = line
    s1, s2 = _side(line, p), _side(line, q)
    s3, s4 = _side((p, q), a), _side((p, q), b)
    return s1 * s2 < 0 and s3 * s4 <= 0


@dataclass(eq=False)
class _Case:
    no: int
    box: Box
    detection: Detection
    opened_t: float
    last_t: float  # last time one of its objects met the rule's condition
    track_ids: set[int] = field(default_factory=set)
    since_t: float = 0.0  # when the condition started (dwell / presence start)
    category: str | None = None  # fixed at opening, so the close names the same catalog entry
    track_id: int | None = None  # the track that opened it: open and close carry the same id, so the
    #                              case desk pairs them even after the object's track fragmented


@dataclass(eq=False)
class _Object:
    """What one rule remembers about one track."""

    track_id: int
    box: Box
    seen_t: float  # last sighting of any kind
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    since_t: float | None = None  # condition start (presence) — None: not in the zone
    anchor: tuple[float, float] | None = None  # dwell: where the object stopped
    anchor_t: float | None = None
    last_t: float | None = None  # last sighting that met the rule's condition
    prev_foot: tuple[float, float] | None = None  # line crossing
    crossed: bool = False
    case: _Case | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.scores) if self.scores else 0.0

    def reset(self) -> None:
        self.since_t = self.anchor = self.anchor_t = self.last_t = None


class _RuleState:
    def __init__(self, rule: VideoRuleConfig, zone: Polygon | None, case_numbers: count) -> None:
        self.rule = rule
        self.zone = zone
        self.zone_name = rule.zone or ""
        self.classes = set(rule.classes)
        self.objects: dict[int, _Object] = {}
        self.cases: list[_Case] = []
        self.closed: deque[tuple[Box | None, float]] = deque(maxlen=64)  # for the cooldown
        self.count_since: float | None = None
        self.count_last_ok: float | None = None
        self._numbers = case_numbers

    # ------------------------------------------------------------ helpers

    def _in_zone(self, foot: tuple[float, float]) -> bool:
        return self.zone is None or bool(shapely.intersects_xy(self.zone, foot[0], foot[1]))

    def _cooling(self, box: Box | None, t: float) -> bool:
        cd = self.rule.cooldown_s
        return cd > 0 and any(t - ct < cd and (box is None or cb is None or box_iou(box, cb) > CONTINUE_IOU)
                              for cb, ct in self.closed)

    def _object(self, det: Detection, t: float, present: set[int]) -> _Object:
        tid = det.track_id
        assert tid is not None
        obj = self.objects.get(tid)
        if obj is not None:
            return obj
        obj = _Object(tid, det.box, t)
        # a fragment of a track lost moments ago on the same spot: take over its history
        for old in list(self.objects.values()):
            if old.track_id in present or t - old.seen_t > self.rule.clear_after_s:
                continue
            if box_iou(old.box, det.box) > CONTINUE_IOU or _inside(det.foot, old.box):
                obj.scores.extend(old.scores)
                obj.since_t, obj.anchor, obj.anchor_t, obj.last_t = old.since_t, old.anchor, old.anchor_t, old.last_t
                obj.prev_foot, obj.crossed, obj.case = old.prev_foot, old.crossed, old.case
                if old.case is not None:
                    old.case.track_ids.add(tid)
                del self.objects[old.track_id]
                break
        self.objects[tid] = obj
        return obj

    def _open_case_for(self, det: Detection, present: set[int]) -> _Case | None:
        """An open case whose object this detection's box continues (a fragmented track)."""
        for case in self.cases:
            if box_iou(case.box, det.box) > CONTINUE_IOU:
                return case
            if _inside(det.foot, case.box) and not (case.track_ids & present):
                return case
        return None

    def _open(self, det: Detection, t: float, since: float, when: datetime, facts: dict[str, Any]) -> RuleEvent:
        category = self.rule.class_categories.get(det.label, self.rule.category)
        case = _Case(next(self._numbers), det.box, det, opened_t=t, last_t=t, since_t=since, category=category,
                     track_id=det.track_id)
        if det.track_id is not None:
            case.track_ids.add(det.track_id)
        self.cases.append(case)
        return self._event("open", case, when, facts)

    def _event(self, state: Literal["open", "closed"], case: _Case, when: datetime,
               facts: dict[str, Any]) -> RuleEvent:
        det = case.detection
        base = {"object": det.label, "box": [round(v, 1) for v in case.box], "zone": self.zone_name,
                "track_ids": sorted(case.track_ids), "case_no": case.no}
        return RuleEvent(self.rule, state, when, self.zone_name, case.category, det, case.track_id,
                         base | facts, case.no)

    # ------------------------------------------------------------ per frame

    def update(self, tracked: list[Detection], t: float, when: datetime, frame_size: tuple[int, int],
               active: bool) -> list[RuleEvent]:
        rule = self.rule
        mine = [d for d in tracked if d.track_id is not None and (not self.classes or d.label in self.classes)]
        present = {d.track_id for d in mine}
        events: list[RuleEvent] = []
        if rule.kind == "count":
            events += self._update_count(mine, t, when, active)
        else:
            max_motion = rule.max_motion_px or DEFAULT_MOTION_FRACTION * math.hypot(*frame_size)
            for det in mine:
                obj = self._object(det, t, present)
                obj.scores.append(det.confidence)
                obj.box, obj.seen_t = det.box, t
                if rule.kind == "line_crossing":
                    ev = self._line(obj, det, t, when, active)
                else:
                    ev = self._zone(obj, det, t, when, active, max_motion, present)
                if ev is not None:
                    events.append(ev)
        events += self.expire(t, when)
        return events

    def _zone(self, obj: _Object, det: Detection, t: float, when: datetime, active: bool,
              max_motion: float, present: set[int]) -> RuleEvent | None:
        rule = self.rule
        if not (active and det.area >= rule.min_area_px and self._in_zone(det.foot)):
            return None
        foot = det.foot
        if obj.last_t is not None and t - obj.last_t > rule.clear_after_s:
            obj.reset()  # gone too long: timing starts again
        if obj.since_t is None:
            obj.since_t, obj.anchor, obj.anchor_t = t, foot, t
        elif rule.kind == "dwell" and math.dist(foot, obj.anchor) > max_motion:
            obj.anchor, obj.anchor_t = foot, t  # it moved: stationary from here on
        obj.last_t = t

        case = obj.case if obj.case in self.cases else self._open_case_for(det, present)
        if case is not None:  # an open case continues, whichever track id the object has now
            obj.case = case
            case.track_ids.add(obj.track_id)
            case.last_t, case.box, case.detection = t, det.box, det
            return None
        obj.case = None
        since = obj.anchor_t if rule.kind == "dwell" else obj.since_t
        assert since is not None
        if t - since < rule.min_seconds or obj.median < rule.min_confidence or self._cooling(det.box, t):
            return None
        key = "dwell_s" if rule.kind == "dwell" else "present_s"
        ev = self._open(det, t, since, when, {key: round(t - since, 1), "confidence": round(obj.median, 3)})
        obj.case = self.cases[-1]
        return ev

    def _line(self, obj: _Object, det: Detection, t: float, when: datetime, active: bool) -> RuleEvent | None:
        rule = self.rule
        assert rule.line is not None
        prev, foot = obj.prev_foot, det.foot
        if _side(rule.line, foot) != 0:  # a foot exactly on the line has not crossed yet
            obj.prev_foot = foot
        if obj.case is not None and obj.case in self.cases:
            obj.case.last_t, obj.case.box, obj.case.detection = t, det.box, det
            return None
        if prev is None or obj.crossed or not _segments_cross(prev, foot, rule.line):
            return None
        way = "left_to_right" if _side(rule.line, foot) > 0 else "right_to_left"
        if rule.direction not in ("any", way):
            return None
        if not active or det.area < rule.min_area_px or obj.median < rule.min_confidence:
            return None
        obj.crossed = True  # one case per object and line
        ev = self._open(det, t, t, when, {"direction": way, "confidence": round(obj.median, 3)})
        obj.case = self.cases[-1]
        return ev

    def _update_count(self, mine: list[Detection], t: float, when: datetime, active: bool) -> list[RuleEvent]:
        rule = self.rule
        for d in mine:  # median trust needs each track's history
            obj = self.objects.get(d.track_id) or self.objects.setdefault(d.track_id, _Object(d.track_id, d.box, t))
            obj.scores.append(d.confidence)
            obj.box, obj.seen_t = d.box, t
        crowd = [d for d in mine if active and d.area >= rule.min_area_px and self._in_zone(d.foot)
                 and self.objects[d.track_id].median >= rule.min_confidence]
        if len(crowd) < rule.min_count:
            return []
        if self.count_last_ok is None or t - self.count_last_ok > rule.clear_after_s:
            self.count_since = t
        self.count_last_ok = t
        box = (min(d.box[0] for d in crowd), min(d.box[1] for d in crowd),
               max(d.box[2] for d in crowd), max(d.box[3] for d in crowd))
        label = statistics.mode(d.label for d in crowd)
        union = Detection(label, crowd[0].class_id, statistics.median(d.confidence for d in crowd), box)
        if self.cases:
            case = self.cases[0]
            case.last_t, case.box, case.detection = t, box, union
            case.track_ids.update(d.track_id for d in crowd)
            return []
        assert self.count_since is not None
        if t - self.count_since < rule.min_seconds or self._cooling(None, t):
            return []
        ev = self._open(union, t, self.count_since, when,
                        {"count": len(crowd), "present_s": round(t - self.count_since, 1),
                         "track_ids": sorted(d.track_id for d in crowd)})
        self.cases[-1].track_ids.update(d.track_id for d in crowd)
        return [ev]

    def expire(self, t: float, when: datetime) -> list[RuleEvent]:
        """Close cases whose objects have not met the condition for clear_after_s; forget old tracks."""
        rule = self.rule
        events: list[RuleEvent] = []
        for case in [c for c in self.cases if t - c.last_t > rule.clear_after_s]:
            self.cases.remove(case)
            self.closed.append((None if rule.kind == "count" else case.box, t))
            for obj in self.objects.values():
                if obj.case is case:
                    obj.case = None
                    obj.reset()  # re-armed: the object must meet the condition afresh
            if rule.kind == "count":
                self.count_since = self.count_last_ok = None
            events.append(self._event("closed", case, when, {"open_s": round(t - case.opened_t, 1)}))
        stale = [k for k, o in self.objects.items() if t - o.seen_t > 2 * rule.clear_after_s and o.case is None]
        for k in stale:
            del self.objects[k]
        return events


class ZoneRules:
    """All rules of one camera."""

    def __init__(self, camera: CameraConfig) -> None:
        self.camera = camera
        zones = {z.name: Polygon(z.polygon) for z in camera.zones}
        for name, poly in zones.items():
            if not poly.is_valid:
                raise ValueError(f"camera {camera.name!r} zone {name!r}: polygon is not valid "
                                 f"(self-intersecting?): {shapely.is_valid_reason(poly)}")
            shapely.prepare(poly)
        numbers = count(1)
        self.states = [_RuleState(r, zones[r.zone] if r.zone else None, numbers) for r in camera.rules]

    @property
    def open_cases(self) -> int:
        return sum(len(s.cases) for s in self.states)

    def update(self, tracked: list[Detection], when: datetime, frame_size: tuple[int, int]) -> list[RuleEvent]:
        """Feed the tracked detections of one analysed frame (all of them, every class)."""
        t = when.timestamp()
        events: list[RuleEvent] = []
        for s in self.states:
            events += s.update(tracked, t, when, frame_size, schedule_active(s.rule.schedule, when))
        return events

    def tick(self, when: datetime) -> list[RuleEvent]:
        """A frame without inference (motion gate): only time passes; close cases that expired."""
        t = when.timestamp()
        events: list[RuleEvent] = []
        for s in self.states:
            events += s.expire(t, when)
        return events
