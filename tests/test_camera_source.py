"""Camera source on real video: newest-frame dispatch, deterministic file replay, and stream loss.

No timing assertions: every wait is for a condition, with a generous timeout.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.model import Alert, Frame
from detectors.video.config import CameraConfig
from gateway.sources.camera import OFFLINE_RULE, CameraSource, FileReader, redact
from gateway.sources.stream import KeyframeIntervals, choose_mode

VIDEO = Path(__file__).parent / "fixtures" / "video"
PEDESTRIANS = VIDEO / "pedestrians_480x360_10fps.mp4"  # 150 frames, 10 fps
CARPARK = VIDEO / "carpark_static_640x360_25fps.mp4"  # 150 frames, 25 fps


class Collector:
    """Records what a camera hands on, from the camera's threads."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.frames: list[Frame] = []
        self.alerts: list[Alert] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def on_frame(self, frame: Frame) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow analysis
        with self.lock:
            self.frames.append(frame)

    def on_alert(self, alert: Alert) -> None:
        with self.lock:
            self.alerts.append(alert)

    def offline(self, state: str) -> list[Alert]:
        with self.lock:
            return [a for a in self.alerts if a.rule == OFFLINE_RULE and a.state == state]


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def source(cam: CameraConfig, sink: Collector, **kw) -> CameraSource:
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    return CameraSource(cam, sink.on_frame, sink.on_alert, **kw)


