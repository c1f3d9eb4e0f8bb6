"""Zone rules on synthetic track sequences (no model): timing, re-arming, schedules, lines, counts,
median-score trust, and fragmented tracks of one parked car."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from core.model import Detection
from detectors.video.config import CameraConfig, ScheduleConfig
from detectors.video.rules import ZoneRules, schedule_active

SIZE = (1920, 1080)
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))  # a Monday
ZONE = {"name": "east-gate", "polygon": [[100, 300], [1000, 300], [1000, 900], [100, 900]]}


def car(tid: int, x: float = 400, y: float = 500, conf: float = 0.8, label: str = "car") -> Detection:
    return Detection(label, 2, conf, (x, y, x + 200, y + 120), track_id=tid)


def camera(**rule) -> CameraConfig:
    base = {"name": "no-parking", "kind": "dwell", "zone": "east-gate", "classes": ["car", "truck"],
            "min_seconds": 60, "category": "illegal_parking"}
    return CameraConfig(name="cam-1", url="rtsp://x", zones=[ZONE], rules=[base | rule])


def run(rules: ZoneRules, frames, start: datetime = T0):
    """frames: iterable of (seconds, [detections]); returns [(seconds, event)]."""
    out = []
    for s, dets in frames:
        out += [(s, ev) for ev in rules.update(dets, start + timedelta(seconds=s), SIZE)]
    return out


def opened(events):
    return [(s, ev) for s, ev in events if ev.state == "open"]


def test_dwell_fires_at_min_seconds_not_before():
    events = run(ZoneRules(camera()), [(s, [car(1)]) for s in range(0, 100)])
    (s, ev), = opened(events)
    assert s == 60
    assert ev.category == "illegal_parking" and ev.zone == "east-gate" and ev.track_id == 1
    assert ev.facts["dwell_s"] == 60 and ev.facts["object"] == "car"


def test_dwell_does_not_fire_for_slow_traffic_or_outside_the_zone():
    crawling = [(s, [car(1, x=150 + 8 * s)]) for s in range(0, 100)]  # 800 px in 100 s
    assert opened(run(ZoneRules(camera()), crawling)) == []
    outside = [(s, [car(2, x=1200)]) for s in range(0, 100)]
    assert opened(run(ZoneRules(camera()), outside)) == []
    person = [(s, [car(3, label="person")]) for s in range(0, 100)]
    assert opened(run(ZoneRules(camera()), person)) == []


def test_jitter_within_max_motion_still_counts_as_stationary():
    jitter = [(s, [car(1, x=400 + (s % 3) * 10, y=500 - (s % 2) * 8)]) for s in range(0, 70)]
    assert [s for s, _ in opened(run(ZoneRules(camera()), jitter))] == [60]


def test_re_arms_after_the_object_leaves_and_returns():
    rules = ZoneRules(camera(clear_after_s=30))
    frames = [(s, [car(1)]) for s in range(0, 120)]  # parked 2 minutes: one case
    frames += [(s, []) for s in range(120, 200)]  # gone
    frames += [(s, [car(7)]) for s in range(200, 300)]  # back (new id): a second case after 60 s
    events = run(rules, frames)
    states = [(s, ev.state) for s, ev in events]
    assert states == [(60, "open"), (150, "closed"), (260, "open")]
    assert events[0][1].case_no == events[1][1].case_no != events[2][1].case_no


def test_short_absence_does_not_reset_the_dwell_timer():
    frames = [(s, [car(1)] if not 20 <= s < 35 else []) for s in range(0, 70)]  # 15 s unseen
    assert [s for s, _ in opened(run(ZoneRules(camera(clear_after_s=30)), frames))] == [60]


def test_parked_car_whose_track_id_changes_twice_is_one_case():
    # ids change at 40 s (before the case opens) and at 100 s (after); each new box is a little shifted
    frames = [(s, [car(1 if s < 40 else 2 if s < 100 else 3, x=400 + (s >= 40) * 6 + (s >= 100) * 6)])
              for s in range(0, 180)]
    events = run(ZoneRules(camera()), frames)
    assert [(s, ev.state) for s, ev in events] == [(60, "open")]
    (_, ev), = events
    assert ev.track_id == 2


def test_new_track_on_an_open_case_continues_it_even_with_gaps():
    frames = [(s, [car(1)]) for s in range(0, 70)]
    frames += [(s, []) for s in range(70, 90)]  # occluded by a bus for 20 s
    frames += [(s, [car(5, x=420, y=505)]) for s in range(90, 200)]
    events = run(ZoneRules(camera()), frames)
    assert [(s, ev.state) for s, ev in events] == [(60, "open")]


def test_close_of_a_fragmented_case_names_the_track_that_opened_it():
    # the case desk pairs an open with its close by track id: the close must not carry the new fragment's id
    frames = [(s, [car(1)]) for s in range(0, 70)] + [(s, [car(5, x=406)]) for s in range(70, 120)]
    frames += [(s, []) for s in range(120, 200)]  # the car leaves
    events = run(ZoneRules(camera()), frames)
    assert [(ev.state, ev.track_id) for _, ev in events] == [("open", 1), ("closed", 1)]
    assert 5 in events[-1][1].facts["track_ids"]


def test_a_second_car_beside_it_opens_its_own_case():
    frames = [(s, [car(1)] + ([car(2, x=700)] if s >= 30 else [])) for s in range(0, 100)]
    events = opened(run(ZoneRules(camera()), frames))
    assert [(s, ev.track_id) for s, ev in events] == [(60, 1), (90, 2)]


def test_median_score_is_trusted_not_one_frame():
    flicker = [(s, [car(1, conf=0.9 if s == 61 else 0.3)]) for s in range(0, 100)]
    assert opened(run(ZoneRules(camera(min_confidence=0.5)), flicker)) == []
    mostly_good = [(s, [car(1, conf=0.3 if s % 4 == 0 else 0.8)]) for s in range(0, 100)]
    assert [s for s, _ in opened(run(ZoneRules(camera(min_confidence=0.5)), mostly_good))] == [60]


def test_min_area_filters_small_boxes():
    small = [(s, [Detection("car", 2, 0.9, (400, 500, 420, 510), track_id=1)]) for s in range(0, 100)]
    assert opened(run(ZoneRules(camera(min_area_px=1000)), small)) == []


def test_cooldown_blocks_a_new_case_on_the_same_spot():
    frames = [(s, [car(1)]) for s in range(0, 70)] + [(s, []) for s in range(70, 110)]
    frames += [(s, [car(2)]) for s in range(110, 300)]
    no_cd = run(ZoneRules(camera(clear_after_s=30)), frames)
    with_cd = run(ZoneRules(camera(clear_after_s=30, cooldown_s=300)), frames)
    assert len(opened(no_cd)) == 2 and len(opened(with_cd)) == 1


def test_presence_schedule_only_in_forbidden_hours():
    night = ScheduleConfig(hours=["22:00-06:00"])
    cam = camera(kind="presence", classes=["dining table", "chair", "umbrella"], min_seconds=120,
                 schedule=night.model_dump(), category="outdoor_stall")
    stall = [(s, [car(1, label="chair")]) for s in range(0, 600, 5)]
    assert opened(run(ZoneRules(cam), stall, start=T0.replace(hour=14))) == []  # 14:00 local: allowed
    events = opened(run(ZoneRules(cam), stall, start=T0.replace(hour=23)))
    assert [s for s, _ in events] == [120]
    # starts 21:58: the 2 minutes are counted from 22:00
    events = opened(run(ZoneRules(cam), stall, start=T0.replace(hour=21, minute=58)))
    assert [s for s, _ in events] == [240]
    assert events[0][1].category == "outdoor_stall" and events[0][1].facts["present_s"] == 120


def test_schedule_days_hours_and_timezone():
    weekdays = ScheduleConfig(days=[0, 1, 2, 3, 4], hours=["07:00-09:00", "17:00-19:00"])
    assert schedule_active(weekdays, T0.replace(hour=8))  # Monday 08:00 Shanghai
    assert not schedule_active(weekdays, T0.replace(hour=10))
    assert not schedule_active(weekdays, T0.replace(hour=8) + timedelta(days=5))  # Saturday
    # the same instant given in UTC is judged in Shanghai time: 00:30 UTC = 08:30 +08:00
    assert schedule_active(weekdays, datetime(2026, 11, 23, 0, 30, tzinfo=UTC))
    assert schedule_active(None, T0)
    with pytest.raises(ValidationError):
        ScheduleConfig(hours=["7-9"])
    with pytest.raises(ValidationError):
        ScheduleConfig(days=[7])


def walk(tid: int, ys, x: float = 500, label: str = "truck"):
    """A truck whose foot point goes through the given y values, one per second."""
    return [(s, [Detection(label, 7, 0.8, (x, y - 150, x + 200, y), track_id=tid)]) for s, y in enumerate(ys)]


def line_camera(direction: str) -> CameraConfig:
    rule = {"name": "closed-road", "kind": "line_crossing", "line": [[0, 500], [1920, 500]],
            "direction": direction, "classes": ["truck"], "category": "truck_on_closed_road"}
    return CameraConfig(name="cam-2", url="rtsp://x", rules=[rule])


def test_line_crossing_only_in_the_configured_direction():
    down = walk(1, range(300, 800, 50))  # moving down the picture: left (upper) side to right (lower)
    up = walk(2, range(800, 300, -50))
    ev = opened(run(ZoneRules(line_camera("left_to_right")), down))
    assert len(ev) == 1 and ev[0][1].facts["direction"] == "left_to_right"
    assert ev[0][0] == 5  # at 500 (s=4) it is on the line; at 550 it has crossed
    assert opened(run(ZoneRules(line_camera("left_to_right")), up)) == []
    assert len(opened(run(ZoneRules(line_camera("right_to_left")), up))) == 1
    assert len(opened(run(ZoneRules(line_camera("any")), up))) == 1


def test_line_crossing_once_per_object_and_not_beside_the_segment():
    back_and_forth = walk(1, [400, 600, 400, 600, 400, 600])
    assert len(opened(run(ZoneRules(line_camera("any")), back_and_forth))) == 1
    short = CameraConfig(name="cam-3", url="x", rules=[{"name": "r", "kind": "line_crossing",
                                                         "line": [[0, 500], [300, 500]], "classes": ["truck"]}])
    assert opened(run(ZoneRules(short), walk(1, range(300, 800, 50), x=800))) == []


def test_count_rule_needs_enough_objects_for_long_enough():
    cam = CameraConfig(name="cam-4", url="x", zones=[ZONE], rules=[{
        "name": "crowd", "kind": "count", "zone": "east-gate", "classes": ["person"], "min_count": 5,
        "min_seconds": 30, "category": "crowding"}])

    def people(n: int, s: int):
        return [Detection("person", 0, 0.8, (150 + 60 * i, 500, 190 + 60 * i, 620), track_id=i + 1)
                for i in range(n)]

    four = [(s, people(4, s)) for s in range(0, 100)]
    assert opened(run(ZoneRules(cam), four)) == []
    five = [(s, people(5 if s >= 10 else 2, s)) for s in range(0, 100)]
    (s, ev), = opened(run(ZoneRules(cam), five))
    assert s == 40 and ev.facts["count"] == 5 and ev.track_id is None and ev.category == "crowding"
    events = run(ZoneRules(cam), five + [(s, people(1, s)) for s in range(100, 200)])
    assert [(s, e.state) for s, e in events] == [(40, "open"), (130, "closed")]


def test_class_presence_maps_each_class_to_its_catalog_entry():
    cam = CameraConfig(name="cam-5", url="x", rules=[{
        "name": "city-model", "kind": "class_presence", "classes": ["garbage", "ad"], "min_seconds": 10,
        "min_confidence": 0.5, "class_categories": {"garbage": "exposed_garbage", "ad": "illegal_ad"}}])
    frames = [(s, [Detection("garbage", 0, 0.7, (100, 100, 300, 300), track_id=1),
                   Detection("ad", 1, 0.7, (800, 100, 900, 200), track_id=2),
                   Detection("person", 2, 0.9, (500, 500, 600, 800), track_id=3)]) for s in range(0, 30)]
    events = opened(run(ZoneRules(cam), frames))
    assert sorted((e.detection.label, e.category, s) for s, e in events) == [
        ("ad", "illegal_ad", 10), ("garbage", "exposed_garbage", 10)]


def test_config_errors_name_the_rule_and_zone():
    with pytest.raises(ValidationError, match="unknown zone 'west'"):
        camera(zone="west")
    with pytest.raises(ValidationError, match="needs `line"):
        CameraConfig(name="c", url="x", rules=[{"name": "r", "kind": "line_crossing"}])
    with pytest.raises(ValidationError, match="at least 3 points"):
        CameraConfig(name="c", url="x", zones=[{"name": "z", "polygon": [[0, 0], [1, 1]]}])
    with pytest.raises(ValidationError, match="extra"):
        camera(min_secs=5)
