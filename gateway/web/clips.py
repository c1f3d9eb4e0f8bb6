"""The frames of an MJPEG AVI clip, found by reading its RIFF chunks (pure, no decoding).

Browsers play no AVI. Every frame of an MJPEG AVI is a complete JPEG, so the console serves the
clip as it is (for download and for the record) and shows it in the page as a flip-book of its
frames: each frame is a byte range of the file, served as image/jpeg without decoding or
re-encoding anything, which costs the box nothing compared with transcoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_FRAMES = 2000  # a clip with more frames is shown up to here


class ClipError(ValueError):
    """Not an MJPEG AVI the console can show."""


@dataclass(frozen=True, slots=True)
class ClipIndex:
    frames: tuple[tuple[int, int], ...]  # (offset, length) of each JPEG in the file
    fps: float


def index_mjpeg_avi(data: bytes) -> ClipIndex:
    """Where each JPEG frame lies in an AVI file's bytes; ClipError if it is not an AVI."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ClipError("not an AVI file (no RIFF/AVI header)")
    frames: list[tuple[int, int]] = []
    fps = 0.0
    # Walk chunks; descend into LIST and the RIFF-AVIX extensions OpenDML writes for long clips.
    stack = [(12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0]))]
    pos = 0
    while stack and len(frames) < MAX_FRAMES:
        pos, end = stack.pop()
        while pos + 8 <= end and len(frames) < MAX_FRAMES:
            cid = data[pos:pos + 4]
            size = struct.unpack_from("<I", data, pos + 4)[0]
            body = pos + 8
            if cid in (b"LIST", b"RIFF") and size >= 4:  # a list cut short still holds whole chunks
                stack.append((body + size + (size & 1), end))
                pos, end = body + 4, min(body + size, end)
                continue
            if body + size > end:
                break  # truncated file: keep what is complete
            if cid == b"avih" and size >= 4:
                us = struct.unpack_from("<I", data, body)[0]
                fps = 1e6 / us if us else 0.0
            elif cid[2:] in (b"dc", b"db") and size > 4 and data[body:body + 2] == b"\xff\xd8":
                frames.append((body, size))
            pos = body + size + (size & 1)  # chunks are padded to even sizes
    if not frames:
        raise ClipError("the AVI holds no JPEG frames")
    return ClipIndex(tuple(frames), fps if 0 < fps <= 120 else 2.0)
