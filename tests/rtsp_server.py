"""A real RTSP server for the tests: GStreamer's gst-rtsp-server serving H.264 MP4 files.

    /usr/bin/python3 tests/rtsp_server.py PORT MOUNT=FILE [MOUNT=FILE ...]

Runs under Debian's Python, which has the GObject bindings (python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good/-bad; scripts/test.sh installs them); the project's own interpreter need
not have them. Each client gets its own pipeline that plays the file from its start at real time
(RTP over TCP or UDP, as the client asks), the H.264 passed through without re-encoding, with
SPS/PPS repeated before every keyframe so a client can start at any keyframe. Stops on SIGTERM.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(argv[0])
    mounts = server.get_mount_points()
    for spec in argv[1:]:
        mount, _, path = spec.partition("=")
        factory = GstRtspServer.RTSPMediaFactory()
        location = path.replace("\\", "\\\\").replace('"', '\\"')
        factory.set_launch(
            f'( filesrc location="{location}" ! qtdemux ! h264parse '
            "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        factory.set_shared(False)
        mounts.add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{argv[0]}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
