"""Black trucks end to end: a checkpoint camera replays a real street clip with a parked truck (PETS
2009, found by the COCO model) while the fleet's recorded muck-truck track replays into the same
gateway. A case with the snapshot and the crop when no registered muck truck is near the camera;
none when one is, even when its fix reaches the gateway well after the truck was seen."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.deployment import load_deployment
from gateway.outbox import Outbox
from gateway.runtime import Gateway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolov8n_int8.onnx"
TRACKS = REPO / "configs" / "data" / "tracks"
KERB = [[395, 25], [470, 25], [470, 80], [395, 80]]  # where the truck is parked
MUCK_FIRST_FIX = (116.418, 39.9115)  # configs/data/tracks/muck-01.csv, first row
FAR = (116.392, 39.902)  # 2.4 km from it, inside the demo grid


def site(tmp_path: Path, camera_at: tuple[float, float], track: Path, *, speed: float, window_s: float) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: bt
        data_dir: data
        web: {{enabled: false}}
        video:
          detector: {{model: {MODEL}}}
          cameras:
            - name: gate-east
              url: {CLIP}
              detect_fps: 2
              lon: {camera_at[0]}
              lat: {camera_at[1]}
              address: 东门卡口
              motion: {{enabled: false}}
              zones: [{{name: lanes, polygon: {KERB}}}]
              checkpoint: {{zone: lanes, classes: [truck], radius_m: 150, window_s: {window_s},
                           vehicle_types: [muck_truck], min_confidence: 0.3}}
        vehicles:
          tick_s: 0.5
          fleet:
            vehicles:
              - {{id: muck-01, plate: 京A·D1001, type: muck_truck, terminal: "013912340001"}}
          replay:
            - {{file: {track}, speed: {speed}}}
        """), encoding="utf-8")
    return path


async def wait_until(condition, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)


async def run_until_decided(config: Path, *, on_sighting=None) -> tuple[dict, list[dict]]:
    """Run the gateway until the rule has decided the first sighting; return its stats, the black-truck
    cases in the local case store."""
    deployment = load_deployment(config)
    gateway = Gateway(deployment)
    rule = gateway.component("rules").black_trucks
    await gateway.start()
    try:
        await wait_until(lambda: rule.stats["sightings"] >= 1, timeout=60)
        if on_sighting is not None:
            on_sighting(rule)
        await wait_until(lambda: rule.stats["accounted"] + rule.stats["suspected"] >= 1, timeout=90)
        await wait_until(lambda: gateway.bus.pending == 0, timeout=10)
        await asyncio.sleep(0.5)  # the case desk commits the last alert on the bus's task
    finally:
        assert await gateway.shutdown()
    stats = dict(rule.stats)
    with Outbox(deployment.config.data_path / "cases.sqlite3") as outbox:
        cases = [r.case for r in outbox.list() if r.case["rule"] == "black_truck"]
    return stats, cases


async def test_a_truck_with_no_registered_truck_near_the_checkpoint_is_a_case(tmp_path):
    stats, cases = await run_until_decided(
        site(tmp_path, FAR, TRACKS / "muck-01.csv", speed=1, window_s=4))
    assert stats["suspected"] >= 1 and len(cases) >= 1
    case = cases[0]
    assert case["category"]["name"] == "未登记车辆（疑似黑车）" and case["source"] == "video"
    assert case["subject"]["id"] == "gate-east" and case["subject"]["track_id"] is not None
    facts = case["facts"]
    assert facts["object"] == "truck" and facts["registered_vehicles"] == 1
    [checked] = facts["registered_nearest"]  # the muck truck reported, 2.4 km away
    assert checked["vehicle"] == "muck-01" and 2000 < checked["distance_m"] < 3000
    files = {e["name"].rsplit("-", 1)[-1]: Path(e["path"]) for e in case["evidence"]}
    assert set(files) == {"snapshot.jpg", "crop.jpg"}
    for name, path in files.items():
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None, name
    assert json.dumps(facts)  # the facts are plain JSON for the central platform


async def test_a_registered_truck_reporting_at_the_checkpoint_files_no_case(tmp_path):
    stats, cases = await run_until_decided(
        site(tmp_path, MUCK_FIRST_FIX, TRACKS / "muck-01.csv", speed=1, window_s=4))
    assert stats["accounted"] >= 1 and stats["suspected"] == 0 and cases == []


async def test_a_fix_reaching_the_gateway_after_the_sighting_still_accounts_for_the_truck(tmp_path):
    # the muck truck's terminal reports 300 m from the checkpoint, then at it 6 s later; replayed at a
    # quarter of real speed, that second fix reaches the gateway 24 s after the first, after the truck
    # was seen, though it is dated within the window around the sighting
    track = tmp_path / "late.csv"
    lon, lat = MUCK_FIRST_FIX
    track.write_text("time,device,lon,lat,speed_kmh,course,status,alarm\n"
                     f"2026-07-15T10:00:00+08:00,013912340001,{lon + 0.0035},{lat},60.0,270,770,0\n"
                     f"2026-07-15T10:00:06+08:00,013912340001,{lon},{lat},20.0,270,770,0\n",
                     encoding="utf-8")
    seen_before_fix: list[bool] = []
    stats, cases = await run_until_decided(
        site(tmp_path, MUCK_FIRST_FIX, track, speed=0.25, window_s=30),
        on_sighting=lambda rule: seen_before_fix.append(rule.stats["fixes"] == 1))
    assert seen_before_fix == [True]  # the truck was seen while only the far fix had arrived
    assert stats["fixes"] == 2 and stats["accounted"] >= 1 and stats["suspected"] == 0 and cases == []


async def test_a_fix_the_position_filters_reject_accounts_for_nothing(tmp_path):
    # 2.4 km in 2 s: an impossible jump, dropped by the fleet's filters, so it cannot vouch for the truck
    track = tmp_path / "jump.csv"
    track.write_text("time,device,lon,lat,speed_kmh,course,status,alarm\n"
                     f"2026-07-15T10:00:00+08:00,013912340001,{FAR[0]},{FAR[1]},30.0,0,770,0\n"
                     f"2026-07-15T10:00:02+08:00,013912340001,{MUCK_FIRST_FIX[0]},{MUCK_FIRST_FIX[1]},30.0,0,770,0\n",
                     encoding="utf-8")
    stats, cases = await run_until_decided(site(tmp_path, MUCK_FIRST_FIX, track, speed=1, window_s=4))
    assert stats["fixes"] == 1 and stats["suspected"] >= 1 and len(cases) >= 1
    [checked] = cases[0]["facts"]["registered_nearest"]
    assert checked["vehicle"] == "muck-01" and checked["distance_m"] > 2000


async def test_a_failing_checkpoint_never_stops_the_cameras_analysis(tmp_path, caplog):
    class Broken:
        def sightings(self, detections, frame):
            raise RuntimeError("checkpoint bug")

    gateway = Gateway(load_deployment(site(tmp_path, FAR, TRACKS / "muck-01.csv", speed=1, window_s=4)))
    gateway.component("rules").black_trucks.watches["gate-east"] = Broken()
    camera = gateway.component("camera:gate-east")
    await gateway.start()
    try:
        await wait_until(lambda: camera.stats()["frames_analysed"] >= 6, timeout=60)
    finally:
        assert await gateway.shutdown()
    assert camera.stats()["analysis_errors"] == 0
    lines = [r for r in caplog.records if "checkpoint sightings failed" in r.getMessage()]
    assert len(lines) == 1  # once per minute per camera, not once per frame
