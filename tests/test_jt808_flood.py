"""1,100 idle connections against a gateway process whose open-file limit is 1,024: terminals that
authenticated keep reporting, a terminal arriving during the flood gets in, the status page keeps
answering, and the log stays small (no traceback per refused socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jt808_client as ref
from jt808_client import Client
from services import free_port

REPO = Path(__file__).resolve().parent.parent
FLEET = [f"0139000000{i:02d}" for i in range(6)]
NOFILE = 1024
IDLE = 1100


def _limit_files() -> None:  # runs in the child before exec
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


TOKEN = "flood-test-token-0123456789"

def write_config(tmp_path: Path, jt_port: int, web_port: int) -> Path:
    vehicles = "\n".join(f'          - {{id: truck-{i}, type: muck_truck, terminal: "{t}"}}' for i, t in enumerate(FLEET))
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent("""
        site: flood
        data_dir: data
        web: {{enabled: true, host: 127.0.0.1, port: {web}, tokens: [{{name: ops, role: viewer, token: {token}}}]}}
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: {jt}, accept_unknown: false, auth_timeout_s: 120}}
          fleet:
            vehicles:
        """).format(web=web_port, jt=jt_port, token=TOKEN) + vehicles + "\n", encoding="utf-8")
    return config


def wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened:\n{log.read_text()}")


def code_of(reply: bytes) -> bytes:
    raw = reply[1:-1].replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
    assert raw[12 + 2] == 0, "registered"
    return raw[12 + 3 : -1]


class Terminal:
    def __init__(self, phone: str, client: Client) -> None:
        self.phone, self.client, self.serial, self.k = phone, client, 0, 0

    @classmethod
    async def join(cls, port: int, phone: str) -> Terminal:
        t = cls(phone, await Client.connect(port))
        await t.client.send(ref.frame(0x0100, phone, 1, ref.register_body(11, 1, "CG", "M1", "T1", 1, "A")))
        code = code_of(await t.client.reply(timeout=30))
        await t.client.send(ref.frame(0x0102, phone, 2, code))
        assert (await t.client.reply(timeout=30))[-3] == 0, "authenticated"  # the result byte of 0x8001
        return t

    async def report(self) -> int:
        """One location; returns the result of the platform's 0x8001 answer."""
        self.k += 1
        when = datetime.now(UTC) - timedelta(seconds=60 - self.k)
        await self.client.send(ref.frame(0x0200, self.phone, 10 + self.k,
                                         ref.location_body(39.9 + self.k * 1e-4, 116.4, when, speed_tenths=200)))
        reply = await self.client.reply(timeout=30)
        raw = reply[1:-1].replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
        return raw[-2]


async def flood(jt_port: int, web_port: int) -> dict:
    good = [await Terminal.join(jt_port, phone) for phone in FLEET[:5]]
    assert [await t.report() for t in good] == [0] * 5
    idle: list[asyncio.StreamWriter] = []
    for n in range(IDLE):  # from 11 source addresses, 100 each: under the per-address cap
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", jt_port, local_addr=(f"127.0.0.{2 + n // 100}", 0))
            idle.append(writer)
    try:
        assert len(idle) == IDLE
        await asyncio.sleep(1.5)  # let the gateway take in (and push out) what it can
        results = [await t.report() for _ in range(5) for t in good]
        late = await Terminal.join(jt_port, FLEET[5])  # arrives during the flood
        results.append(await late.report())
        request = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/status",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        status = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(request, timeout=30).read()))
    finally:
        for writer in idle:
            writer.transport.abort()
        for t in good:
            await t.client.close()
    return {"results": results, "status": status}


def test_idle_connection_flood_under_the_open_file_limit(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * IDLE:  # this process holds the flood's client ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * IDLE if hard == resource.RLIM_INFINITY else min(hard, 2 * IDLE), hard))
    jt_port, web_port = free_port(), free_port()
    config = write_config(tmp_path, jt_port, web_port)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(config)], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limit_files)
    try:
        wait_for_port(jt_port, proc, log)
        wait_for_port(web_port, proc, log)
        outcome = asyncio.run(flood(jt_port, web_port))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert outcome["results"] == [0] * 26  # every report of an authenticated terminal acknowledged
    jt = outcome["status"]["jt808"]
    assert jt["max_connections"] <= NOFILE - 64
    assert jt["evicted_unauthenticated"] + jt["refused_connections"] >= IDLE + 6 - jt["max_connections"]
    assert outcome["status"]["rules"]["positions"] >= 26
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text
    assert len(text) < 20_000, text[-3000:]
