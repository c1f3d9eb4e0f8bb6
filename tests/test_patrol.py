"""Patrol mode end to end on real pictures: JPEGs cut from the street clip, served over HTTP by fake
cameras, decoded by OpenCV and seen by the real YOLO model; rules judged across visits minutes apart.

The clip (PETS 2009) shows people walking on a campus road and a car and a van parked at the top
right (the `kerb` zone), which the COCO model finds in every frame.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.model import Alert
from detectors.video.backends import load_detector
from detectors.video.config import CameraConfig, DetectorConfig, VideoRuleConfig, ZoneConfig
from detectors.video.evidence import ZONE_COLOUR
from detectors.video.patrol_rules import PatrolRules, PictureBudget
from gateway.cases import CaseDesk
from gateway.catalog import Catalog
from gateway.geo import GridIndex
from gateway.outbox import Outbox
from gateway.patrol.config import PatrolConfig
from gateway.patrol.inventory import PatrolCamera
from gateway.patrol.scheduler import OFFLINE_RULE, PatrolScheduler
from tests.camera_server import PASSWORD, USER, CameraFleet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolov8n_int8.onnx"
GRID = REPO / "gateway" / "data" / "demo_grid.geojson"
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
W, H = 480, 360
KERB = [(395, 25), (470, 25), (470, 80), (395, 80)]  # the car and the van stand here
ROAD = [(10, 100), (470, 80), (470, 300), (10, 230)]  # the people walk here

PARKING = VideoRuleConfig(name="parking", kind="dwell", zone="kerb", classes=["car", "truck"], min_seconds=300,
                          category="illegal_parking")
CROWD = VideoRuleConfig(name="crowd", kind="count", zone="road", classes=["person"], min_count=3, min_seconds=200,
                        category="crowding")


@pytest.fixture(scope="module")
def detector():
    return load_detector(DetectorConfig(backend="onnxruntime", model=str(MODEL)), MODEL)


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    """Three JPEGs of the street, 5 s apart in the clip: people moved, the parked vehicles did not."""
    cap = cv2.VideoCapture(str(CLIP), cv2.CAP_FFMPEG)
    out, i = [], 0
    while len(out) < 3:
        ok, image = cap.read()
        assert ok
        if i % 50 == 0:
            out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        i += 1
    cap.release()
    return out


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def without_kerb(jpeg: bytes) -> bytes:
    """The same street after the vehicles left: the kerb painted over with tarmac grey."""
    image = decode(jpeg)
    image[0:90, 380:480] = (110, 110, 110)
    return cv2.imencode(".jpg", image)[1].tobytes()


def zone_share(image: np.ndarray, polygon: list[tuple[float, float]], dx: int = 0) -> float:
    target = np.array(ZONE_COLOUR, dtype=np.int16)
    hits = total = 0
    for (ax, ay), (bx, by) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        for s in np.linspace(0.1, 0.9, 9):
            x, y = round(ax + s * (bx - ax)) + dx, round(ay + s * (by - ay))
            patch = image[max(0, y - 2):y + 3, x - 2:x + 3].astype(np.int16).reshape(-1, 3)
            total += 1
            hits += bool((np.abs(patch - target).max(axis=1) < 70).any())
    return hits / total


def test_dwell_and_count_across_visits(detector, pictures) -> None:
    camera = CameraConfig(name="campus-1", url="http://cam/1.jpg", address="campus road",
                          zones=[ZoneConfig(name="kerb", polygon=KERB), ZoneConfig(name="road", polygon=ROAD)],
                          rules=[PARKING, CROWD])
    rules = PatrolRules(camera, revisit_s=1.5 * 150, budget=PictureBudget(50_000_000), timezone=CST)
    alerts: list[Alert] = []
    visits = [(T0 + timedelta(seconds=150 * k), pictures[k % 3]) for k in range(6)]
    visits += [(T0 + timedelta(seconds=150 * k), without_kerb(pictures[k % 3])) for k in range(6, 9)]
    for when, jpeg in visits:
        image = decode(jpeg)  # what a visit does: one picture, decoded by OpenCV, seen by the model
        alerts += rules.visit(detector.detect(image), when, (W, H), jpeg)

    parked = [a for a in alerts if a.rule == "parking"]
    opened = [a for a in parked if a.state == "open"]
    # one case per parked vehicle, opened at the visit that makes 300 s (visit 2 at t+300 s), not again
    assert sorted(a.facts["object"] for a in opened) in (["car", "truck"], ["car", "car"])
    assert all(a.time == T0 + timedelta(seconds=300) and a.facts["dwell_s"] == 300.0 for a in opened)
    assert all(a.facts["first_seen"] == T0.astimezone(CST).isoformat() for a in opened)
    # the vehicles left at visit 6: one missed sighting is tolerated, at the second the cases close
    closed = [a for a in parked if a.state == "closed"]
    assert {(a.track_id, a.time) for a in closed} == {(a.track_id, T0 + timedelta(seconds=150 * 7)) for a in opened}
    crowd = [a for a in alerts if a.rule == "crowd"]
    assert [a.state for a in crowd][:1] == ["open"] and crowd[0].facts["count"] >= 3
    assert crowd[0].time == T0 + timedelta(seconds=300)  # 200 s needs the third visit, 300 s after the first

    # evidence: first and latest picture side by side with the zone drawn on both, and the crop
    evidence = {e.name: e for e in opened[0].all_evidence()}
    side = decode(evidence["snapshot.jpg"].data)
    assert side.shape[0] == H and side.shape[1] == 2 * W + 8
    assert zone_share(side, KERB) >= 0.6 and zone_share(side, KERB, dx=W + 8) >= 0.6
    assert zone_share(decode(pictures[0]), KERB) <= 0.2  # the outline is drawn, not in the scene
    crop = decode(evidence["crop.jpg"].data)
    assert 10 < crop.shape[0] < 80 and 10 < crop.shape[1] < 80


def test_first_pictures_stay_within_the_memory_budget(detector, pictures) -> None:
    camera = CameraConfig(name="c", url="http://cam/1.jpg", zones=[ZoneConfig(name="kerb", polygon=KERB)],
                          rules=[PARKING])
    budget = PictureBudget(len(pictures[0]) // 2)  # not even one picture fits
    rules = PatrolRules(camera, revisit_s=400, budget=budget)
    alerts = []
    for k in range(3):
        alerts += rules.visit(detector.detect(decode(pictures[0])), T0 + timedelta(seconds=150 * k), (W, H),
                              pictures[0])
    opened = [a for a in alerts if a.state == "open"]
    assert opened and budget.used == 0 and budget.refused >= 1
    assert opened[0].facts["first_picture"] == "not kept: evidence memory budget spent"
    side = decode(opened[0].all_evidence()[0].data)
    assert side.shape[:2] == (H, W)  # the latest picture alone
    rules.release()
    assert budget.used == 0


def patrol_config(**extra) -> PatrolConfig:
    kerb = [(x / W, y / H) for x, y in KERB]  # the preset is relative: it fits any resolution
    return PatrolConfig.model_validate({
        "inventory": "unused.csv",
        "presets": {"street": {"zones": [{"name": "kerb", "polygon": kerb}],
                               "rules": [PARKING.model_dump() | {"min_seconds": 150}]}},
        "groups": {"key": {"interval_s": 60}, "rest": {"interval_s": 60},
                   "night": {"interval_s": 60, "schedule": {"hours": ["22:00-06:00"]}}},  # T0 is 09:00 local
        "credentials": {"hik": {"username": USER, "password": PASSWORD}},
        "timeout_s": 0.5, "connect_timeout_s": 0.5, "offline_after": 2, "clear_after_visits": 2.5,
        "inference_workers": 2} | extra)


def test_patrol_files_one_case_per_parked_vehicle_and_reports_dead_cameras(tmp_path, detector, pictures) -> None:
    """Eight cameras over real HTTP, a clock 30x faster than the wall: a parked car seen on many visits is
    one case; a camera with a changed password and one that never answers go offline after 2 failed
    visits while the others keep their schedule, and the one that gets its password back comes online."""
    fleet = CameraFleet(pictures, {"cam-locked": "deny", "cam-dead": "hang", "cam-digest": "digest"})
    fleet.sequences["campus-1"] = pictures
    m0, speed = time.monotonic(), 30.0

    def clock() -> float:
        return T0.timestamp() + (time.monotonic() - m0) * speed

    ids = ["campus-1", "cam-digest", "cam-a", "cam-b", "cam-c", "cam-d", "cam-locked", "cam-dead", "cam-night"]
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    desk = CaseDesk(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=outbox,
                    evidence_dir=tmp_path / "evidence", state_path=tmp_path / "cases.sqlite3",
                    gateway_id="edge-07", timezone=CST)
    alerts: list[Alert] = []

    def submit(alert: Alert) -> None:
        alerts.append(alert)
        desk.handle(alert)

    async def main() -> PatrolScheduler:
        await fleet.start()
        groups = {"campus-1": "key", "cam-night": "night"}
        cams = [PatrolCamera(id=i, name=i, url=fleet.url(i), group=groups.get(i, "rest"),
                             preset="street", lon=116.392, lat=39.902,
                             auth=patrol_config().credentials["hik"] if i in ("cam-digest", "cam-locked") else None)
                for i in ids]
        patrol = PatrolScheduler(cams, patrol_config(), detector, submit, clock=clock, timezone=CST)
        stop = asyncio.Event()
        task = asyncio.create_task(patrol.run(stop))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the parking case is in and the car was seen twice more
            await asyncio.sleep(0.2)
            if fleet.served["campus-1"] >= 6 and sum(a.rule == OFFLINE_RULE for a in alerts) >= 2:
                break
        fleet.behaviour["cam-locked"] = "digest"  # the password is back
        served = fleet.served["cam-locked"]
        while time.monotonic() < deadline and fleet.served["cam-locked"] == served:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 10)
        await fleet.stop()
        return patrol

    patrol = asyncio.run(main())
    desk.close()
    payloads = [item.payload for item in outbox.due()]
    outbox.close()

    parking = [p for p in payloads if p["rule"] == "parking"]
    visits_of_campus = fleet.served["campus-1"]
    assert visits_of_campus >= 6
    campus = [p for p in parking if p["subject"]["id"] == "campus-1"]
    objects = sorted(p["facts"]["object"] for p in campus)
    assert len(campus) == 2 and objects in (["car", "truck"], ["car", "car"])  # the car and the van, once each
    assert len({p["subject"]["track_id"] for p in campus}) == 2
    assert all(p["facts"]["dwell_s"] >= 150 for p in campus)
    # the other healthy cameras show the same street: their two vehicles are cases too, once each
    per_camera = Counter(p["subject"]["id"] for p in parking)
    assert set(per_camera) <= set(ids[:6]) and max(per_camera.values()) == 2
    snapshot = next(e for e in campus[0]["evidence"] if e["name"] == "snapshot.jpg")
    side = cv2.imread(snapshot["path"])
    assert side.shape[:2] == (H, 2 * W + 8)  # first and latest visit side by side

    offline = [a for a in alerts if a.rule == OFFLINE_RULE]
    assert [(a.subject_id, a.state) for a in offline if a.subject_id == "cam-dead"] == [("cam-dead", "open")]
    assert [(a.subject_id, a.state) for a in offline if a.subject_id == "cam-locked"] == [
        ("cam-locked", "open"), ("cam-locked", "closed")]
    assert not [a for a in offline if a.subject_id not in ("cam-dead", "cam-locked")]
    assert "http_401" in next(a for a in offline if a.subject_id == "cam-locked").facts["last_error"]

    stats = patrol.stats()
    rest = stats["groups"]["rest"]
    assert rest["cameras"] == 7 and rest["failures"] >= 4
    assert rest["failure_reasons"]["http_401"] >= 2 and rest["failure_reasons"]["timeout"] >= 2
    assert rest["offline"] == 1 and rest["offline_cameras"] == ["cam-dead"] and not rest["behind_schedule"]
    # the healthy cameras kept their schedule: visited about as often as the key camera
    for cam in ("cam-a", "cam-b", "cam-c", "cam-d", "cam-digest"):
        assert fleet.served[cam] >= visits_of_campus - 2
    assert fleet.requests["cam-night"] == 0 and stats["groups"]["night"]["visits"] == 0  # out of its hours
    assert stats["groups"]["key"]["revisit_s"] is not None and stats["groups"]["key"]["visits"] >= 6


def test_rtsp_cameras_are_patrolled_by_keyframe(detector, pictures, monkeypatch) -> None:
    """An rtsp:// picture source goes through `grab_keyframe` (here reading the clip instead of the
    camera's address), and its picture through the same rules as a snapshot."""
    import gateway.patrol.snapshot as snapshot
    from gateway.sources.keyframe import grab_keyframe

    grabbed: list[str] = []

    def grab(url: str, timeout_s: float) -> np.ndarray:
        grabbed.append(url)
        return grab_keyframe(str(CLIP), timeout_s)

    monkeypatch.setattr(snapshot, "grab_keyframe", grab)
    cams = [PatrolCamera(id="rtsp-1", name="rtsp-1", url="rtsp://10.0.0.9:554/ch1", group="key", preset="street",
                         auth=patrol_config().credentials["hik"])]
    alerts: list[Alert] = []
    m0 = time.monotonic()

    async def main() -> PatrolScheduler:
        patrol = PatrolScheduler(cams, patrol_config(), detector, alerts.append,
                                 clock=lambda: T0.timestamp() + (time.monotonic() - m0) * 60)
        stop = asyncio.Event()
        task = asyncio.create_task(patrol.run(stop))
        while time.monotonic() - m0 < 30 and not any(a.rule == "parking" for a in alerts):
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 10)
        return patrol

    patrol = asyncio.run(main())
    assert grabbed[0] == f"rtsp://{USER}:s3cret%20pw@10.0.0.9:554/ch1"
    assert patrol.stats()["groups"]["key"]["failures"] == 0
    assert sorted(a.facts["object"] for a in alerts if a.rule == "parking") in (["car", "truck"], ["car", "car"])
