"""The per-camera pipeline: motion gating, masks, tracking and rules turned into Alerts."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np

from core.model import Detection, Frame
from detectors.video.backends import load_detector
from detectors.video.config import CameraConfig, DetectorConfig
from detectors.video.motion import MotionGate
from detectors.video.pipeline import CameraPipeline

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
REPO = Path(__file__).resolve().parent.parent
ZONE = {"name": "east-gate", "polygon": [[100, 300], [1000, 300], [1000, 700], [100, 700]]}
MASK = {"name": "private-yard", "polygon": [[1100, 0], [1280, 0], [1280, 720], [1100, 720]], "mask": True}


class ScriptedDetector:
    """Returns fixed boxes and counts its calls, standing in for a model."""

    names = {0: "person", 2: "car"}

    def __init__(self, boxes: list[tuple[str, tuple[float, float, float, float]]]) -> None:
        self.boxes = boxes
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        return [Detection(label, 2 if label == "car" else 0, 0.8, box) for label, box in self.boxes]


def camera(**extra) -> CameraConfig:
    return CameraConfig(
        name="cam-012", url="rtsp://cam", lon=116.37, lat=39.91, heading=90, address="东门",
        zones=[ZONE, MASK],
        rules=[{"name": "no-parking-east-gate", "kind": "dwell", "zone": "east-gate", "classes": ["car"],
                "min_seconds": 30, "category": "illegal_parking"}], **extra)


def frames(n: int, step_s: float = 0.5, moving=None):
    """n frames of a static street; `moving(i)` may return an (x, y) where a bright square is drawn."""
    base = np.full((720, 1280, 3), 80, np.uint8)
    for i in range(n):
        img = base
        if moving is not None and (pos := moving(i)) is not None:
            img = base.copy()
            x, y = pos
            img[y:y + 80, x:x + 80] = 250
        yield Frame("cam-012", i, T0 + timedelta(seconds=i * step_s), img)


def test_parked_car_alert_with_evidence_and_location():
    det = ScriptedDetector([("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(motion={"enabled": False}), det)
    alerts = [a for f in frames(80) for a in pipe.process(f)]
    (a,) = alerts
    assert a.state == "open" and a.source == "video" and a.subject_kind == "camera" and a.subject_id == "cam-012"
    assert a.rule == "no-parking-east-gate" and a.category == "illegal_parking" and a.place == "east-gate"
    assert (a.lon, a.lat) == (116.37, 39.91) and a.track_id == 1
    assert a.time == T0 + timedelta(seconds=30.5)  # confirmed on the 2nd frame, then 30 s stationary
    assert a.facts["object"] == "car" and a.facts["dwell_s"] == 30 and a.facts["confidence"] == 0.8
    assert a.facts["address"] == "东门" and a.facts["box"] == [400, 400, 600, 520]
    assert [e.name for e in a.evidence] == ["snapshot.jpg", "crop.jpg"]
    assert all(e.media_type == "image/jpeg" and e.data[:2] == b"\xff\xd8" for e in a.evidence)
    assert pipe.stats == {"frames": 80, "inferences": 80, "skipped_by_motion": 0, "alerts": 1, "masked": 0}
    assert [d.track_id for d in pipe.last_detections] == [1]


def test_static_scene_skips_inference_but_rechecks_tracked_objects():
    det = ScriptedDetector([("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(motion={"recheck_s": 10}), det)
    # a car drives in during the first 3 s, then the picture is static for 2 minutes at 2 fps
    alerts = [a for f in frames(240, moving=lambda i: (100 + 40 * i, 400) if i < 6 else None)
              for a in pipe.process(f)]
    assert pipe.stats["frames"] == 240
    assert pipe.stats["skipped_by_motion"] > 200
    # re-checked about every 10 s, so the parked car keeps its track and the dwell rule still fires
    assert 12 <= pipe.stats["inferences"] <= 30
    assert [(a.state, a.track_id) for a in alerts] == [("open", 1)]


def test_empty_static_scene_runs_the_model_once():
    det = ScriptedDetector([])
    pipe = CameraPipeline(camera(), det)
    for f in frames(100):
        pipe.process(f)
    assert det.calls == 1 and pipe.stats["skipped_by_motion"] == 99


def test_detections_in_a_mask_are_dropped():
    det = ScriptedDetector([("car", (1150, 400, 1250, 500)), ("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(motion={"enabled": False}), det)
    for f in frames(4):
        pipe.process(f)
    assert pipe.stats["masked"] == 4
    assert [d.box for d in pipe.last_detections] == [(400, 400, 600, 520)]


def test_clip_evidence_when_configured():
    det = ScriptedDetector([("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(motion={"enabled": False}, evidence={"clip_s": 4}), det)
    alerts = [a for f in frames(70) for a in pipe.process(f)]
    names = [e.name for e in alerts[0].evidence]
    assert names == ["snapshot.jpg", "crop.jpg", "clip.avi"]
    assert alerts[0].evidence[2].data[:4] == b"RIFF"


def clip_frames(avi: bytes, tmp_path: Path) -> int:
    path = tmp_path / "clip.avi"
    path.write_bytes(avi)
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    return count


def test_clip_post_roll_holds_the_case_then_attaches_pre_and_post_frames(tmp_path):
    det = ScriptedDetector([("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(motion={"enabled": False}, evidence={"clip_s": 4, "clip_post_s": 3}), det)
    released = [(f.time, a) for f in frames(90) for a in pipe.process(f)]  # frames every 0.5 s
    ((when, alert),) = released
    assert when - alert.time == timedelta(seconds=3)  # filed once the post-roll was recorded
    assert [e.name for e in alert.evidence] == ["snapshot.jpg", "crop.jpg", "clip.avi"]
    assert clip_frames(alert.evidence[2].data, tmp_path) == 15  # 4 s before + 3 s after, at 2 fps, + the frame itself


def test_post_roll_alert_comes_out_before_its_close_and_on_flush():
    det = ScriptedDetector([("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(motion={"enabled": False}, evidence={"clip_s": 2, "clip_post_s": 30}), det)
    for f in frames(62):  # the rule fires at 30 s (frame 60)
        assert pipe.process(f) == []
    assert pipe.holding
    (alert,) = pipe.flush()  # e.g. the stream stopped: the case goes out with the clip it has
    assert alert.state == "open" and alert.evidence[-1].name == "clip.avi"
    assert not pipe.holding and pipe.flush() == []

    pipe = CameraPipeline(camera(motion={"enabled": False}, evidence={"clip_s": 2, "clip_post_s": 60}), det)
    out = [a for f in frames(62) for a in pipe.process(f)]
    det.boxes = []  # the car leaves at 31 s: its case closes 30 s later, long before the post-roll ends (90 s)
    later = (Frame(f.camera, f.index, f.time + timedelta(seconds=31), f.image) for f in frames(80))
    out += [(f.time, a) for f in later for a in pipe.process(f)]
    assert [a.state for _, a in out] == ["open", "closed"]
    assert out[0][0] == out[1][0] < T0 + timedelta(seconds=90)  # released together, by the close


def test_motion_gate_sees_a_small_object_and_ignores_noise():
    gate = MotionGate(camera().motion)
    rng = np.random.default_rng(1)
    base = np.full((720, 1280, 3), 100, np.uint8)
    assert gate.changed(base)  # first frame
    noisy = np.clip(base.astype(int) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    assert not gate.changed(noisy)
    person = noisy.copy()
    person[300:420, 600:640] = 230  # a 40 x 120 px pedestrian in a 1280 x 720 frame
    assert gate.changed(person)


def test_real_model_through_the_pipeline_on_bus_jpg():
    model = REPO / "models" / "yolov8n_int8.onnx"
    detector = load_detector(DetectorConfig(), model)
    img = cv2.imread(str(Path(__file__).parent / "fixtures" / "images" / "bus.jpg"))
    cam = CameraConfig(name="cam-bus", url="bus.jpg", motion={"enabled": False},
                       zones=[{"name": "pavement", "polygon": [[0, 700], [810, 700], [810, 1080], [0, 1080]]}],
                       rules=[{"name": "crowd", "kind": "count", "zone": "pavement", "classes": ["person"],
                               "min_count": 3, "min_seconds": 1, "category": "crowding"}])
    pipe = CameraPipeline(cam, detector)
    alerts = [a for i in range(4) for a in pipe.process(Frame("cam-bus", i, T0 + timedelta(seconds=i), img))]
    (a,) = alerts
    assert a.category == "crowding" and a.facts["count"] >= 3 and a.facts["object"] == "person"
    assert {d.label for d in pipe.last_detections} >= {"person", "bus"}


def test_case_closes_after_the_car_leaves_even_in_a_static_scene():
    det = ScriptedDetector([("car", (400, 400, 600, 520))])
    pipe = CameraPipeline(camera(), det)
    alerts = []
    for f in frames(300, moving=lambda i: (100 + 40 * i, 400) if i < 6 or 100 <= i < 106 else None):
        if f.index == 100:
            det.boxes = []  # the car drives off (the square marks the motion), then all is still
        alerts += pipe.process(f)
    assert [a.state for a in alerts] == ["open", "closed"]
    opened, closed = alerts
    assert closed.key == opened.key and closed.category == "illegal_parking"
    # the close carries the frame it happened in, the zone drawn: evidence that the kerb is empty
    (snap,) = closed.evidence
    assert snap.name == "snapshot.jpg" and snap.media_type == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(snap.data, np.uint8), cv2.IMREAD_COLOR)
    first = cv2.imdecode(np.frombuffer(opened.evidence[0].data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == first.shape

    def share(image, bgr):  # fraction of pixels near a colour (JPEG blurs edges)
        return float(np.mean(np.all(np.abs(image.astype(int) - bgr) < 60, axis=2)))

    assert share(img, (0, 255, 255)) > 0.001  # the zone outline
    assert share(first, (0, 0, 255)) > 0.001 and share(img, (0, 0, 255)) < 0.0002  # no object box any more
    b, g, r = (img[390:530, 390:610].astype(int)[..., c] for c in range(3))
    assert np.count_nonzero((g > r + 40) & (g > b + 40)) > 100  # a green outline where the car was
    # last seen at a re-check at most 10 s before it left at 50 s; closed 30 s (clear_after_s) after that
    assert T0 + timedelta(seconds=70) < closed.time <= T0 + timedelta(seconds=81)
