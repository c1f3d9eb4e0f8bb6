"""Opening video streams with PyAV (FFmpeg), and choosing how much of them to decode.

Shared by the continuous camera source and the keyframe grab: one way to open an RTSP, HTTP or
file stream with bounded timeouts, one way to describe a failure without leaking a password, and
the decode-mode rule (`choose_mode`): when the analysis wants at most one picture per keyframe
interval, only keyframes are decoded (FFmpeg's `skip_frame = NONKEY`); every other packet is
still read from the network but skipped by the decoder at almost no cost. An H.264 keyframe
interval (GOP) of 1-2 s is what IP cameras send by default, and patrol or dwell rules rarely need
more than one picture per second, so a camera then costs a keyframe decode per GOP instead of
25 decodes a second.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Literal

import av
import av.error
import numpy as np

DecodeMode = Literal["full", "keyframes"]
GOP_HISTORY = 3  # keyframe intervals remembered; the longest decides, so one short GOP cannot mislead
# A GOP measured from timestamps may read a hair longer than nominal (90 kHz clock rounding).
GOP_TOLERANCE = 1e-3


class StreamError(Exception):
    """A stream could not be opened or read; the message names the (redacted) URL and the cause."""


def redact(url: str) -> str:
    """Hide the password in rtsp://user:pass@host/... before it reaches a log."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        creds, host = rest.split("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def is_file_url(url: str) -> bool:
    """A path or file:// URL (read from disk) rather than a network stream."""
    return "://" not in url or url.startswith("file://")


def file_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def describe(exc: BaseException, url: str) -> str:
    """The error as one line, with the URL's password hidden (FFmpeg errors quote the URL)."""
    text = str(exc) or type(exc).__name__
    if url and url in text:
        text = text.replace(url, redact(url))
    return text


def open_stream(url: str, timeout_s: float) -> av.container.InputContainer:
    """Open a stream that has a video track, bounding the open and every read by `timeout_s`.

    RTSP goes over TCP: UDP loses packets on busy networks and smears the picture. Raises
    StreamError naming the redacted URL.
    """
    target = str(file_path(url)) if is_file_url(url) else url
    options = {"rtsp_transport": "tcp"} if url.startswith(("rtsp://", "rtsps://")) else {}
    try:
        container = av.open(target, options=options, timeout=(timeout_s, timeout_s))
    except (av.error.FFmpegError, OSError) as exc:
        raise StreamError(f"cannot open {redact(url)}: {describe(exc, url)}") from exc
    if not container.streams.video:
        container.close()
        raise StreamError(f"cannot open {redact(url)}: no video track")
    return container


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """A decoded picture as the BGR array OpenCV and the detectors use."""
    return frame.to_ndarray(format="bgr24")


def packet_seconds(packet: av.Packet) -> float | None:
    """The packet's presentation time in seconds (decode time when the stream gives no pts)."""
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or packet.time_base is None:
        return None
    return float(ts * packet.time_base)


def choose_mode(detect_fps: float, keyframe_interval_s: float | None) -> DecodeMode:
    """Keyframes only when they come at least as often as the analysis takes pictures.

    Unknown interval (fewer than two keyframes seen yet): decode everything.
    """
    if keyframe_interval_s is None or keyframe_interval_s <= 0:
        return "full"
    return "keyframes" if keyframe_interval_s * detect_fps <= 1.0 + GOP_TOLERANCE else "full"


class KeyframeIntervals:
    """Measures a stream's keyframe interval from the times of its keyframe packets.

    Keyframe packets that repeat the previous keyframe's time (a multi-slice picture sent as
    several packets) or carry no time are not new keyframes.
    """

    def __init__(self) -> None:
        self._last: float | None = None
        self._intervals: deque[float] = deque(maxlen=GOP_HISTORY)

    def keyframe(self, seconds: float | None) -> None:
        if seconds is None or seconds == self._last:
            return
        if self._last is not None and seconds > self._last:
            self._intervals.append(seconds - self._last)
        self._last = seconds  # also when time went back (a file looped, a camera restarted)

    @property
    def interval_s(self) -> float | None:
        """The longest recent keyframe interval, or None before two keyframes were seen."""
        return max(self._intervals) if self._intervals else None
