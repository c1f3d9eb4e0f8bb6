"""The black-truck rule on synthetic sightings and fixes: windows, radius, vehicle types, late fixes,
bounds, the checkpoint watch (one sighting per track, class, zone, score) and the evidence it draws."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from core.model import Detection, Frame
from detectors.crosscheck.black_trucks import MAX_FIXES_PER_CELL, BlackTruckRule, CheckpointWatch, Sighting
from detectors.video.config import CameraConfig, CheckpointConfig, ZoneConfig

LON, LAT = 116.40, 39.91
T = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
LANES = [(0, 100), (480, 100), (480, 360), (0, 360)]
FLEET = {"muck-01": "muck_truck", "muck-02": "muck_truck", "sweep-01": "sweeper"}


def camera(**checkpoint) -> CameraConfig:
    return CameraConfig(name="gate-east", url="rtsp://127.0.0.1/x", lon=LON, lat=LAT, address="东门卡口",
                        zones=[ZoneConfig(name="lanes", polygon=LANES)],
                        checkpoint=CheckpointConfig(**{"zone": "lanes", "radius_m": 150, "window_s": 120, **checkpoint}))


def east(metres: float) -> tuple[float, float]:
    """A point `metres` east of the camera."""
    return LON + metres / (111195.0 * math.cos(math.radians(LAT))), LAT


def picture() -> bytes:
    image = np.full((360, 480, 3), 90, np.uint8)
    cv2.rectangle(image, (200, 150), (320, 300), (40, 160, 220), -1)  # the "truck"
    return cv2.imencode(".jpg", image)[1].tobytes()


def sighting(track: int = 7, at: datetime = T) -> Sighting:
    return Sighting("gate-east", track, "truck", 0.83, (200.0, 150.0, 320.0, 300.0), at, picture())


def rule(**checkpoint) -> BlackTruckRule:
    return BlackTruckRule([camera(**checkpoint)], FLEET)


def s(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def test_a_truck_no_registered_truck_accounts_for_is_a_case_decided_at_t_plus_window():
    r = rule()
    r.on_fix("muck-01", *east(2000), s(-10))  # far away
    r.on_fix("muck-02", *east(9000), s(-20))  # too far away to be worth listing
    r.on_sightings([sighting()])
    assert r.tick(s(119)) == []  # a late fix may still come
    [alert] = r.tick(s(120))
    assert (alert.rule, alert.category, alert.subject_id, alert.track_id) == (
        "black_truck", "unregistered_vehicle", "gate-east", 7)
    assert alert.state == "open" and alert.time == T and (alert.lon, alert.lat) == (LON, LAT)
    assert alert.place == "lanes" and alert.source == "video"
    facts = alert.facts
    assert facts["registered_vehicles"] == 2 and facts["registered_reporting"] == 2  # the sweeper is not asked
    assert facts["registered_listed_within_m"] == 5000
    [nearest] = facts["registered_nearest"]
    assert nearest["vehicle"] == "muck-01" and abs(nearest["distance_m"] - 2000) <= 2
    assert nearest["fix_time"] == s(-10).isoformat()
    assert facts["address"] == "东门卡口" and facts["object"] == "truck"
    assert r.tick(s(500)) == [] and r.pending == 0  # decided once


def test_a_registered_truck_within_the_radius_and_window_accounts_for_it():
    r = rule()
    r.on_fix("muck-02", *east(140), s(-100))
    r.on_sightings([sighting()])
    assert r.tick(s(121)) == []
    assert r.stats["accounted"] == 1 and r.stats["suspected"] == 0


def test_a_fix_that_arrives_late_still_cancels_the_case():
    r = rule()
    r.on_sightings([sighting()])
    assert r.tick(s(60)) == []
    r.on_fix("muck-01", *east(30), s(20))  # GPS lag: dated T+20, received at T+90
    assert r.tick(s(120)) == []
    assert r.stats["accounted"] == 1


@pytest.mark.parametrize(("metres", "offset_s", "who"), [
    (160, 0, "muck-01"),  # just outside the radius
    (10, -125, "muck-01"),  # right place, before the window
    (10, 125, "muck-01"),  # right place, after the window
    (10, 0, "sweep-01"),  # right place and time, but not a muck truck
    (10, 0, "stranger"),  # not in the fleet at all
])
def test_fixes_outside_the_radius_window_or_types_do_not_count(metres, offset_s, who):
    r = rule()
    r.on_sightings([sighting()])
    r.on_fix(who, *east(metres), s(offset_s))
    [alert] = r.tick(s(130))
    listed = [c["vehicle"] for c in alert.facts["registered_nearest"]]
    assert listed == ([who] if who == "muck-01" and abs(offset_s) < 120 else [])


def test_the_vehicle_types_and_radius_are_the_checkpoints():
    r = rule(vehicle_types=["muck_truck", "sweeper"], radius_m=20)
    r.on_sightings([sighting(1), sighting(2, s(1))])
    r.on_fix("sweep-01", *east(15), s(0))
    assert r.tick(s(200)) == []


def test_each_sighting_is_judged_on_its_own_window():
    r = rule(window_s=30)
    r.on_fix("muck-01", *east(0), s(0))
    r.on_sightings([sighting(1, s(10)), sighting(2, s(100))])  # the truck passed with the first
    alerts = r.tick(s(200))
    assert [a.track_id for a in alerts] == [2]


def test_pending_sightings_are_bounded_and_overflow_is_counted():
    r = rule(max_pending=3)
    r.on_sightings([sighting(i) for i in range(5)])
    assert r.pending == 3 and r.stats["dropped_full"] == 2
    assert len(r.tick(s(120))) == 3 and r.pending == 0


def test_old_fixes_are_forgotten_and_one_place_holds_a_bounded_number():
    r = rule()
    for i in range(MAX_FIXES_PER_CELL + 100):
        r.on_fix("muck-01", *east(5000), s(i * 0.01))
    r.on_fix("muck-02", *east(-3000), s(50))
    assert r.fixes_held == MAX_FIXES_PER_CELL + 1
    r.tick(s(2 * 120 + 60 + 45))  # horizon: twice the window and a minute of slack
    assert r.fixes_held == 1  # muck-02's fix is still recent enough
    r.tick(s(2 * 120 + 60 + 51))
    assert r.fixes_held == 0 and r._cells == {}
    r.on_fix("sweep-01", *east(0), s(0))  # a type no checkpoint asks about is not kept
    assert r.fixes_held == 0


def test_the_case_evidence_is_the_snapshot_and_the_crop_of_the_sighting():
    r = rule()
    r.on_sightings([sighting()])
    [alert] = r.tick(s(120))
    evidence = {e.name: e for e in alert.all_evidence()}
    assert set(evidence) == {"snapshot.jpg", "crop.jpg"}
    snap = cv2.imdecode(np.frombuffer(evidence["snapshot.jpg"].data, np.uint8), cv2.IMREAD_COLOR)
    crop = cv2.imdecode(np.frombuffer(evidence["crop.jpg"].data, np.uint8), cv2.IMREAD_COLOR)
    assert snap.shape == (360, 480, 3)
    assert crop.shape[:2] == (180, 144)  # the box with a 10 % margin
    assert abs(int(crop[90, 72, 2]) - 220) < 20  # the truck's colour (BGR red channel)


def test_an_alert_only_checkpoint_draws_no_evidence():
    r = rule(category=None)
    r.on_sightings([sighting()])
    [alert] = r.tick(s(120))
    assert alert.category is None and alert.render_evidence is None


def frame(t: datetime) -> Frame:
    return Frame("gate-east", 1, t, np.full((360, 480, 3), 90, np.uint8))


def det(track: int | None, label: str = "truck", score: float = 0.8, foot_y: float = 300) -> Detection:
    return Detection(label, 7, score, (200.0, foot_y - 150, 320.0, foot_y), track)


def test_the_watch_reports_a_truck_in_the_zone_once_per_track():
    watch = CheckpointWatch(camera())
    first = watch.sightings([det(1), det(2, "car"), det(3, score=0.2), det(4, foot_y=60), det(None)], frame(T))
    assert [x.track_id for x in first] == [1]  # car, doubtful, outside the lanes and untracked left out
    assert cv2.imdecode(np.frombuffer(first[0].picture, np.uint8), cv2.IMREAD_COLOR).shape == (360, 480, 3)
    later = watch.sightings([det(1), det(2), det(5)], frame(s(1)))  # track 2 is a truck now (voted label)
    assert [(x.track_id, x.time) for x in later] == [(2, s(1)), (5, s(1))]
    assert watch.sightings([det(1), det(2), det(5)], frame(s(2))) == []


def test_checkpoint_config_needs_the_cameras_position_and_a_real_zone():
    with pytest.raises(ValidationError, match="lon and lat"):
        CameraConfig(name="c", url="x.mp4", checkpoint=CheckpointConfig())
    with pytest.raises(ValidationError, match="unknown zone"):
        CameraConfig(name="c", url="x.mp4", lon=LON, lat=LAT, checkpoint=CheckpointConfig(zone="nowhere"))
    with pytest.raises(ValidationError, match="vehicle_types"):
        CheckpointConfig(vehicle_types=["tank"])
    cp = CheckpointConfig()
    assert (cp.classes, cp.radius_m, cp.window_s, cp.vehicle_types) == (["truck"], 150, 120, ["muck_truck"])


def test_citygate_check_names_the_checkpoints_problems_by_path(tmp_path):
    from gateway.config import ConfigError
    from gateway.deployment import load_deployment

    (tmp_path / "clip.mp4").write_bytes(b"")
    path = tmp_path / "site.yaml"
    path.write_text(f"""
