"""One camera's analysis: motion gate → detect → mask/filter → track → zone rules → Alerts.

`process` is synchronous and CPU-bound; the camera source runs it in a worker thread. The only
full-frame work besides inference is the gate's downscale; evidence is drawn only when a case opens
or clears (the closing alert carries a snapshot of the now-empty zone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, tzinfo
from typing import Any

import cv2
import shapely
from shapely.geometry import Polygon

from core.model import Alert, Detection, Evidence, Frame
from detectors.video.backends import ObjectDetector
from detectors.video.config import CameraConfig
from detectors.video.evidence import ClipBuffer, crop, render_cleared, render_snapshot
from detectors.video.motion import MotionGate
from detectors.video.rules import RuleEvent, ZoneRules
from detectors.video.tracker import Tracker

log = logging.getLogger(__name__)


class CameraPipeline:
    def __init__(self, camera: CameraConfig, detector: ObjectDetector, tracker: Tracker | None = None, *,
                 timezone: tzinfo = UTC) -> None:
        self.camera = camera
        self.timezone = timezone  # the time printed on snapshots: the operators' local time
        self.detector = detector
        self.gate = MotionGate(camera.motion)
        # lost tracks must outlive the gaps between forced re-checks of a static scene
        self.tracker = tracker or Tracker(max_age_s=max(30.0, 3 * camera.motion.recheck_s))
        self.rules = ZoneRules(camera)
        self.zones = {z.name: z for z in camera.zones}
        masks = [Polygon(z.polygon) for z in camera.zones if z.mask]
        self.mask = shapely.union_all(masks) if masks else None
        if self.mask is not None:
            shapely.prepare(self.mask)
        ev = camera.evidence
        self.clip = ClipBuffer(ev.clip_s + ev.clip_post_s) if ev.clip_s > 0 else None
        self.post_s = ev.clip_post_s if self.clip is not None else 0.0
        self._held: list[_Held] = []  # opening alerts waiting for their clip's post-roll
        self.stats: dict[str, int] = {"frames": 0, "inferences": 0, "skipped_by_motion": 0, "alerts": 0,
                                      "masked": 0}
        self.last_detections: list[Detection] = []
        self._last_inference_t: float | None = None

    def _needs_inference(self, frame: Frame, t: float) -> bool:
        motion = self.camera.motion
        if not motion.enabled:
            return True
        moved = self.gate.changed(frame.image)  # always called: keeps the background current
        if moved or self._last_inference_t is None:
            return True
        watching = len(self.tracker) > 0 or self.rules.open_cases > 0
        return watching and t - self._last_inference_t >= motion.recheck_s

    def process(self, frame: Frame) -> list[Alert]:
        """Analyse one frame; return the alerts it opened or closed (an opening alert waits
        `clip_post_s` for its clip's post-roll, then comes out of a later call)."""
        self.stats["frames"] += 1
        t = frame.time.timestamp()
        if self.clip is not None:
            self.clip.add(t, frame.image)
        return self._release(t) + self._hold(self._analyse(frame, t))

    def flush(self) -> list[Alert]:
        """Every held alert now, with the clip it has so far: the stream stopped or the gateway is
        stopping, and a case must never wait on frames that will not come."""
        return self._release(None)

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def _analyse(self, frame: Frame, t: float) -> list[Alert]:
        if not self._needs_inference(frame, t):
            self.stats["skipped_by_motion"] += 1
            return self._alerts(self.rules.tick(frame.time), frame)

        self.stats["inferences"] += 1
        self._last_inference_t = t
        detections = self.detector.detect(frame.image)
        if self.mask is not None:
            kept = [d for d in detections if not shapely.intersects_xy(self.mask, *d.foot)]
            self.stats["masked"] += len(detections) - len(kept)
            detections = kept
        tracked = self.tracker.update(detections, t)
        self.last_detections = tracked
        return self._alerts(self.rules.update(tracked, frame.time, frame.size), frame)

    def _hold(self, alerts: list[Alert]) -> list[Alert]:
        """Keep opening alerts back for the post-roll; a close releases its own open first."""
        if not self.post_s:
            return alerts
        out: list[Alert] = []
        for alert in alerts:
            if alert.state == "open" and alert.category is not None:
                self._held.append(_Held(alert, alert.time.timestamp() - self.camera.evidence.clip_s,
                                        alert.time.timestamp() + self.post_s))
                continue
            mine = [h for h in self._held if h.alert.key == alert.key and h.alert.track_id == alert.track_id]
            out += [self._with_clip(h) for h in mine]
            self._held = [h for h in self._held if h not in mine]
            out.append(alert)
        return out

    def _release(self, t: float | None) -> list[Alert]:
        due = [h for h in self._held if t is None or t >= h.until]
        if not due:
            return []
        self._held = [h for h in self._held if h not in due]
        return [self._with_clip(h) for h in due]

    def _with_clip(self, held: _Held) -> Alert:
        try:
            avi = self.clip.to_avi(since=held.since) if self.clip is not None else None
        except (ValueError, OSError) as exc:  # the case still goes out with its snapshot
            log.warning("camera %s rule %s: clip not written: %s", self.camera.name, held.alert.rule, exc)
            self.stats["evidence_errors"] = self.stats.get("evidence_errors", 0) + 1
            avi = None
        if avi is None:
            return held.alert
        return replace(held.alert, evidence=held.alert.evidence + (Evidence("clip.avi", "video/x-msvideo", avi),))

    def _alerts(self, events: list[RuleEvent], frame: Frame) -> list[Alert]:
        alerts = [self._alert(ev, frame) for ev in events]
        self.stats["alerts"] += len(alerts)
        return alerts

    def _alert(self, ev: RuleEvent, frame: Frame) -> Alert:
        cam = self.camera
        rule = ev.rule
        facts: dict[str, Any] = dict(ev.facts)
        if cam.address:
            facts["address"] = cam.address
        if cam.heading is not None:
            facts["heading"] = cam.heading
        evidence: tuple[Evidence, ...] = ()
        det = ev.detection
        who = f"{det.label} #{ev.track_id}" if ev.track_id is not None else det.label
        where = f" in {ev.zone}" if ev.zone else ""
        if ev.state == "open":
            evidence = self._evidence(ev, frame)
            message = f"{rule.name}: {who}{where} ({_describe(facts)})"
        else:
            evidence = self._cleared_evidence(ev, frame)
            message = f"{rule.name}: {who}{where} cleared"
        return Alert(rule=rule.name, subject_kind="camera", subject_id=cam.name, state=ev.state, time=ev.time,
                     source="video", severity=rule.severity, message=message, category=ev.category,
                     place=ev.zone, lon=cam.lon, lat=cam.lat, track_id=ev.track_id, facts=facts,
                     evidence=evidence)

    def _evidence(self, ev: RuleEvent, frame: Frame) -> tuple[Evidence, ...]:
        cfg = self.camera.evidence
        zone = self.zones.get(ev.zone)
        items = [Evidence("snapshot.jpg", "image/jpeg", render_snapshot(
            frame.image, ev.detection, zone.polygon if zone else None, ev.detection.label, ev.track_id,
            frame.time.astimezone(self.timezone), self.camera.name, quality=cfg.jpeg_quality, line=ev.rule.line))]
        try:
            if cfg.crop:
                items.append(Evidence("crop.jpg", "image/jpeg", crop(frame.image, ev.detection.box, cfg.jpeg_quality)))
            if self.clip is not None and not self.post_s:  # with a post-roll the clip comes later
                avi = self.clip.to_avi()
                if avi is not None:
                    items.append(Evidence("clip.avi", "video/x-msvideo", avi))
        except (ValueError, OSError) as exc:  # the alert still goes out with the snapshot
            log.warning("camera %s rule %s: evidence incomplete: %s", self.camera.name, ev.rule.name, exc)
            self.stats["evidence_errors"] = self.stats.get("evidence_errors", 0) + 1
        return tuple(items)


    def _cleared_evidence(self, ev: RuleEvent, frame: Frame) -> tuple[Evidence, ...]:
        """The frame in which the condition ended, with the zone drawn: the central platform's
        evidence that the kerb is empty again. A drawing failure costs the picture, not the close."""
        zone = self.zones.get(ev.zone)
        try:
            jpeg = render_cleared(frame.image, zone.polygon if zone else None, ev.detection.box,
                                  frame.time.astimezone(self.timezone), self.camera.name,
                                  quality=self.camera.evidence.jpeg_quality, line=ev.rule.line)
        except (ValueError, cv2.error) as exc:
            log.warning("camera %s rule %s: cleared snapshot not drawn: %s", self.camera.name, ev.rule.name, exc)
            self.stats["evidence_errors"] = self.stats.get("evidence_errors", 0) + 1
            return ()
        return (Evidence("snapshot.jpg", "image/jpeg", jpeg),)


@dataclass(eq=False)
class _Held:
    alert: Alert
    since: float  # clip start (pre-roll)
    until: float  # clip end (post-roll): released at the first frame at or after it


def _describe(facts: dict[str, Any]) -> str:
    parts = []
    for key, unit in (("dwell_s", "s stationary"), ("present_s", "s present"), ("count", " objects"),
                      ("direction", "")):
        if key in facts:
            parts.append(f"{facts[key]}{unit}")
    if "confidence" in facts:
        parts.append(f"conf {facts['confidence']}")
    return ", ".join(parts)
