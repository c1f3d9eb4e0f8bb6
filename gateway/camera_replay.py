"""Replay one camera's rules over a video file: what cases would this zone / rule produce?

For tuning zones and thresholds without a live stream. Frames are picked at the camera's detect
rate in *video* time (not wall time), so a replay gives the same alerts however fast the box is,
and durations such as dwell seconds are the video's.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from core.model import Alert
from gateway.sources.camera import FileReader

if TYPE_CHECKING:
    from detectors.video.config import CameraConfig

BAR_WIDTH = 30


class ProgressBar:
    """A one-line progress bar on a terminal stream, redrawn at most a few times a second."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every_s: float = 0.2) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self._drawn_at = 0.0

    def update(self, done: int, alerts: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < self.every_s:
            return
        self._drawn_at = now
        rate = done / (now - self.started) if now > self.started else 0.0
        if self.total:
            filled = min(BAR_WIDTH, BAR_WIDTH * done // self.total)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            head = f"[{bar}] {done}/{self.total} frames {100 * done / self.total:5.1f}%"
        else:
            head = f"{done} frames"
        self.stream.write(f"\r{self.label} {head} {rate:6.1f} fps, {alerts} alerts")
        self.stream.flush()

    def close(self, done: int, alerts: int) -> None:
        self.update(done, alerts, force=True)
        self.stream.write("\n")
        self.stream.flush()


def replay_camera(
    camera: CameraConfig,
    detector: Any,
    file: Path,
    progress: bool = True,
    *,
    start: datetime | None = None,
    pipeline: Any = None,
) -> list[Alert]:
    """Run `camera`'s zones and rules over `file`; return every alert the pipeline emitted, in order.

    `detector` is an ObjectDetector (detectors.video.backends.load_detector). `start` is the wall
    time the video's first frame is taken to show (default now); `pipeline` lets a caller pass a
    prepared CameraPipeline (and read its stats afterwards). Raises FileNotFoundError naming the
    file if it cannot be opened.
    """
    if pipeline is None:
        from detectors.video.pipeline import CameraPipeline  # the analysis is only needed here

        pipeline = CameraPipeline(camera, detector)
    reader = FileReader(camera.name, Path(file), camera.detect_fps, start)
    bar = ProgressBar(reader.total, f"{camera.name}:") if progress else None
    alerts: list[Alert] = []
    try:
        for frame in reader:
            alerts.extend(pipeline.process(frame))
            if bar:
                bar.update(reader.position, len(alerts))
    finally:
        reader.close()
        if bar:
            bar.close(reader.position, len(alerts))
    return alerts
