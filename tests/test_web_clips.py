"""The MJPEG AVI frame index: every frame OpenCV wrote is found, and damaged input fails cleanly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.video.evidence import ClipBuffer
from gateway.web.clips import ClipError, index_mjpeg_avi


def avi(frames: int, fps: float = 4.0) -> bytes:
    clip = ClipBuffer(60.0)
    for i in range(frames):
        clip.add(i / fps, np.full((48, 64, 3), (i * 37) % 256, np.uint8))
    return clip.to_avi()


@pytest.mark.parametrize("frames", [2, 7, 40])
def test_every_frame_is_a_whole_jpeg(frames):
    data = avi(frames)
    index = index_mjpeg_avi(data)
    assert len(index.frames) == frames and index.fps == pytest.approx(4.0, rel=0.05)
    for offset, length in index.frames:
        assert data[offset:offset + 2] == b"\xff\xd8" and data[offset + length - 2:offset + length] == b"\xff\xd9"


def test_a_truncated_clip_keeps_its_complete_frames():
    data = avi(10)
    index = index_mjpeg_avi(data)
    cut = index.frames[6][0] + 10  # inside frame 7
    assert len(index_mjpeg_avi(data[:cut]).frames) == 6


@pytest.mark.parametrize("data", [b"", b"RIFF", b"RIFF\x04\x00\x00\x00WAVE", b"RIFF\xff\xff\xff\xffAVI "])
def test_not_an_mjpeg_avi_is_a_clip_error(data):
    with pytest.raises(ClipError):
        index_mjpeg_avi(data)


CLIP = avi(5)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(CLIP) - 1), st.binary(min_size=1, max_size=8))
def test_damaged_clips_never_crash_the_index(position, garbage):
    damaged = CLIP[:position] + garbage + CLIP[position + len(garbage):]
    try:
        index = index_mjpeg_avi(damaged)
    except ClipError:
        return
    for offset, length in index.frames:
        assert offset >= 0 and offset + length <= len(damaged)
