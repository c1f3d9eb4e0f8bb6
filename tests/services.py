"""Real services on loopback for the tests: Mosquitto, VictoriaMetrics (InfluxDB write API) and
an RTSP server (GStreamer's gst-rtsp-server, run by tests/rtsp_server.py under Debian's Python).

Each is started on a free port in a temporary directory and stopped at the end of the session.
The binaries come from Debian packages that scripts/test.sh installs.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def _find(binary: str) -> str:
    for candidate in (shutil.which(binary), f"/usr/sbin/{binary}", f"/usr/bin/{binary}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(f"{binary} is not installed: run scripts/test.sh, which installs it")


@dataclass
class Mosquitto:
    port: int
    proc: subprocess.Popen
    config: Path

    def restart(self) -> None:
        """Stop and start the broker on the same port (for reconnect tests)."""
        self.stop()
        self.proc = subprocess.Popen([_find("mosquitto"), "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.proc, "mosquitto")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextlib.contextmanager
def mosquitto(workdir: Path, *, max_inflight_messages: int | None = None) -> Iterator[Mosquitto]:
    """`max_inflight_messages`: Mosquitto's in-flight window per client (its default is 20; 0 = no limit)."""
    port = free_port()
    config = workdir / "mosquitto.conf"
    inflight = f"max_inflight_messages {max_inflight_messages}\n" if max_inflight_messages is not None else ""
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nmax_queued_bytes 536870912\n"  # as docker/mosquitto.conf
        f"{inflight}log_dest stderr\nlog_type error\n"
    )
    proc = subprocess.Popen([_find("mosquitto"), "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = Mosquitto(port, proc, config)
    try:
        _wait_for_port(port, proc, "mosquitto")
        yield broker
    finally:
        broker.stop()


@dataclass
class VictoriaMetrics:
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def flush(self) -> None:
        """Make recent writes visible to queries (VictoriaMetrics buffers them for ~1 s otherwise)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5).read()

    def export(self, match: str) -> list[dict]:
        """All raw samples of the series matching a selector, as JSON lines from /api/v1/export."""
        import json
        from urllib.parse import quote

        self.flush()
        with urllib.request.urlopen(f"{self.url}/api/v1/export?match[]={quote(match)}", timeout=10) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]


@contextlib.contextmanager
def victoria_metrics(workdir: Path) -> Iterator[VictoriaMetrics]:
    port = free_port()
    data = workdir / "vmdata"
    proc = subprocess.Popen(
        [_find("victoria-metrics"), f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}",
         "-retentionPeriod=100y", "-search.disableCache", "-loggerLevel=ERROR",
         "-dedup.minScrapeInterval=1ms"],  # as docker/compose.yaml: a redelivered point is kept once
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "victoria-metrics")
        yield VictoriaMetrics(port, proc)
    finally:
        proc.terminate()
        proc.wait(20)


DEBIAN_PYTHON = "/usr/bin/python3"  # has python3-gi; the project's interpreter need not
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


@dataclass
class RtspServer:
    """gst-rtsp-server on loopback: `url(mount)` plays that mount's file from its start at real time."""

    port: int
    mounts: dict[str, Path]
    proc: subprocess.Popen | None = None

    def url(self, mount: str, credentials: str = "") -> str:
        return f"rtsp://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}{mount}"

    def start(self) -> None:
        args = [f"{mount}={path}" for mount, path in self.mounts.items()]
        self.proc = subprocess.Popen([DEBIAN_PYTHON, str(RTSP_SERVER_SCRIPT), str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.proc, "rtsp_server.py")

    def stop(self) -> None:
        """Stop the server: its clients' connections close mid-stream."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def check_rtsp_server() -> None:
    """Raise a clear error when gst-rtsp-server or its Python bindings are missing."""
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); gi.require_version('Gst', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in ('qtdemux', 'h264parse', 'rtph264pay'))")
    if not Path(DEBIAN_PYTHON).exists() or subprocess.run(
        [DEBIAN_PYTHON, "-c", probe], capture_output=True, timeout=30
    ).returncode != 0:
        raise RuntimeError(
            "gst-rtsp-server is not installed (python3-gi, gir1.2-gst-rtsp-server-1.0, "
            "gstreamer1.0-plugins-good/-bad): run scripts/test.sh, which installs it"
        )


@contextlib.contextmanager
def rtsp_server(mounts: dict[str, Path]) -> Iterator[RtspServer]:
    """Serve H.264 MP4 files (single-slice pictures: see tests/clips.py) at the given mount points."""
    check_rtsp_server()
    server = RtspServer(free_port(), dict(mounts))
    try:
        server.start()
        yield server
    finally:
        server.stop()
