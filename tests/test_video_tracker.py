"""The tracker keeps ids through motion, missed detections and long gating gaps."""

from __future__ import annotations

from core.model import Detection
from detectors.video.tracker import Tracker


def det(x: float, y: float, conf: float = 0.8, label: str = "car", w: float = 80, h: float = 50) -> Detection:
    return Detection(label, 2, conf, (x, y, x + w, y + h))


def test_moving_box_keeps_its_id_through_gaps():
    tr = Tracker(max_age_s=30)
    ids = []
    t = 0.0
    for step in range(30):
        t = step * 0.5
        if step in (8, 9, 17):  # missed detections
            tr.update([], t)
            continue
        out = tr.update([det(100 + 15 * step, 200)], t)
        ids += [d.track_id for d in out]
    assert len(set(ids)) == 1
    assert len(ids) == 30 - 3 - 1  # every matched frame after the confirming second hit


def test_two_crossing_lanes_keep_separate_ids():
    tr = Tracker()
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    for step in range(20):
        out = tr.update([det(100 + 20 * step, 100), det(800 - 20 * step, 400)], step * 0.5)
        for d in out:
            seen["a" if d.box[1] < 300 else "b"].add(d.track_id)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]


def test_parked_car_keeps_its_track_across_a_motion_gating_gap():
    tr = Tracker(max_age_s=30)
    first = [d.track_id for t in (0.0, 0.5) for d in tr.update([det(300, 300)], t)]
    later = [d.track_id for d in tr.update([det(302, 301)], 20.0)]  # 19.5 s without inference
    assert first == [1] and later == [1]


def test_track_dropped_after_max_age_seconds():
    tr = Tracker(max_age_s=5)
    tr.update([det(300, 300)], 0.0)
    tr.update([det(300, 300)], 0.5)
    assert len(tr) == 1
    assert tr.update([det(300, 300)], 10.0) == []  # a new, unconfirmed track
    assert [t.track_id for t in tr.tracks] == [2]


def test_low_scores_continue_a_track_but_never_start_one():
    tr = Tracker(high_score=0.5, new_track_score=0.5)
    assert tr.update([det(100, 100, conf=0.3)], 0.0) == []
    assert tr.update([det(100, 100, conf=0.3)], 0.5) == []
    assert len(tr) == 0
    tr.update([det(100, 100, conf=0.9)], 1.0)
    tr.update([det(102, 100, conf=0.9)], 1.5)
    out = tr.update([det(104, 100, conf=0.3)], 2.0)
    assert [d.track_id for d in out] == [1]
    assert tr.median_score(1) == 0.9


def test_label_is_the_tracks_majority_vote():
    tr = Tracker()
    labels = []
    for step, label in enumerate(["car", "car", "truck", "car", "truck", "car"]):
        labels += [d.label for d in tr.update([det(100, 100, label=label)], step * 0.5)]
    assert set(labels) == {"car"}