video:
  detector: {{model: {Path(__file__).resolve().parent.parent / "models" / "yolov8n_int8.onnx"}}}
  cameras:
    - name: gate-east
      url: clip.mp4
      lon: {LON}
      lat: {LAT}
      checkpoint: {{category: unregistred_vehicle, radius_m: -5}}
""", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_deployment(path)
    assert any(p.startswith("video.cameras[0].checkpoint.radius_m: ") for p in info.value.problems)
    path.write_text(path.read_text().replace("radius_m: -5", "radius_m: 100"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_deployment(path)
    assert any(p.startswith("video.cameras[0].checkpoint.category: 'unregistred_vehicle' is not in the case "
                            "catalog (did you mean 'unregistered_vehicle'?)") for p in info.value.problems)
    path.write_text(path.read_text().replace("unregistred", "unregistered"), encoding="utf-8")
    assert load_deployment(path).config.video.cameras[0].checkpoint.radius_m == 100


def test_a_fix_in_the_neighbouring_cell_and_a_second_checkpoint_are_found():
    north = CameraConfig(name="gate-north", url="rtsp://127.0.0.1/y", lon=LON + 0.03, lat=LAT + 0.02,
                         checkpoint=CheckpointConfig(radius_m=100, window_s=60))
    r = BlackTruckRule([camera(), north], FLEET)
    r.on_fix("muck-01", LON - 0.0009, LAT - 0.0009, s(5))  # ~120 m south-west: across a cell boundary
    r.on_fix("muck-02", LON + 0.03 + 0.0005, LAT + 0.02, s(5))  # ~43 m east of the north gate
    r.on_sightings([sighting(1), Sighting("gate-north", 3, "truck", 0.9, (1, 1, 20, 20), T, picture())])
    assert r.tick(s(200)) == [] and r.stats["accounted"] == 2
    r.on_sightings([Sighting("gate-north", 4, "truck", 0.9, (1, 1, 20, 20), s(100), picture())])
    [alert] = r.tick(s(200))  # muck-02's fix was 95 s before: outside the north gate's window
    assert alert.subject_id == "gate-north" and alert.place == ""
    assert [c["vehicle"] for c in alert.facts["registered_nearest"]] == []
