"""Camera source: RTSP, HTTP and file streams decoded (PyAV / FFmpeg) into `Frame`s.

Live streams and files replayed in real time run two threads per camera:

- a reader that decodes continuously and keeps only the newest frame in a one-slot buffer, so a
  slow consumer never builds up lag (overwritten frames are counted as dropped). When the
  stream's keyframes come at least as often as the detect rate, it decodes keyframes only and
  lets the decoder skip the rest (`gateway.sources.stream.choose_mode`); keyframes too sparse,
  or not yet measured, and it decodes every frame. The mode is re-chosen at every keyframe, so
  a camera whose GOP changes switches cleanly, never mid-GOP;
- a dispatcher that takes the newest frame at the camera's detect rate and hands it to `on_frame`,
  and watches the stream: no frame for `offline_after_s` -> a `camera_offline` alert, frames again
  -> the same alert closed.

A lost stream or a failed open is retried with exponential backoff (1 s .. 30 s, with jitter).
A file in real-time mode loops at its end (a demo camera), paced by its timestamps; read as fast
as possible (`realtime=False`) it hands on every frame that the detect rate picks in *video* time
(`FileReader`, OpenCV, every frame decoded), so a replay is deterministic, and ends at its end. Each camera has its own threads: one failing camera never
touches another, and every error is logged with the camera's name and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import av.error
import cv2

from core.model import Alert, Frame
from gateway.aio import backoff_delay
from gateway.sources.stream import (
    DecodeMode,
    KeyframeIntervals,
    StreamError,
    choose_mode,
    describe,
    file_path,
    is_file_url,
    open_stream,
    packet_seconds,
    redact,
    to_bgr,
)

if TYPE_CHECKING:
    from detectors.video.config import CameraConfig

log = logging.getLogger(__name__)

OFFLINE_RULE = "camera_offline"
STREAM_TIMEOUT_S = 10.0  # bounds opening a stream and every read from it
DEFAULT_FILE_FPS = 25.0  # when a file does not say its frame rate
STALE_FPS_S = 5.0  # no frame decoded for this long: the decoded fps reads 0, not the last rate
DECODE_ERROR_LOG_S = 60.0  # a damaged stream is logged at most once a minute per camera

__all__ = ["OFFLINE_RULE", "CameraSource", "FileReader", "redact"]


def capture_fps(cap: cv2.VideoCapture) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if 0 < fps < 1000 else DEFAULT_FILE_FPS


class FileReader:
    """Decodes a video file and yields the frames a detect rate picks, in video time.

    Frame `i` lies at `i / fps` seconds into the file; the k-th pick is the first frame at or after
    `k / detect_fps`. Frame.time is `start + video time`, so rules measure durations in video time.
    `position` (frames decoded so far) and `total` (frames in the file, 0 if unknown) serve a
    progress bar.
    """

    def __init__(
        self,
        camera: str,
        path: Path,
        detect_fps: float,
        start: datetime | None = None,
        on_decode: Callable[[], None] | None = None,
    ) -> None:
        if detect_fps <= 0:
            raise ValueError(f"camera {camera!r}: detect_fps must be > 0, got {detect_fps}")
        self.camera = camera
        self.path = Path(path)
        self.detect_fps = detect_fps
        self.start = start or datetime.now(UTC)
        self.on_decode = on_decode  # called for every decoded frame, picked or not (decode-rate stats)
        self.position = 0
        self.picked = 0
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise FileNotFoundError(f"camera {camera!r}: cannot open video file {self.path}")
        self._cap = cap
        self.fps = capture_fps(cap)
        self.total = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def __iter__(self) -> Iterator[Frame]:
        cap, k = self._cap, 0
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                i = self.position
                self.position += 1
                if self.on_decode is not None:
                    self.on_decode()
                video_s = i / self.fps
                if video_s * self.detect_fps + 1e-9 < k:
                    continue  # between two picks
                k = int(video_s * self.detect_fps + 1e-9) + 1
                self.picked += 1
                yield Frame(self.camera, i, self.start + timedelta(seconds=video_s), image)
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()


class CameraSource:
    """One camera: decode, keep the newest frame, hand it on at the detect rate, watch the stream.

    `on_frame` and `on_alert` are called from this camera's own threads; they must be quick or
    hand work on (the runtime queues frames to a worker with a bounded drop-oldest queue).
    """

    def __init__(
        self,
        camera: CameraConfig,
        on_frame: Callable[[Frame], None],
        on_alert: Callable[[Alert], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        start_time: datetime | None = None,
    ) -> None:
        self.camera = camera
        self.name = camera.name
        self.on_frame = on_frame
        self.on_alert = on_alert
        self.clock = clock
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.start_time = start_time  # video time origin for fast file replay
        self.is_file = is_file_url(camera.url)
        self.fast = self.is_file and not camera.realtime
        loop = getattr(camera, "loop", None)  # CameraConfig may not have it: real-time files loop
        self.loop = bool(camera.realtime if loop is None else loop) and self.is_file

        self._stop = threading.Event()
        self.finished = threading.Event()  # set when a non-looping file has been read to its end
        self._slot_lock = threading.Condition()
        self._slot: Frame | None = None  # newest decoded frame not yet handed on
        self._decode_times: deque[float] = deque(maxlen=50)
        self._last_frame_at: float | None = None
        self._started_at = 0.0
        self._offline_alerted = False
        self._threads: list[threading.Thread] = []
        self._counters: dict[str, Any] = {
            "frames_decoded": 0,
            "frames_dropped": 0,
            "frames_dispatched": 0,
            "reconnects": 0,
            "loops": 0,
            "errors": 0,
            "decode_errors": 0,
            "frames_skipped": 0,  # non-keyframes the decoder skipped in keyframe mode
            "decode_mode": "full",  # "keyframes" while only keyframes are decoded
            "keyframe_interval_s": None,  # measured GOP of the current stream, seconds
            "online": False,
            "last_error": "",
        }
        self._decode_error_logged_at: float | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._threads:
            raise RuntimeError(f"camera {self.name!r}: already started")
        self._started_at = self.clock()
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._read_loop,), name=f"cam-read-{self.name}", daemon=True
            ),
            threading.Thread(
                target=self._guard, args=(self._dispatch_loop,), name=f"cam-dispatch-{self.name}", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the threads to end and wait for them (a blocked read ends within the read timeout)."""
        self._stop.set()
        with self._slot_lock:
            self._slot_lock.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning(
                    "camera %s: thread %s did not stop within %.1f s", self.name, thread.name, timeout
                )

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stats(self) -> dict[str, Any]:
        """Counters for the status page: decoded_fps (rolling), frames decoded/dropped/dispatched, ..."""
        times = list(self._decode_times)
        fps = 0.0
        if len(times) > 1 and times[-1] > times[0] and self.clock() - times[-1] < STALE_FPS_S:
            fps = (len(times) - 1) / (times[-1] - times[0])
        return {**self._counters, "decoded_fps": round(fps, 2)}

    # ----------------------------------------------------------------- reader

    def _read_loop(self) -> None:
        if self.fast:
            self._read_file_fast()
            return
        failures = 0  # consecutive failed opens / lost streams, for the backoff
        retry = False
        while not self._stop.is_set():
            if retry:
                self._counters["reconnects"] += 1
            retry = True
            try:
                container = open_stream(self.camera.url, STREAM_TIMEOUT_S)
            except StreamError as exc:
                failures += 1
                self._error(f"cannot open {self._where()}: {describe(exc.__cause__ or exc, self.camera.url)}")
                self._backoff(failures)
                continue
            try:
                got_frames, lost = self._read_stream(container)
            finally:
                container.close()
            if self._stop.is_set():
                break
            if got_frames:
                failures = 0
                if self.is_file and self.loop:
                    self._counters["loops"] += 1
                    retry = False  # starting a file over is not a reconnect
                    continue
                if self.is_file:
                    self.finished.set()
                    break
            failures += 1
            self._error(f"stream lost: {self._where()}{f': {lost}' if lost else ''}")
            self._backoff(failures)

    def _read_stream(self, container: av.container.InputContainer) -> tuple[bool, str]:
        """Decode until the stream ends or fails; return whether any frame was read, and why it ended."""
        stream = container.streams.video[0]
        codec = stream.codec_context
        intervals = KeyframeIntervals()
        mode: DecodeMode = "full"
        self._counters["decode_mode"], self._counters["keyframe_interval_s"] = mode, None
        pace_origin: tuple[float, float] | None = None  # (clock, stream seconds): files play at real time
        index = decoded = 0
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                seconds = packet_seconds(packet)
                if packet.is_keyframe:
                    intervals.keyframe(seconds)
                    self._counters["keyframe_interval_s"] = intervals.interval_s
                    wanted = choose_mode(self.camera.detect_fps, intervals.interval_s)
                    if wanted != mode:  # switch at a keyframe only: no picture misses its references
                        mode = wanted
                        codec.skip_frame = "NONKEY" if mode == "keyframes" else "DEFAULT"
                        self._counters["decode_mode"] = mode
                        log.info("camera %s: decoding %s (keyframe every %.2f s, detect %.2f fps)",
                                 self.name, "keyframes only" if mode == "keyframes" else "every frame",
                                 intervals.interval_s or 0.0, self.camera.detect_fps)
                elif mode == "keyframes" and packet.size:
                    self._counters["frames_skipped"] += 1
                    self._last_frame_at = self.clock()  # a frame arrived, skipped by choice: the camera is live
                if packet.size:
                    index += 1
                for frame in self._decode(packet):
                    # a file plays at real time, paced by presentation times: packets come in decode
                    # order (B-frames), and pacing on them would hand frames on in bursts
                    shown = frame.time
                    if self.is_file and shown is not None:
                        if pace_origin is None or shown < pace_origin[1]:
                            pace_origin = (self.clock(), shown)
                        delay = pace_origin[0] + shown - pace_origin[1] - self.clock()
                        if delay > 0 and self._stop.wait(delay):
                            return decoded > 0, ""
                    self._publish(Frame(self.name, max(0, index - 1), datetime.now(UTC), to_bgr(frame)))
                    decoded += 1
        except (av.error.FFmpegError, OSError) as exc:
            return decoded > 0, describe(exc, self.camera.url)
        return decoded > 0, ""

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        """Decode one packet; a damaged one is counted (and logged at most once a minute), not fatal."""
        try:
            return packet.decode()
        except av.error.InvalidDataError as exc:
            self._counters["decode_errors"] += 1
            now = self.clock()
            if self._decode_error_logged_at is None or now - self._decode_error_logged_at >= DECODE_ERROR_LOG_S:
                self._decode_error_logged_at = now
                log.warning("camera %s: damaged packet (%d so far): %s", self.name,
                            self._counters["decode_errors"], describe(exc, self.camera.url))
            return []

    def _publish(self, frame: Frame) -> None:
        """Put a decoded frame in the one-slot buffer, replacing (and counting) an unread older one."""
        now = self.clock()
        self._decode_times.append(now)
        self._counters["frames_decoded"] += 1
        with self._slot_lock:
            if self._slot is not None:
                self._counters["frames_dropped"] += 1
            self._slot = frame
            self._last_frame_at = now
            self._slot_lock.notify_all()

    def _read_file_fast(self) -> None:
        """As fast as possible, every picked frame handed on synchronously (no drops, deterministic)."""

        def decoded() -> None:
            self._decode_times.append(self.clock())
            self._counters["frames_decoded"] += 1

        path = file_path(self.camera.url)
        try:
            reader = FileReader(self.name, path, self.camera.detect_fps, self.start_time, decoded)
        except FileNotFoundError as exc:
            self._error(str(exc))
            self.finished.set()
            return
        try:
            for frame in reader:
                if self._stop.is_set():
                    break
                self._counters["frames_dispatched"] += 1
                self._last_frame_at = self.clock()
                self._deliver(frame)
        finally:
            reader.close()
            self.finished.set()

    def _backoff(self, failures: int) -> None:
        self._stop.wait(backoff_delay(failures, self.backoff_initial_s, self.backoff_max_s))

    # ----------------------------------------------------------------- dispatcher

    def _dispatch_loop(self) -> None:
        period = 1.0 / self.camera.detect_fps
        next_at = self.clock()
        while not self._stop.is_set():
            self._watch()
            if self.fast:
                if self.finished.is_set():
                    return
                self._stop.wait(0.1)
                continue
            wait = next_at - self.clock()
            if wait > 0:
                self._stop.wait(min(wait, 0.1))
                continue
            next_at = max(next_at + period, self.clock())
            with self._slot_lock:
                frame, self._slot = self._slot, None
            if frame is not None:
                self._counters["frames_dispatched"] += 1
                self._deliver(frame)
            elif self.finished.is_set():
                return

    def _deliver(self, frame: Frame) -> None:
        try:
            self.on_frame(frame)
        except Exception as exc:  # a bad frame or rule must not end the camera
            self._error(f"on_frame failed on frame {frame.index}: {exc!r}", exc)

    def _watch(self) -> None:
        """Online/offline bookkeeping: alert after offline_after_s without frames, close when back."""
        now = self.clock()
        last = self._last_frame_at
        silent_since = last if last is not None else self._started_at
        online = last is not None and now - last < self.camera.offline_after_s
        self._counters["online"] = online
        if not online and not self._offline_alerted and now - silent_since >= self.camera.offline_after_s:
            if self.finished.is_set():
                return  # a file that ended is not a camera that went offline
            self._offline_alerted = True
            self._alert("open", f"camera {self.name} offline: no frame for {now - silent_since:.0f} s")
        elif online and self._offline_alerted:
            self._offline_alerted = False
            self._alert("closed", f"camera {self.name} back online")

    def _alert(self, state: str, message: str) -> None:
        alert = Alert(
            rule=OFFLINE_RULE,
            subject_kind="camera",
            subject_id=self.name,
            state=state,  # type: ignore[arg-type]
            time=datetime.now(UTC),
            source="video",
            severity="warning",
            message=message,
            lon=getattr(self.camera, "lon", None),
            lat=getattr(self.camera, "lat", None),
            facts={"reconnects": self._counters["reconnects"], "last_error": self._counters["last_error"]},
        )
        log.warning("camera %s: %s", self.name, message)
        try:
            self.on_alert(alert)
        except Exception as exc:
            self._error(f"on_alert failed: {exc!r}", exc)

    # ----------------------------------------------------------------- helpers

    def _guard(self, target: Callable[[], None]) -> None:
        """Last line of defence: a bug in a thread is logged with the camera's name, never silent."""
        try:
            target()
        except Exception as exc:
            self._error(f"{threading.current_thread().name} crashed: {exc!r}", exc)
            self.finished.set()

    def _error(self, message: str, exc: BaseException | None = None) -> None:
        with self._slot_lock:  # both threads report errors
            self._counters["errors"] += 1
            self._counters["last_error"] = message
        log.warning("camera %s: %s", self.name, message, exc_info=exc)

    def _where(self) -> str:
        if not self.is_file:
            return redact(self.camera.url)
        path = file_path(self.camera.url)
        return str(path) if path.is_file() else f"{path} (no such file)"

