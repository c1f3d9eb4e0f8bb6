"""Cameras over real RTSP: a GStreamer RTSP server on loopback serves H.264 clips.

The continuous source reads it in full or keyframe-only decoding, survives the server going away
mid-stream (reconnects, `camera_offline` opens) and recovers when it returns (the alert closes,
frames flow again); `grab_keyframe` takes one picture per connection and hangs up. No timing
assertions: every wait is for a condition, with a generous timeout.
"""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from clips import CARPARK, h264_clip, source_frames
from services import RtspServer, rtsp_server
from test_camera_source import Collector, closed_port, source, wait_for

from detectors.video.config import CameraConfig
from gateway.sources.keyframe import grab_keyframe
from gateway.sources.stream import StreamError

FPS = 25
SECRET = "admin:s3cret-pw"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """The car-park clip with a keyframe every second (GOP 25) and every two seconds (GOP 50),
    a minute long each so no test reaches the end of a stream."""
    tmp = tmp_path_factory.mktemp("rtsp-clips")
    return {
        "/gop25": h264_clip(tmp / "gop25.mp4", gop=25, repeats=10),
        "/gop50": h264_clip(tmp / "gop50.mp4", gop=50, repeats=10),
    }


@pytest.fixture(scope="module")
def rtsp(served) -> RtspServer:
    with rtsp_server(served) as server:
        yield server


