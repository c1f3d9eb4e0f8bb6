"""Real services on loopback for the tests: Mosquitto and VictoriaMetrics (InfluxDB write API).

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
def mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\n"  # as docker/mosquitto.conf recommends for gateways
        f"log_dest stderr\nlog_type error\n"
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
         "-retentionPeriod=100y", "-search.disableCache", "-loggerLevel=ERROR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "victoria-metrics")
        yield VictoriaMetrics(port, proc)
    finally:
        proc.terminate()
        proc.wait(20)