def write_clip(path: Path, frames: int = 10, fps: float = 10.0) -> None:
    """A short clip OpenCV can write and read back (mp4v), with a moving square."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    assert writer.isOpened()
    for i in range(frames):
        image = np.zeros((120, 160, 3), np.uint8)
        cv2.rectangle(image, (10 + 10 * i, 40), (40 + 10 * i, 70), (0, 255, 0), -1)
        writer.write(image)
    writer.release()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_file_reader_picks_frames_at_detect_rate_in_video_time():
    start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    reader = FileReader("cam", PEDESTRIANS, detect_fps=2.0, start=start)
    frames = list(reader)
    assert (reader.fps, reader.total, reader.position) == (10.0, 150, 150)
    assert [f.index for f in frames] == list(range(0, 150, 5))
    assert [f.time for f in frames] == [start + timedelta(seconds=i / 2) for i in range(30)]
    assert frames[0].size == (480, 360) and frames[0].image.dtype == np.uint8


def test_file_reader_hands_every_frame_when_detect_rate_exceeds_file_rate():
    frames = list(FileReader("cam", PEDESTRIANS, detect_fps=25.0))
    assert [f.index for f in frames] == list(range(150))


def test_file_reader_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="'cam-x'.*nope.mp4"):
        FileReader("cam-x", tmp_path / "nope.mp4", detect_fps=2.0)


def test_fast_file_replay_is_deterministic_and_ends():
    sink = Collector()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cam = CameraConfig(name="replay", url=str(PEDESTRIANS), detect_fps=2.0, realtime=False)
    src = source(cam, sink, start_time=start)
    src.start()
    assert src.finished.wait(30)
    src.stop()
    assert [f.index for f in sink.frames] == list(range(0, 150, 5))
    assert sink.frames[-1].time == start + timedelta(seconds=14.5)
    stats = src.stats()
    assert stats["frames_decoded"] == 150 and stats["frames_dispatched"] == 30
    assert stats["frames_dropped"] == 0 and stats["reconnects"] == 0
    assert sink.alerts == []  # a file that ended is not an offline camera


def test_realtime_keeps_only_the_newest_frame_and_loops_a_file():
    sink = Collector(delay_s=0.3)  # analysis slower than the 25 fps stream
    cam = CameraConfig(name="live", url=str(CARPARK), detect_fps=5.0, realtime=True)
    src = source(cam, sink)
    src.start()
    wait_for(lambda: len(sink.frames) >= 5, what="5 frames handed on")
    wait_for(lambda: src.stats()["frames_dropped"] > 20, what="dropped frames")
    src.stop()
    stats = src.stats()
    # every decoded frame was either handed on, dropped in favour of a newer one, or is the newest
    assert stats["frames_decoded"] - stats["frames_dispatched"] - stats["frames_dropped"] in (0, 1)
    assert stats["frames_dispatched"] == len(sink.frames)
    # no lag builds up: consecutive frames handed on skip the ones decoded meanwhile
    gaps = [b.index - a.index for a, b in zip(sink.frames, sink.frames[1:], strict=False) if b.index > a.index]
    assert gaps and max(gaps) > 1
    assert stats["decoded_fps"] > 0 and stats["online"] is True
    assert all(f.time.tzinfo is not None for f in sink.frames)
    assert not src.running


def test_file_that_disappears_goes_offline_while_another_camera_keeps_running(tmp_path):
    clip = tmp_path / "short.mp4"
    write_clip(clip)
    lost, good = Collector(), Collector()
    lost_cam = CameraConfig(name="lost", url=str(clip), detect_fps=10.0, offline_after_s=0.5)
    good_cam = CameraConfig(name="good", url=str(PEDESTRIANS), detect_fps=5.0)
    lost_src, good_src = source(lost_cam, lost), source(good_cam, good)
    lost_src.start()
    good_src.start()
    try:
        wait_for(lambda: len(lost.frames) >= 1, what="first frame of the camera to be lost")
        clip.unlink()
        wait_for(lambda: lost.offline("open"), what="camera_offline alert")
        wait_for(lambda: lost_src.stats()["reconnects"] >= 2, what="reconnect attempts")
        assert "short.mp4 (no such file)" in lost_src.stats()["last_error"]
        alert = lost.offline("open")[0]
        assert (alert.subject_kind, alert.subject_id, alert.source) == ("camera", "lost", "video")
        assert alert.category is None and alert.severity == "warning"
        assert lost_src.stats()["online"] is False

        # the other camera is untouched: it keeps delivering frames and has no trouble
        seen = len(good.frames)
        wait_for(lambda: len(good.frames) >= seen + 3, what="frames from the good camera")
        assert good.alerts == [] and good_src.stats()["reconnects"] == 0

        # the file comes back: the camera reconnects and the offline alert closes
        shutil.copy(PEDESTRIANS, clip)
        wait_for(lambda: lost.offline("closed"), what="camera back online")
        assert lost.offline("closed")[0].key == alert.key
    finally:
        lost_src.stop()
        good_src.stop()


def test_refused_rtsp_url_retries_with_backoff_and_goes_offline():
    sink, good = Collector(), Collector()
    url = f"rtsp://admin:secret@127.0.0.1:{closed_port()}/stream1"
    cam = CameraConfig(name="gate-7", url=url, offline_after_s=0.3)
    src = source(cam, sink)
    good_src = source(CameraConfig(name="good", url=str(CARPARK), detect_fps=5.0), good)
    src.start()
    good_src.start()
    try:
        wait_for(lambda: src.stats()["reconnects"] >= 3, what="reconnect attempts")
        wait_for(lambda: sink.offline("open"), what="camera_offline alert")
        assert sink.frames == []
        assert len(sink.offline("open")) == 1  # one alert per outage, not one per attempt
        stats = src.stats()
        assert "cannot open" in stats["last_error"] and "secret" not in stats["last_error"]
        wait_for(lambda: len(good.frames) >= 3, what="frames from the good camera")
    finally:
        src.stop()
        good_src.stop()
    assert not src.running and not good_src.running


def test_a_failing_consumer_is_counted_and_the_camera_keeps_going():
    calls = []

    def explode(frame: Frame) -> None:
        calls.append(frame.index)
        raise RuntimeError("rule bug")

    cam = CameraConfig(name="buggy", url=str(PEDESTRIANS), detect_fps=2.0, realtime=False)
    src = CameraSource(cam, explode, lambda a: None)
    src.start()
    assert src.finished.wait(30)
    src.stop()
    assert len(calls) == 30 and src.stats()["errors"] == 30
    assert "rule bug" in src.stats()["last_error"]


def test_redact_hides_passwords():
    assert redact("rtsp://admin:pw@10.0.0.5:554/h264") == "rtsp://admin:***@10.0.0.5:554/h264"
    assert redact("rtsp://10.0.0.5/h264") == "rtsp://10.0.0.5/h264"
    assert redact("/data/a@b.mp4") == "/data/a@b.mp4"


@pytest.mark.parametrize(
    ("interval_s", "detect_fps", "mode"),
    [
        (None, 0.1, "full"),  # not measured yet: decode everything
        (1.0, 1.0, "keyframes"),  # detect rate equal to the keyframe rate
        (1.0, 0.5, "keyframes"),
        (1.0004, 1.0, "keyframes"),  # a 90 kHz timestamp rounding is not a longer GOP
        (1.0, 2.0, "full"),  # analysis wants more pictures than keyframes give
        (2.0, 1.0, "full"),  # keyframes too sparse
        (10.0, 0.2, "full"),
    ],
)
def test_decode_mode_is_keyframes_only_when_keyframes_come_at_the_detect_rate(interval_s, detect_fps, mode):
    assert choose_mode(detect_fps, interval_s) == mode


def test_keyframe_interval_is_the_longest_recent_one_and_ignores_repeats():
    gop = KeyframeIntervals()
    gop.keyframe(None)  # RTSP's first packet may carry no time
    gop.keyframe(0.0)
    assert gop.interval_s is None
    gop.keyframe(0.0)  # a second slice of the same picture
    gop.keyframe(1.0)
    assert gop.interval_s == 1.0
    gop.keyframe(3.0)  # one long GOP makes the stream too sparse for a while
    assert gop.interval_s == 2.0
    gop.keyframe(0.5)  # time went back (looped file, restarted camera): no negative interval
    for t in (1.5, 2.5, 3.5):
        gop.keyframe(t)
    assert gop.interval_s == 1.0
