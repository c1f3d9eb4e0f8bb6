"""H.264 clips with a chosen keyframe interval, made from the committed fixtures for stream tests.

Cameras send one slice per picture on most models; the committed fixtures were encoded with
sliced threads (two slices per picture), which FFmpeg's RTSP depacketiser hands on as two
pictures per keyframe. So the clips served over RTSP are re-encoded here with one slice per
picture, a fixed GOP (no scene-cut keyframes, no B-frames) and then repeated by stream copy to
the wanted length, which keeps the encoding to one pass over the short source.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

VIDEO = Path(__file__).parent / "fixtures" / "video"
CARPARK = VIDEO / "carpark_static_640x360_25fps.mp4"  # 150 frames, 25 fps


def source_frames(path: Path = CARPARK) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def h264_clip(out: Path, gop: int, repeats: int = 1, source: Path = CARPARK, fps: int = 25) -> Path:
    """Encode `source` with a keyframe every `gop` frames, `repeats` times over; return `out`."""
    frames = source_frames(source)
    if len(frames) % gop:
        frames = frames[: len(frames) - len(frames) % gop]  # each repeat starts on a keyframe
    once = out.with_name(out.stem + ".once.mp4")
    with av.open(str(once), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.thread_type = "FRAME"  # not SLICE: one slice per picture
        stream.options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0", "bf": "0"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    with av.open(str(once)) as src, av.open(str(out), "w") as dst:
        src_stream = src.streams.video[0]
        dst_stream = dst.add_stream_from_template(src_stream)
        packets = [p for p in src.demux(src_stream) if p.size]
        step = packets[1].pts - packets[0].pts
        span = packets[-1].pts - packets[0].pts + step
        for r in range(repeats):
            for p in packets:  # each pass after the first moves the same packets on by one span
                p.pts += span if r else 0
                p.dts += span if r else 0
                p.stream = dst_stream
                dst.mux(p)
    once.unlink()
    return out
