"""What the console shows of a camera: its last analysed picture with the zones and detections drawn.

The analysis only keeps a reference (`LastFrame.keep`: the frame it already has, no copy, no encoding);
the picture is drawn and encoded when someone asks for it, at most once a second per camera (later
requests within the second get the same JPEG), on the caller's thread, so the analysis path never pays
for the console. Patrol cameras keep their own JPEG bytes (`LastPictures`), within a memory budget.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import cv2
import numpy as np

from core.fonts import draw_label_bgr
from core.model import Detection, Frame

MIN_ENCODE_INTERVAL_S = 1.0  # a camera's picture is drawn at most this often, however many ask
MAX_WIDTH = 1280  # wider frames are scaled down for the console (a 4K frame would be megabytes)
JPEG_QUALITY = 80
PATROL_PICTURES_BYTES = 64 * 1024 * 1024  # the newest patrol pictures kept for the console, in all
FPS_WINDOW = 20  # analysed frames the measured rate is taken over
STALE_FPS_S = 5.0  # nothing analysed for this long: the rate reads 0

ZONE = (0, 255, 255)  # BGR yellow, as on the evidence snapshots
MASK = (160, 160, 160)  # privacy / ignore masks: grey
PERSON = (80, 200, 0)  # BGR green
VEHICLE = (0, 0, 255)  # BGR red
OTHER = (255, 160, 0)  # BGR blue
VEHICLES = frozenset({"car", "truck", "bus", "motorcycle", "bicycle"})
WHITE = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class Outline:
    """A zone or a counting line to draw, in the picture's pixels."""

    name: str
    points: tuple[tuple[float, float], ...]
    mask: bool = False
    closed: bool = True  # False: a line-crossing rule's line, drawn as an arrow from A to B


def outlines(camera: Any) -> list[Outline]:
    """The zones and counting lines of a CameraConfig."""
    out = [Outline(z.name, tuple((float(x), float(y)) for x, y in z.polygon), z.mask) for z in camera.zones]
    out += [Outline(r.name, tuple((float(x), float(y)) for x, y in r.line), closed=False)
            for r in camera.rules if getattr(r, "line", None) is not None]
    return out


def render_view(image: np.ndarray, shapes: Sequence[Outline], detections: Sequence[Detection], title: str,
                quality: int = JPEG_QUALITY) -> bytes:
    """A JPEG of `image` (BGR, not modified) with the zones (yellow, masks grey), the counting lines,
    each detection's box with its label, track and score, and `title` in the top-left corner; scaled
    down to MAX_WIDTH when wider. Text is drawn in the CJK font, so Chinese names read as written."""
    h, w = image.shape[:2]
    scale = min(1.0, MAX_WIDTH / w)
    img = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 \
        else image.copy()
    size = max(12, round(min(img.shape[:2]) / 28))
    thick = max(1, round(min(img.shape[:2]) / 240))
    for shape in shapes:
        pts = np.round(np.asarray(shape.points, dtype=np.float64) * scale).astype(np.int32)
        colour = MASK if shape.mask else ZONE
        if shape.closed:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], isClosed=True, color=colour, thickness=thick + 1)
        else:
            cv2.arrowedLine(img, tuple(map(int, pts[0])), tuple(map(int, pts[1])), colour, thick + 1, tipLength=0.05)
        x, y = (int(v) for v in pts.min(axis=0))
        draw_label_bgr(img, shape.name, x, y + size + 4, (40, 40, 40), colour, size)
    for det in detections:
        x1, y1, x2, y2 = (round(v * scale) for v in det.box)
        colour = PERSON if det.label == "person" else VEHICLE if det.label in VEHICLES else OTHER
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick)
        name = det.label if det.track_id is None else f"{det.label} #{det.track_id}"
        draw_label_bgr(img, f"{name} {det.confidence:.2f}", x1, y1, colour, WHITE, max(10, size - 4))
    draw_label_bgr(img, title, 0, size + 6, (0, 0, 0), WHITE, size)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


