"""One picture from a stream: connect, decode the first keyframe, hang up.

What a patrol visit does with an RTSP camera (or an HTTP stream or a file): no stream is held
between visits, and only the keyframe is decoded, since every other packet is skipped by the
decoder (FFmpeg `skip_frame = NONKEY`). Blocking: run it in a worker thread.
"""

from __future__ import annotations

import time

import av.error
import numpy as np

from gateway.sources.stream import StreamError, describe, open_stream, redact, to_bgr


def grab_keyframe(url: str, timeout_s: float = 10.0) -> np.ndarray:
    """The first keyframe of the stream at `url` as a BGR image; the connection is closed after.

    Opening and each read are bounded by `timeout_s`, and no packet is read once `timeout_s` has
    passed since the call, so a silent server costs at most about twice `timeout_s` and a server
    that streams without a keyframe about `timeout_s`. Raises StreamError (URL password hidden)
    on a refused, unauthorised, silent or keyframe-less stream.
    """
    if timeout_s <= 0:
        raise ValueError(f"grab_keyframe: timeout_s must be > 0, got {timeout_s}")
    deadline = time.monotonic() + timeout_s
    container = open_stream(url, timeout_s)
    try:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        damaged = 0
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise StreamError(f"no keyframe from {redact(url)} within {timeout_s:g} s")
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                damaged += 1  # a damaged keyframe: the next one may be whole
                continue
            for frame in frames:
                return to_bgr(frame)
        more = f" ({damaged} damaged keyframe packets)" if damaged else ""
        raise StreamError(f"{redact(url)} ended before a keyframe{more}")
    except (av.error.FFmpegError, OSError) as exc:
        raise StreamError(f"reading {redact(url)}: {describe(exc, url)}") from exc
    finally:
        container.close()
