"""The whole gateway as a process: a JT/T 808 terminal over real TCP drives a muck truck into a
forbidden zone → a case reaches the central platform (local receiver) with its evidence, the
alert reaches a real Mosquitto subscriber, positions reach VictoriaMetrics, and SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from central_receiver import CentralReceiver
from jt808_client import Client, frame, location_body, register_body
from services import free_port

REPO = Path(__file__).resolve().parent.parent
CST = timezone(timedelta(hours=8))
TERMINAL = "013912340001"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def receiver():
    with CentralReceiver() as rx:
        yield rx


def write_config(tmp_path: Path, *, central_url: str, broker_port: int, vm_url: str, jt_port: int) -> Path:
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent(f"""
        site: e2e
        data_dir: data
        central: {{url: "{central_url}", token: "${{E2E_TOKEN}}", backoff_initial_s: 0.2, poll_s: 0.5}}
        mqtt: {{host: 127.0.0.1, port: {broker_port}}}
        timeseries: {{backend: influxdb, url: "{vm_url}", flush_interval_ms: 200}}
        web: {{enabled: false}}
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: {jt_port}, accept_unknown: false}}
          fleet:
            vehicles:
              - {{id: muck-01, plate: 京A·D1001, type: muck_truck, company: 渣土运输, terminal: "{TERMINAL}"}}
            zones:
              - {{id: centre, name: 核心区, applies_to: [muck_truck], windows: ["00:00-24:00"],
                 polygon: [[116.395, 39.905], [116.410, 39.905], [116.410, 39.920], [116.395, 39.920]]}}
        """), encoding="utf-8")
    return config


async def drive_terminal(port: int) -> None:
    client = await Client.connect(port)
    try:
        await client.send(frame(0x0100, TERMINAL, 1, register_body(11, 1, "CG", "M1", "T000001", 1, "京A·D1001")))
        reply = await client.reply()
        assert reply[1:3] == b"\x81\x00", "register answered with 0x8100"
        raw = reply[1:-1].replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
        body = raw[12:-1]
        assert body[2] == 0, "registered terminal accepted"
        code = body[3:]
        await client.send(frame(0x0102, TERMINAL, 2, code))
        auth = await client.reply()
        assert auth[1:3] == b"\x80\x01"
        now = datetime.now(CST).replace(microsecond=0)
        track = [(39.9115, 116.4120, -60), (39.9115, 116.4105, -30), (39.9115, 116.4090, 0)]  # 15 km/h, into the zone
        for serial, (lat, lon, dt) in enumerate(track, start=3):
            await client.send(frame(0x0200, TERMINAL, serial,
                                    location_body(lat, lon, now + timedelta(seconds=dt), speed_tenths=150)))
            await client.reply()
    finally:
        await client.close()


@pytest.mark.slow
def test_terminal_to_case_alert_and_time_series(tmp_path, receiver, broker, vm):
    jt_port = free_port()
    config = write_config(tmp_path, central_url=receiver.url, broker_port=broker.port, vm_url=vm.url, jt_port=jt_port)
    alerts: list[tuple[str, dict]] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: alerts.append((m.topic, json.loads(m.payload)))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe([("citygate/e2e/alerts/#", 1), ("citygate/e2e/health/#", 1)])
    sub.loop_start()
    env = dict(os.environ, E2E_TOKEN="tok-123")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: port_open(jt_port) or proc.poll() is not None, 60, "the JT/T 808 port")
        assert proc.poll() is None, proc.stdout.read()
        asyncio.run(drive_terminal(jt_port))

        request = wait_for(lambda: next((r for r in receiver.requests() if r.case and r.status < 300), None),
                           30, "a case at the central platform")
        case = request.case
        assert case["rule"] == "forbidden_zone"
        assert case["category"]["name"] == "渣土车违规驶入禁行区"
        assert case["subject"]["id"] == "muck-01"
        assert request.headers["idempotency-key"] == case["case_id"]
        assert request.headers["authorization"] == "Bearer tok-123"
        evidence_parts = [p for name, p in request.parts.items() if name.startswith("evidence")]
        assert {p.content_type for p in evidence_parts} >= {"image/png"}

        topic, payload = wait_for(lambda: next((a for a in alerts if a[1].get("rule") == "forbidden_zone"), None),
                                  15, "the alert on MQTT")
        assert topic == "citygate/e2e/alerts/warning/forbidden_zone"
        assert payload["case_id"] == case["case_id"]
        assert payload["state"] == "open" and payload["subject"] == {"kind": "vehicle", "id": "muck-01"}
        _, health = wait_for(lambda: next((a for a in alerts if a[0] == "citygate/e2e/health/vehicle/muck-01"), None),
                             15, "the vehicle's health state on MQTT")
        assert health["online"] is True

        series = wait_for(lambda: vm.export('{__name__="vehicle_position_lat", vehicle="muck-01"}'), 15,
                          "positions in VictoriaMetrics")
        assert series[0]["metric"]["type"] == "muck_truck"
        assert any(abs(v - 39.9115) < 1e-6 for v in series[0]["values"])
    finally:
        sub.loop_stop()
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out
    assert "stopped" in out


def test_missing_model_is_a_clear_error_at_start_up(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    config = tmp_path / "site.yaml"
    config.write_text("data_dir: data\nweb: {enabled: false}\nvideo:\n  detector: {model: missing.onnx}\n"
                      "  cameras:\n    - {name: cam-1, url: clip.mp4}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "run", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "video.detector.model: model file" in result.stderr and "missing.onnx" in result.stderr


@pytest.mark.slow
def test_kill_9_while_the_central_platform_is_down_loses_no_case(tmp_path, receiver):
    """Cases filed while the platform answers 503 survive a kill -9 of the gateway and are delivered
    by the restarted gateway once the platform is back."""
    from gateway.outbox import Outbox

    tracks = REPO / "configs" / "data" / "tracks"
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent(f"""
        site: power-cut
        data_dir: data
        web: {{enabled: false}}
        central: {{url: "{receiver.url}", backoff_initial_s: 0.2, backoff_max_s: 0.5, poll_s: 0.2}}
        vehicles:
          fleet:
            vehicles:
              - {{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50}}
          replay:
            - {{file: {tracks / "mixer-01.csv"}, speed: 0}}
            - {{file: {tracks / "unknown-truck.csv"}, speed: 0}}
        """), encoding="utf-8")
    receiver.set_status(503, b"maintenance")
    store = tmp_path / "data" / "cases.sqlite3"

    def pending_ids() -> list[str]:
        if not store.exists():
            return []
        with Outbox(store) as outbox:
            return [r.case_id for r in outbox.list(status="pending")]

    cmd = [sys.executable, "-m", "gateway.cli", "run", str(config)]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        filed = wait_for(lambda: (ids := pending_ids()) and len(ids) >= 2 and ids, 60, "two pending cases")
        wait_for(lambda: len(receiver.requests()) >= 2, 30, "delivery attempts refused with 503")
    finally:
        first.kill()  # kill -9: no shutdown, no flush
        first.wait(10)
    assert receiver.accepted_ids() == []

    receiver.set_status(200)
    second = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: set(filed) <= set(receiver.accepted_ids()), 60, "every case filed before the kill")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
