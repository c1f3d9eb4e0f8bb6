"""Chinese names in the images the gateway draws are characters, not missing-glyph boxes."""

import io
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np
from PIL import Image
from shapely.geometry import Polygon

from core.fonts import cjk_font_path, font
from core.model import Detection
from detectors.vehicle.evidence import Place, map_png
from detectors.vehicle.geometry import LocalPlane
from detectors.video.evidence import render_snapshot

NAME = "东华门街道"
TOFU = "\U0010fffd"  # a private-use code point no font maps: drawn as the font's .notdef glyph


def glyph(ch: str, size: int = 32) -> np.ndarray:
    mask = font(size).getmask(ch)
    return np.asarray(mask, dtype=np.uint8).reshape(mask.size[1], mask.size[0])


def test_a_cjk_font_is_installed_and_each_chinese_glyph_is_not_the_missing_glyph():
    assert cjk_font_path() is not None, "install fonts-wqy-microhei (scripts/test.sh does)"
    tofu = glyph(TOFU)
    assert np.array_equal(tofu, glyph("\U0010fffc"))  # the reference really is the .notdef glyph
    drawn = [glyph(ch) for ch in NAME + "广场渣土车"]
    for ch, g in zip(NAME + "广场渣土车", drawn, strict=True):
        assert g.any(), f"{ch} draws nothing"
        assert g.shape != tofu.shape or not np.array_equal(g, tofu), f"{ch} is drawn as the missing-glyph box"
    assert len({g.tobytes() for g in drawn}) == len(drawn)  # every character its own glyph


def test_evidence_map_draws_chinese_place_names():
    plane = LocalPlane(116.40, 39.91)
    square = [(-80.0, -60.0), (80.0, -60.0), (80.0, 60.0), (-80.0, 60.0)]
    ring = tuple(plane.lonlat(x, y) for x, y in square)

    def draw(name: str) -> np.ndarray:
        place = Place("z1", "zone", name, ring, False, Polygon(square))
        track = [(0.0, *plane.lonlat(-150.0, 0.0), 30.0), (10.0, *plane.lonlat(0.0, 0.0), 30.0)]
        return np.asarray(Image.open(io.BytesIO(map_png(plane, track, [place], plane.lonlat(0.0, 0.0)))).convert("L"))

    named, boxes = draw("东华门"), draw(TOFU * 3)
    assert named.shape == boxes.shape
    assert (named != boxes).sum() > 30  # the label differs from three missing-glyph boxes


def test_video_snapshot_draws_a_chinese_camera_name():
    frame = np.full((360, 640, 3), 90, np.uint8)
    det = Detection(label="car", class_id=2, confidence=0.9, box=(300.0, 200.0, 400.0, 280.0))
    when = datetime(2026, 11, 23, 9, 41, tzinfo=timezone(timedelta(hours=8)))

    def draw(camera: str) -> np.ndarray:
        jpeg = render_snapshot(frame, det, None, "car", 7, when, camera)
        return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).astype(int)

    named, boxes, questions = draw("东门摄像头"), draw(TOFU * 5), draw("?????")
    top_left = (slice(0, 40), slice(0, 200))  # where the camera name is drawn
    assert np.abs(named[top_left] - boxes[top_left]).sum() > 2000
    assert np.abs(named[top_left] - questions[top_left]).sum() > 2000  # not OpenCV's '?' either
