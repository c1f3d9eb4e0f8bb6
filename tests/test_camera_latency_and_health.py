"""A camera's analysis latency reaches /metrics once frames flow through a real gateway, and a
patrolled camera's offline/online reaches the router's device-health table as typed HealthChanges."""

from __future__ import annotations

import asyncio
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import httpx
import pytest

from core.model import Alert, HealthChange
from detectors.video.backends import load_detector
from detectors.video.config import DetectorConfig
from gateway.deployment import load_deployment
from gateway.health import DeviceHealth
from gateway.patrol.config import PatrolConfig
from gateway.patrol.inventory import PatrolCamera
from gateway.patrol.scheduler import OFFLINE_RULE, PatrolScheduler
from gateway.runtime import Gateway
from tests.camera_server import CameraFleet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolov8n_int8.onnx"
TOKEN = "latency-token-zzzzzzzzzzzzzz"


def histogram(text: str, camera: str) -> tuple[float, float]:
    """(count, +Inf bucket) of citygate_inference_seconds for `camera` in an exposition."""
    values = {}
    for line in text.splitlines():
        if line.startswith(f'citygate_inference_seconds_count{{camera="{camera}"}}'):
            values["count"] = float(line.rsplit(" ", 1)[1])
        if line.startswith(f'citygate_inference_seconds_bucket{{camera="{camera}",le="+Inf"}}'):
            values["inf"] = float(line.rsplit(" ", 1)[1])
    return values.get("count", 0.0), values.get("inf", 0.0)


async def test_inference_latency_histogram_shows_on_metrics_after_frames_flow(tmp_path):
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent(f"""
        site: latency
        data_dir: data
        web: {{host: 127.0.0.1, port: 0, tokens: [{{name: prom, role: viewer, token: {TOKEN}}}]}}
        video:
          detector: {{backend: onnxruntime, model: {MODEL}, threads: 1}}
          cameras:
            - name: cam-lat
              url: {CLIP}
              realtime: true
              detect_fps: 4
              zones: [{{name: all, polygon: [[0, 0], [480, 0], [480, 360], [0, 360]]}}]
              rules: [{{name: crowd, kind: count, zone: all, classes: [person], min_count: 50, min_seconds: 60}}]
        """), encoding="utf-8")
    gateway = Gateway(load_deployment(config))
    await gateway.start()
    try:
        port = gateway.component("web").port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            count = 0.0
            async with asyncio.timeout(60):
                while count < 3:
                    await asyncio.sleep(0.3)
                    text = (await c.get("/metrics")).text
                    count, inf = histogram(text, "cam-lat")
            assert inf == count  # every analysed frame falls in some bucket
            assert 'citygate_inference_seconds_bucket{camera="cam-lat",le="0.01"}' in text
        stats = gateway.component("camera:cam-lat").stats()
    finally:
        assert await gateway.shutdown()
    latency = stats["analysis_latency"]
    assert latency["count"] >= 3 and latency["sum"] > 0
    assert latency["count"] <= stats["inferences"] + stats["skipped_by_motion"] + 1


def test_patrolled_camera_offline_and_back_reaches_device_health(tmp_path):
    """A camera answers 401 (a changed password) for two visits, then pictures again: the scheduler
    raises and closes its camera_offline alert and hands offline, then online, to DeviceHealth."""
    cap = cv2.VideoCapture(str(CLIP), cv2.CAP_FFMPEG)
    ok, image = cap.read()
    cap.release()
    assert ok
    picture = cv2.imencode(".jpg", image)[1].tobytes()
    fleet = CameraFleet([picture], {"cam-p": "deny"})
    detector = load_detector(DetectorConfig(backend="onnxruntime", model=str(MODEL)), MODEL)
    patrol_config = PatrolConfig.model_validate({
        "inventory": "unused.csv",
        "presets": {"street": {"zones": [{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                               "rules": []}},
        "groups": {"g": {"interval_s": 60}},
        "timeout_s": 0.5, "connect_timeout_s": 0.5, "offline_after": 2, "inference_workers": 1})
    m0 = time.monotonic()

    def clock() -> float:  # 60x the wall: a visit a second
        return datetime(2026, 11, 23, 1, 0, tzinfo=UTC).timestamp() + (time.monotonic() - m0) * 60

    alerts: list[Alert] = []
    changes: list[HealthChange] = []
    published: list[tuple[str, str, dict]] = []
    health = DeviceHealth(lambda kind, device, state: published.append((kind, device, state)))

    def on_health(change: HealthChange) -> None:
        changes.append(change)
        health.change(change)

    async def main() -> None:
        await fleet.start()
        cams = [PatrolCamera(id="cam-p", name="cam-p", url=fleet.url("cam-p"), group="g", preset="street")]
        patrol = PatrolScheduler(cams, patrol_config, detector, alerts.append, clock=clock, health=on_health)
        stop = asyncio.Event()
        task = asyncio.create_task(patrol.run(stop))
        try:
            async with asyncio.timeout(30):
                while not any(a.rule == OFFLINE_RULE for a in alerts):
                    await asyncio.sleep(0.1)
                assert health.snapshot() == {"online": 0, "offline": 1}
                fleet.behaviour["cam-p"] = "ok"  # the password is back
                while not any(c.online for c in changes):
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await fleet.stop()

    asyncio.run(main())
    assert [(c.kind, c.device, c.online) for c in changes] == [("camera", "cam-p", False), ("camera", "cam-p", True)]
    assert [(a.subject_id, a.state) for a in alerts if a.rule == OFFLINE_RULE] == [("cam-p", "open"), ("cam-p", "closed")]
    assert [(kind, device, state["online"]) for kind, device, state in published] == [
        ("camera", "cam-p", False), ("camera", "cam-p", True)]
    assert health.snapshot() == {"online": 1, "offline": 0}
