"""One camera's analysis: motion gate → detect → mask/filter → track → zone rules → Alerts.

`process` is synchronous and CPU-bound; the camera source runs it in a worker thread. The only
full-frame work besides inference is the gate's downscale; evidence is drawn only when a case opens.
"""

from __future__ import annotations

import logging
from datetime import UTC, tzinfo
from typing import Any

import shapely
from shapely.geometry import Polygon

from detectors.video.backends import ObjectDetector
from detectors.video.config import CameraConfig
from detectors.video.evidence import ClipBuffer, crop, render_snapshot
from detectors.video.motion import MotionGate
from detectors.video.rules import RuleEvent, ZoneRules
from detectors.video.tracker import Tracker
from gateway.model import Alert, Detection, Evidence, Frame

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
        self.clip = ClipBuffer(camera.evidence.clip_s) if camera.evidence.clip_s > 0 else None
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
        """Analyse one frame; return the alerts it opened or closed."""
        self.stats["frames"] += 1
        t = frame.time.timestamp()
        if self.clip is not None:
            self.clip.add(t, frame.image)
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
            if self.clip is not None:
                avi = self.clip.to_avi()
                if avi is not None:
                    items.append(Evidence("clip.avi", "video/x-msvideo", avi))
        except (ValueError, OSError) as exc:  # the alert still goes out with the snapshot
            log.warning("camera %s rule %s: evidence incomplete: %s", self.camera.name, ev.rule.name, exc)
            self.stats["evidence_errors"] = self.stats.get("evidence_errors", 0) + 1
        return tuple(items)


def _describe(facts: dict[str, Any]) -> str:
    parts = []
    for key, unit in (("dwell_s", "s stationary"), ("present_s", "s present"), ("count", " objects"),
                      ("direction", "")):
        if key in facts:
            parts.append(f"{facts[key]}{unit}")
    if "confidence" in facts:
        parts.append(f"conf {facts['confidence']}")
    return ", ".join(parts)
