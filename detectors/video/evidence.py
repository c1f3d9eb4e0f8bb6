"""Evidence images: an annotated snapshot, a clean crop of the object, an optional short clip.

Drawing happens on a copy made only when a case opens, so the per-frame path never pays for it.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Sequence
from datetime import datetime

import cv2
import numpy as np

from core.fonts import draw_label_bgr
from core.model import Detection

ZONE_COLOUR = (0, 255, 255)  # BGR yellow: the zone outline
BOX_COLOUR = (0, 0, 255)  # BGR red: the object
TEXT_COLOUR = (255, 255, 255)


def _encode(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def _label(img: np.ndarray, text: str, x: int, y: int, bg: tuple[int, int, int], scale: float) -> None:
    """Text on a filled background, kept inside the image, in the CJK font (camera and zone names
    may be Chinese: OpenCV's own fonts would draw them as '?')."""
    draw_label_bgr(img, text, x, y, bg, TEXT_COLOUR, max(12, round(24 * scale)))


def _with_zone(image: np.ndarray, zone_polygon: Sequence[Sequence[float]] | None,
               line: Sequence[Sequence[float]] | None) -> tuple[np.ndarray, float]:
    """A copy of the frame with the zone outline (yellow, 3 px) or the counting line drawn, and the
    label scale that suits its size."""
    img = image.copy()
    h, w = img.shape[:2]
    scale = max(0.5, min(w, h) / 1000)
    if zone_polygon is not None and len(zone_polygon) >= 3:
        pts = np.round(np.asarray(zone_polygon, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [pts], isClosed=True, color=ZONE_COLOUR, thickness=3, lineType=cv2.LINE_8)
    if line is not None:
        (ax, ay), (bx, by) = line
        cv2.arrowedLine(img, (round(ax), round(ay)), (round(bx), round(by)), ZONE_COLOUR, 3, tipLength=0.03)
    return img, scale


def render_snapshot(image: np.ndarray, det: Detection, zone_polygon: Sequence[Sequence[float]] | None,
                    label: str, track_id: int | None, when: datetime, camera_name: str,
                    quality: int = 85, line: Sequence[Sequence[float]] | None = None) -> bytes:
    """JPEG of the frame with the zone outline (yellow, 3 px), the object's box with its label and
    track id, and the camera name and timestamp in the top-left corner."""
    img, scale = _with_zone(image, zone_polygon, line)
    x1, y1, x2, y2 = (round(v) for v in det.box)
    cv2.rectangle(img, (x1, y1), (x2, y2), BOX_COLOUR, max(2, round(scale * 3)))
    text = f"{label} #{track_id}" if track_id is not None else label
    _label(img, f"{text} {det.confidence:.2f}", x1, y1, BOX_COLOUR, scale)
    _label(img, f"{camera_name}  {when.isoformat(timespec='seconds')}", 0, 0, (0, 0, 0), scale)
    return _encode(img, quality)


CLEARED_COLOUR = (0, 200, 0)  # BGR green: where the object was when its case cleared


def render_cleared(image: np.ndarray, zone_polygon: Sequence[Sequence[float]] | None,
                   former_box: Sequence[float] | None, when: datetime, camera_name: str, quality: int = 85,
                   line: Sequence[Sequence[float]] | None = None) -> bytes:
    """JPEG of the frame in which a case cleared (automatic verification, 自动核查): the zone outline,
    a thin green outline where the object last was, and the camera name, time and "cleared"."""
    img, scale = _with_zone(image, zone_polygon, line)
    if former_box is not None:
        x1, y1, x2, y2 = (round(v) for v in former_box)
        cv2.rectangle(img, (x1, y1), (x2, y2), CLEARED_COLOUR, max(1, round(scale * 2)))
    _label(img, f"{camera_name}  {when.isoformat(timespec='seconds')}  cleared", 0, 0, (0, 0, 0), scale)
    return _encode(img, quality)


def crop(image: np.ndarray, box: Sequence[float], quality: int = 85, margin: float = 0.1) -> bytes:
    """JPEG of the object's box with a small margin, nothing drawn on it."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    cx1, cy1 = max(0, int(x1 - mx)), max(0, int(y1 - my))
    cx2, cy2 = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    return _encode(image[cy1:cy2, cx1:cx2], quality)


class ClipBuffer:
    """The last `seconds` of analysed frames, kept by reference (the source hands over new arrays),
    written out as an MJPEG AVI when a case opens."""

    def __init__(self, seconds: float, max_frames: int = 120) -> None:
        self.seconds = seconds
        self.frames: deque[tuple[float, np.ndarray]] = deque(maxlen=max_frames)

    def add(self, t: float, image: np.ndarray) -> None:
        self.frames.append((t, image))
        while self.frames and t - self.frames[0][0] > self.seconds:
            self.frames.popleft()

    def to_avi(self, quality: int = 80, since: float | None = None) -> bytes | None:
        """MJPEG AVI of the buffered frames (from `since` on), or None when there are fewer than two."""
        frames = [f for f in self.frames if since is None or f[0] >= since]
        if len(frames) < 2:
            return None
        span = frames[-1][0] - frames[0][0]
        fps = max(1.0, (len(frames) - 1) / span) if span > 0 else 2.0
        h, w = frames[-1][1].shape[:2]
        # OpenCV writes containers only to files: a private temporary file, read back and deleted
        fd, path = tempfile.mkstemp(suffix=".avi", prefix="citygate-clip-")
        os.close(fd)
        try:
            writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
            if not writer.isOpened():
                raise ValueError("OpenCV cannot write MJPEG AVI here")
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
            for _, img in frames:
                writer.write(img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h)))
            writer.release()
            with open(path, "rb") as f:
                return f.read()
        finally:
            os.unlink(path)
