"""Zone rules across patrol visits: one picture per visit, minutes apart.

The continuous rules (`ZoneRules`) and tracker (`Tracker`) are reused as they are; what differs is
time. A visit's detections are associated with the previous visits' objects by box overlap (the
tracker, class-agnostic, no motion prediction across minutes), so an object keeps one id for as long
as it stays; the rules then time it as they time a tracked object on a stream. An object counts as
gone once it has not been seen for `revisit_s` (the scheduler passes clear_after_visits x the
group's interval, so one missed sighting is tolerated): that is each rule's clear_after_s here
unless the rule asks for longer. A parked car seen at two visits five minutes apart is therefore
a dwell of 300 s, one case with one track id however many visits see it, which is what the case
desk's dedup keys on.

Pure: no I/O, no clock reads. Kept first-sighting pictures are accounted in a `PictureBudget`
shared by all cameras of a box, because thousands of cameras each holding a picture add up.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Any

import shapely
from shapely.geometry import Polygon

from core.model import Alert, Detection
from detectors.video.config import CameraConfig
from detectors.video.patrol_evidence import Shot, patrol_evidence
from detectors.video.rules import RuleEvent, ZoneRules
from detectors.video.tracker import Tracker


class PictureBudget:
    """Bytes of kept pictures, all cameras together; thread-safe (visits run on several workers)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.refused = 0  # pictures not kept because the budget was spent
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.max_bytes:
                self.refused += 1
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class _Visit:
    """A kept picture and every tracked object in it."""

    __slots__ = ("jpeg", "when", "detections")

    def __init__(self, jpeg: bytes, when: datetime, detections: list[Detection]) -> None:
        self.jpeg, self.when, self.detections = jpeg, when, detections

    def shot(self, track_ids: set[int]) -> Shot | None:
        det = next((d for d in self.detections if d.track_id in track_ids), None)
        return Shot(self.jpeg, det, self.when) if det is not None else None


class PatrolRules:
    """The rules of one patrolled camera; `camera.zones` in pixels of its pictures."""

    def __init__(self, camera: CameraConfig, revisit_s: float, *, budget: PictureBudget | None = None,
                 timezone: tzinfo = UTC) -> None:
        self.camera = camera
        self.timezone = timezone
        self.budget = budget
        rules = [r.model_copy(update={"clear_after_s": max(r.clear_after_s, revisit_s)}) for r in camera.rules]
        self.rules = ZoneRules(camera.model_copy(update={"rules": rules}))
        # every detection starts or continues a track at once (min_hits=1): visits are too rare to wait
        self.tracker = Tracker(max_age_s=revisit_s, min_hits=1, predict_horizon_s=0.0)
        self.zones = {z.name: z for z in camera.zones}
        masks = [Polygon(z.polygon) for z in camera.zones if z.mask]
        self.mask = shapely.union_all(masks) if masks else None
        self._first: dict[int, _Visit] = {}  # track id -> the kept picture of its first sighting in a rule's zone
        self._held: dict[int, _Visit] = {}  # id(visit) -> visit, for the budget
        self.visits = 0

    def visit(self, detections: list[Detection], when: datetime, frame_size: tuple[int, int],
              jpeg: bytes) -> list[Alert]:
        """One visit's detections (picture pixels, untracked) and the picture they came from."""
        self.visits += 1
        if self.mask is not None:
            detections = [d for d in detections if not shapely.intersects_xy(self.mask, *d.foot)]
        tracked = self.tracker.update(detections, when.timestamp())
        latest = _Visit(jpeg, when, tracked)
        self._keep_first(latest)
        return [self._alert(ev, latest) for ev in self.rules.update(tracked, when, frame_size)]

    def tick(self, when: datetime) -> list[Alert]:
        """A visit without a picture (the camera failed): only time passes; expired cases close."""
        return [self._alert(ev, None) for ev in self.rules.tick(when)]

    def release(self) -> None:
        """Give every kept picture back to the budget (the camera leaves the patrol or is rebuilt)."""
        self._first.clear()
        self._sync_budget()

    # ------------------------------------------------------------------ first sightings

    def _candidate(self, det: Detection) -> bool:
        for state in self.rules.states:
            if state.classes and det.label not in state.classes:
                continue
            if state.zone is None or shapely.intersects_xy(state.zone, *det.foot):
                return True
        return False

    def _keep_first(self, visit: _Visit) -> None:
        live = {tr.track_id for tr in self.tracker.tracks}
        for tid in [t for t in self._first if t not in live]:
            del self._first[tid]
        new = [d.track_id for d in visit.detections if d.track_id not in self._first and self._candidate(d)]
        if new and (self.budget is None or self.budget.take(len(visit.jpeg))):
            self._held[id(visit)] = visit
            for tid in new:
                self._first[tid] = visit  # type: ignore[index]
        self._sync_budget()

    def _sync_budget(self) -> None:
        referenced = {id(v) for v in self._first.values()}
        for key in [k for k in self._held if k not in referenced]:
            visit = self._held.pop(key)
            if self.budget is not None:
                self.budget.give(len(visit.jpeg))

    def _first_shot(self, track_ids: set[int], latest: _Visit) -> Shot | None:
        firsts = [self._first[t] for t in track_ids if t in self._first]
        visit = min(firsts, key=lambda v: v.when, default=None)
        if visit is None or visit is latest:
            return None
        return visit.shot(track_ids)

    # ------------------------------------------------------------------ alerts

    def _alert(self, ev: RuleEvent, latest: _Visit | None) -> Alert:
        cam = self.camera
        rule = ev.rule
        facts: dict[str, Any] = dict(ev.facts)
        if cam.address:
            facts["address"] = cam.address
        det = ev.detection
        who = f"{det.label} #{ev.track_id}" if ev.track_id is not None else det.label
        where = f" in {ev.zone}" if ev.zone else ""
        render = None
        if ev.state == "open" and latest is not None:
            track_ids = set(ev.facts.get("track_ids", ())) | ({ev.track_id} if ev.track_id is not None else set())
            first = self._first_shot(track_ids, latest)
            local = self.timezone
            facts["first_seen"] = (first.when if first is not None else ev.time).astimezone(local).isoformat()
            if first is None and self.budget is not None and self.budget.refused \
                    and not any(t in self._first for t in track_ids):
                facts["first_picture"] = "not kept: evidence memory budget spent"
            zone = self.zones.get(ev.zone)
            render = partial(patrol_evidence,
                             None if first is None else Shot(first.jpeg, first.detection, first.when.astimezone(local)),
                             Shot(latest.jpeg, det, ev.time.astimezone(local)), zone.polygon if zone else None,
                             ev.track_id, cam.name, cam.evidence.jpeg_quality, cam.evidence.crop)
            span = facts.get("dwell_s", facts.get("present_s"))
            message = f"{rule.name}: {who}{where}" + (f" ({span}s over patrol visits)" if span is not None else "")
        else:
            message = f"{rule.name}: {who}{where} " + ("cleared" if ev.state == "closed" else "seen")
        return Alert(rule=rule.name, subject_kind="camera", subject_id=cam.name, state=ev.state, time=ev.time,
                     source="video", severity=rule.severity, message=message, category=ev.category,
                     place=ev.zone, lon=cam.lon, lat=cam.lat, track_id=ev.track_id, facts=facts,
                     render_evidence=render)