class _Encoded:
    """The JPEG of the newest picture, drawn at most once per MIN_ENCODE_INTERVAL_S (one drawing at a
    time: concurrent requests wait for it and share it)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._source: object = None  # what the cached JPEG was drawn from
        self._at = 0.0
        self._jpeg: bytes | None = None
        self.drawn = 0

    def get(self, source: object, draw: Callable[[], bytes]) -> bytes:
        with self._lock:
            fresh = self._jpeg is not None and (source is self._source
                                                 or self.clock() - self._at < MIN_ENCODE_INTERVAL_S)
            if not fresh:
                self._jpeg, self._source, self._at = draw(), source, self.clock()
                self.drawn += 1
            assert self._jpeg is not None
            return self._jpeg


class LastFrame:
    """One stream camera's newest analysed frame and the detections of its last inference."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: tuple[Frame, tuple[Detection, ...]] | None = None
        self._times: deque[float] = deque(maxlen=FPS_WINDOW)
        self._encoded = _Encoded(clock)

    def keep(self, frame: Frame, detections: Sequence[Detection]) -> None:
        """From the analysis thread, after each frame: a reference, swapped in one assignment."""
        self._last = (frame, tuple(detections))
        self._times.append(self.clock())

    @property
    def last(self) -> tuple[Frame, tuple[Detection, ...]] | None:
        """The newest analysed frame and what its last inference found (None before the first)."""
        return self._last

    def fps(self) -> float:
        """Frames analysed per second over the last few (0 when none came for a while)."""
        times = list(self._times)  # one C call under the GIL: safe against the analysis thread's append
        if len(times) < 2 or times[-1] <= times[0] or self.clock() - times[-1] > STALE_FPS_S:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def jpeg(self, shapes: Sequence[Outline], title: str, tz: Any = None) -> bytes | None:
        """The last frame drawn as a JPEG (None before the first frame); blocking: call from a thread."""
        last = self._last
        if last is None:
            return None
        frame, detections = last
        when = frame.time.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
        return self._encoded.get(frame, lambda: render_view(frame.image, shapes, detections, f"{title}  {when}"))


@dataclass(frozen=True, slots=True)
class KeptPicture:
    """A patrol visit's picture as the camera sent it, with what the model found (picture pixels)."""

    jpeg: bytes
    size: tuple[int, int]
    detections: tuple[Detection, ...]
    time: datetime


class LastPictures:
    """The newest picture of each patrol camera, the least recently visited dropped first beyond
    `max_bytes`, so thousands of cameras cost a bounded amount of memory. `keep` is called from the
    patrol's inference threads."""

    def __init__(self, max_bytes: int = PATROL_PICTURES_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._pictures: OrderedDict[str, KeptPicture] = OrderedDict()
        self._encoded: dict[str, _Encoded] = {}
        self.bytes = 0

    def keep(self, camera: str, picture: KeptPicture) -> None:
        with self._lock:
            old = self._pictures.pop(camera, None)
            if old is not None:
                self.bytes -= len(old.jpeg)
            self._pictures[camera] = picture
            self.bytes += len(picture.jpeg)
            while self.bytes > self.max_bytes and len(self._pictures) > 1:
                gone, dropped = self._pictures.popitem(last=False)
                self.bytes -= len(dropped.jpeg)
                self._encoded.pop(gone, None)

    def get(self, camera: str) -> KeptPicture | None:
        with self._lock:
            return self._pictures.get(camera)

    def __len__(self) -> int:
        return len(self._pictures)

    def __contains__(self, camera: object) -> bool:
        return camera in self._pictures

    def jpeg(self, camera: str, shapes: Callable[[tuple[int, int]], Sequence[Outline]], title: str,
             tz: Any = None) -> bytes | None:
        """The camera's last picture drawn as a JPEG, None when none is kept; blocking: call from a thread.
        `shapes(size)` gives the zones in that picture's pixels (a preset's zones may be relative)."""
        with self._lock:
            picture = self._pictures.get(camera)
            if picture is None:
                return None
            encoded = self._encoded.setdefault(camera, _Encoded(self.clock))

        def draw() -> bytes:
            image = cv2.imdecode(np.frombuffer(picture.jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"patrol camera {camera}: its last picture does not decode")
            sx, sy = image.shape[1] / picture.size[0], image.shape[0] / picture.size[1]
            shown = [Outline(s.name, tuple((x * sx, y * sy) for x, y in s.points), s.mask, s.closed)
                     for s in shapes(picture.size)]
            when = picture.time.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
            return render_view(image, shown, _scaled(picture.detections, sx, sy), f"{title}  {when}")

        return encoded.get(picture, draw)


def _scaled(detections: Sequence[Detection], sx: float, sy: float) -> list[Detection]:
    if sx == 1 and sy == 1:
        return list(detections)
    return [replace(d, box=(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy)) for d in detections]
