"""End to end on a real street clip: file → camera source → YOLO → tracker → zone rules → case desk →
a case in the durable outbox, with a snapshot on disk whose pixels show the drawn zone.

The clip (tests/fixtures/video/pedestrians_480x360_10fps.mp4, PETS 2009) shows 5-7 people walking
on a campus road and a car and a van parked at the top right, all found by the COCO model.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.model import Alert, Frame
from detectors.video.backends import load_detector
from detectors.video.config import CameraConfig, DetectorConfig, VideoRuleConfig, ZoneConfig
from detectors.video.evidence import ZONE_COLOUR
from detectors.video.pipeline import CameraPipeline
from gateway.camera_replay import replay_camera
from gateway.cases import CaseDesk
from gateway.catalog import Catalog
from gateway.geo import GridIndex
from gateway.outbox import Outbox
from gateway.sources.camera import CameraSource

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolov8n_int8.onnx"
GRID = REPO / "gateway" / "data" / "demo_grid.geojson"
CST = timezone(timedelta(hours=8))
START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # the clip's first frame, as the replay sees it

ROAD = [(10, 100), (470, 80), (470, 300), (10, 230)]  # where the people walk
KERB = [(395, 25), (470, 25), (470, 80), (395, 80)]  # where the car and the van are parked

CAMERA = CameraConfig(
    name="campus-1",
    url=str(CLIP),
    detect_fps=2.0,
    realtime=False,
    lon=116.392,  # inside the demo grid's cell 11010100100101
    lat=39.902,
    address="campus road, east gate",
    zones=[ZoneConfig(name="road", polygon=ROAD), ZoneConfig(name="kerb", polygon=KERB)],
    rules=[
        VideoRuleConfig(
            name="crowd-on-road",
            kind="count",
            zone="road",
            classes=["person"],
            min_count=3,
            min_seconds=2,
            category="crowding",
        ),
        VideoRuleConfig(
            name="no-parking-kerb",
            kind="dwell",
            zone="kerb",
            classes=["car", "truck"],
            min_seconds=5,
            category="illegal_parking",
        ),
    ],
)


@pytest.fixture(scope="module")
def detector():
    return load_detector(DetectorConfig(backend="onnxruntime", model=str(MODEL)), MODEL)


def first_frame() -> np.ndarray:
    cap = cv2.VideoCapture(str(CLIP), cv2.CAP_FFMPEG)
    ok, image = cap.read()
    cap.release()
    assert ok
    return image


def zone_outline_share(image: np.ndarray, polygon: list[tuple[int, int]]) -> float:
    """Share of points along the polygon's edges that are zone-coloured (within a 2-px neighbourhood,
    with slack for JPEG)."""
    target = np.array(ZONE_COLOUR, dtype=np.int16)
    hits = total = 0
    for (ax, ay), (bx, by) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        for s in np.linspace(0.1, 0.9, 9):
            x, y = round(ax + s * (bx - ax)), round(ay + s * (by - ay))
            patch = image[y - 2 : y + 3, x - 2 : x + 3].astype(np.int16).reshape(-1, 3)
            total += 1
            hits += bool((np.abs(patch - target).max(axis=1) < 70).any())
    return hits / total


def test_clip_to_cases_in_the_outbox_with_snapshot_evidence(tmp_path, detector):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    desk = CaseDesk(
        catalog=Catalog.load(),
        grid=GridIndex.load(GRID),
        outbox=outbox,
        evidence_dir=tmp_path / "evidence",
        state_path=tmp_path / "cases.sqlite3",
        gateway_id="edge-07",
        timezone=CST,
    )
    pipeline = CameraPipeline(CAMERA, detector)
    alerts: list[Alert] = []
    lock = threading.Lock()

    def on_frame(frame: Frame) -> None:  # runs in the camera's thread, as the runtime's worker would
        for alert in pipeline.process(frame):
            with lock:
                alerts.append(alert)
            desk.handle(alert)

    source = CameraSource(CAMERA, on_frame, alerts.append, start_time=START)
    source.start()
    try:
        assert source.finished.wait(120), "the clip was not read to its end"
    finally:
        source.stop()
        desk.close()

    assert source.stats()["frames_decoded"] == 150 and source.stats()["frames_dispatched"] == 30
    assert pipeline.stats["inferences"] >= 1 and source.stats()["errors"] == 0
    payloads = {item.payload["rule"]: item.payload for item in outbox.due()}
    outbox.close()
    assert set(payloads) == {"crowd-on-road", "no-parking-kerb"}

    # the crowd: >= 3 people on the road for 2 s of video
    crowd = payloads["crowd-on-road"]
    assert crowd["category"]["name"] == "人员聚集" and crowd["source"] == "video"
    assert crowd["facts"]["count"] >= 3 and crowd["facts"]["present_s"] >= 2
    assert crowd["subject"] == {"kind": "camera", "id": "campus-1", "place": "road"}
    assert crowd["location"]["grid_code"] == "11010100100101"
    assert crowd["location"]["address"] == "campus road, east gate"
    detected = datetime.fromisoformat(crowd["detected_at"])
    assert START + timedelta(seconds=2) <= detected <= START + timedelta(seconds=15)  # video time

    snapshot = next(e for e in crowd["evidence"] if e["name"] == "snapshot.jpg")
    data = Path(snapshot["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == snapshot["sha256"]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 480, 3)
    assert zone_outline_share(image, ROAD) >= 0.8  # the zone is drawn on the snapshot ...
    assert zone_outline_share(first_frame(), ROAD) <= 0.2  # ... and is not part of the scene

    # the parked vehicle: stationary in the kerb zone for 5 s of video
    parked = payloads["no-parking-kerb"]
    assert parked["category"]["name"] == "机动车乱停放"
    assert parked["facts"]["object"] in ("car", "truck") and parked["facts"]["dwell_s"] >= 5
    assert isinstance(parked["subject"]["track_id"], int)
    parked_snapshot = next(e for e in parked["evidence"] if e["name"] == "snapshot.jpg")
    image = cv2.imread(parked_snapshot["path"])
    assert zone_outline_share(image, KERB) >= 0.6  # a small zone: the object's box covers part of it


def test_replay_gives_the_same_alerts_as_the_camera_source(detector, capsys):
    via_source: list[Alert] = []
    pipeline = CameraPipeline(CAMERA, detector)
    source = CameraSource(
        CAMERA, lambda f: via_source.extend(pipeline.process(f)), via_source.append, start_time=START
    )
    source.start()
    assert source.finished.wait(120)
    source.stop()

    replayed = replay_camera(CAMERA, detector, CLIP, progress=True, start=START)
    assert [(a.rule, a.state, a.time, a.track_id, a.place) for a in replayed] == [
        (a.rule, a.state, a.time, a.track_id, a.place) for a in via_source
    ]
    opened = {a.rule for a in replayed if a.state == "open" and a.category}
    assert opened == {"crowd-on-road", "no-parking-kerb"}
    assert all(START <= a.time <= START + timedelta(seconds=15) for a in replayed)  # video time, not wall
    err = capsys.readouterr().err
    assert "campus-1:" in err and "150/150 frames" in err and "100.0%" in err