def established(port: int) -> int:
    """TCP connections to `port` in state ESTABLISHED on this host (both ends seen from /proc)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                    count += 1
    return count


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_camera_picks_keyframe_only_decoding_when_detect_fps_is_at_or_below_keyframe_rate(rtsp):
    """Four cameras on one server at once: two whose detect rate keyframes can serve, two that
    need every frame (detect rate above the keyframe rate, or keyframes too sparse)."""
    cases = {  # name: (mount, detect_fps, expected mode)
        "gop1s-at-1fps": ("/gop25", 1.0, "keyframes"),
        "gop1s-at-0.5fps": ("/gop25", 0.5, "keyframes"),
        "gop1s-at-2fps": ("/gop25", 2.0, "full"),
        "gop2s-at-1fps": ("/gop50", 1.0, "full"),
    }
    sinks = {name: Collector() for name in cases}
    sources = {
        name: source(CameraConfig(name=name, url=rtsp.url(mount), detect_fps=fps), sinks[name])
        for name, (mount, fps, _) in cases.items()
    }
    for src in sources.values():
        src.start()
    try:
        for name, (mount, _, mode) in cases.items():
            src, sink = sources[name], sinks[name]
            wait_for(lambda src=src: src.stats()["keyframe_interval_s"] is not None, what=f"{name}: GOP measured")
            wait_for(lambda sink=sink: len(sink.frames) >= 3, what=f"{name}: 3 frames handed on")
            stats = src.stats()
            assert stats["decode_mode"] == mode, name
            assert stats["keyframe_interval_s"] == pytest.approx(1.0 if mount == "/gop25" else 2.0), name
            assert sink.frames[-1].size == (640, 360) and sink.frames[-1].image.dtype == np.uint8
    finally:
        for src in sources.values():
            src.stop()
    for name, (mount, _, mode) in cases.items():
        stats, frames = sources[name].stats(), sinks[name].frames
        gop = 25 if mount == "/gop25" else 50
        if mode == "keyframes":
            # the decoder skipped the frames between keyframes; pictures handed on are keyframes
            assert stats["frames_skipped"] > stats["frames_decoded"] > 0, name
            assert [f.index % gop for f in frames[1:]] == [0] * (len(frames) - 1), name
        else:
            assert stats["frames_skipped"] == 0 and stats["frames_decoded"] > 2 * gop, name
        assert stats["errors"] == 0 and stats["decode_errors"] == 0, name
        assert sinks[name].alerts == []


def test_server_stopped_mid_stream_reconnects_alerts_offline_and_recovers(rtsp):
    """In keyframe-only decoding (1 detect-fps, a keyframe every second), which the new stream
    after the outage measures and picks again."""
    sink = Collector()
    cam = CameraConfig(name="gate-3", url=rtsp.url("/gop25", SECRET), detect_fps=1.0, offline_after_s=3.0)
    src = source(cam, sink)
    src.start()
    try:
        wait_for(lambda: src.stats()["decode_mode"] == "keyframes", what="keyframe-only decoding")
        wait_for(lambda: len(sink.frames) >= 3, what="frames over RTSP")
        assert src.stats()["online"] is True and sink.alerts == []

        rtsp.stop()  # mid-stream: the minute-long clip is far from its end
        wait_for(lambda: sink.offline("open"), what="camera_offline alert")
        wait_for(lambda: src.stats()["reconnects"] >= 3, what="reconnect attempts")
        stats = src.stats()
        assert stats["online"] is False and "cannot open" in stats["last_error"]
        assert "s3cret" not in stats["last_error"] and "admin:***@127.0.0.1" in stats["last_error"]
        assert len(sink.offline("open")) == 1  # one alert per outage, not one per attempt
        alert = sink.offline("open")[0]
        assert (alert.subject_kind, alert.subject_id, alert.source) == ("camera", "gate-3", "video")
        assert alert.facts["reconnects"] >= 1 and "s3cret" not in alert.facts["last_error"]

        rtsp.start()  # back on the same port
        wait_for(lambda: sink.offline("closed"), what="camera back online")
        assert sink.offline("closed")[0].key == alert.key
        seen = len(sink.frames)
        wait_for(lambda: len(sink.frames) >= seen + 3, what="frames after the server returned")
        wait_for(lambda: src.stats()["decode_mode"] == "keyframes", what="keyframe-only decoding again")
        assert src.stats()["online"] is True and len(sink.offline("open")) == 1
    finally:
        if rtsp.proc is None or rtsp.proc.poll() is not None:
            rtsp.start()  # leave the module's server running for the other tests
        src.stop()
    assert not src.running


def test_grab_keyframe_takes_one_picture_and_hangs_up(rtsp, served):
    first = source_frames(served["/gop25"])[0]  # what the server sends first: the clip's first keyframe
    for _ in range(3):  # one connection per visit, each one closed
        image = grab_keyframe(rtsp.url("/gop25", SECRET), timeout_s=10)
        assert image.shape == (360, 640, 3) and image.dtype == np.uint8
        assert mean_diff(image, first) < 3.0
        wait_for(lambda: established(rtsp.port) == 0, what="the RTSP connection closed")


def test_grab_keyframe_from_a_file_and_over_http(tmp_path):
    first = source_frames(CARPARK)[0]
    assert mean_diff(grab_keyframe(str(CARPARK), timeout_s=5), first) < 1.0
    assert mean_diff(grab_keyframe(f"file://{CARPARK}", timeout_s=5), first) < 1.0

    # an MPEG-TS stream over HTTP, as video platforms serve live cameras (stream copy, no re-encode)
    ts = tmp_path / "live.ts"
    with av.open(str(CARPARK)) as src, av.open(str(ts), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = out
                dst.mux(packet)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            image = grab_keyframe(f"http://127.0.0.1:{httpd.server_address[1]}/live.ts", timeout_s=10)
        finally:
            httpd.shutdown()
    assert mean_diff(image, first) < 1.0


def test_grab_keyframe_errors_name_the_url_without_its_password(tmp_path):
    with pytest.raises(StreamError, match=r"admin:\*\*\*@127\.0\.0\.1") as refused:
        grab_keyframe(f"rtsp://{SECRET}@127.0.0.1:{closed_port()}/live", timeout_s=2)
    assert "s3cret" not in str(refused.value)

    # a server that accepts the connection and never answers: bounded by the timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(StreamError, match=f"127.0.0.1:{port}"):
            grab_keyframe(f"rtsp://127.0.0.1:{port}/live", timeout_s=1)

    with pytest.raises(StreamError, match="nope.mp4"):
        grab_keyframe(str(tmp_path / "nope.mp4"), timeout_s=1)
    with pytest.raises(ValueError, match="timeout_s"):
        grab_keyframe(str(CARPARK), timeout_s=0)
