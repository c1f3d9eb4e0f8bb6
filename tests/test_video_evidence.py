"""Evidence images: the snapshot shows the zone, the crop is the object, the clip is a video."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from core.model import Detection
from detectors.video.evidence import ClipBuffer, crop, render_snapshot

WHEN = datetime(2026, 11, 23, 9, 41, 7, tzinfo=ZoneInfo("Asia/Shanghai"))
ZONE = [[100, 300], [1000, 300], [1100, 900], [50, 900]]


def _decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _yellow(px: np.ndarray) -> bool:
    b, g, r = (int(v) for v in px)
    return b < 110 and g > 190 and r > 190


def test_snapshot_draws_the_zone_outline_in_yellow_along_its_edges():
    frame = np.full((1080, 1920, 3), 60, np.uint8)
    car = Detection("car", 2, 0.87, (400, 500, 600, 620), track_id=57)
    jpeg = render_snapshot(frame, car, ZONE, "car", 57, WHEN, "cam-012")
    assert jpeg[:2] == b"\xff\xd8"
    img = _decode(jpeg)
    assert img.shape == frame.shape
    pts = np.array(ZONE, dtype=float)
    for a, b in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        for f in (0.25, 0.5, 0.75):
            x, y = np.round(a + f * (b - a)).astype(int)
            assert _yellow(img[y, x]), f"no zone colour at edge point {(x, y)}: {img[y, x]}"
    # away from any drawing the frame is untouched
    assert not _yellow(img[700, 1500]) and abs(int(img[700, 1500][0]) - 60) < 10
    # the object's box is drawn in red on its left edge, and the input frame was not modified
    b, g, r = (int(v) for v in img[560, 400])
    assert r > 180 and g < 90 and b < 90
    assert (frame == 60).all()


def test_snapshot_without_zone_and_with_a_box_at_the_border():
    frame = np.full((240, 320, 3), 90, np.uint8)
    edge = Detection("person", 0, 0.5, (0, 0, 320, 240))
    img = _decode(render_snapshot(frame, edge, None, "person", None, WHEN, "cam"))
    assert img.shape == frame.shape


def test_crop_is_the_object_with_a_margin():
    frame = np.zeros((400, 600, 3), np.uint8)
    frame[100:200, 300:500] = (0, 200, 0)
    img = _decode(crop(frame, (300, 100, 500, 200)))
    assert img.shape[:2] == (120, 240)  # 10% margin each side
    assert img[60, 120][1] > 150  # the centre is the green object
    with pytest.raises(ValueError, match="outside"):
        crop(frame, (700, 500, 800, 600))


def test_clip_buffer_keeps_the_last_seconds_and_writes_an_avi():
    buf = ClipBuffer(seconds=3)
    assert buf.to_avi() is None
    for i in range(20):
        buf.add(i * 0.5, np.full((120, 160, 3), i * 10, np.uint8))
    assert len(buf.frames) == 7  # 6.5 .. 9.5 s
    data = buf.to_avi()
    assert data is not None and data[:4] == b"RIFF" and data[8:12] == b"AVI "
