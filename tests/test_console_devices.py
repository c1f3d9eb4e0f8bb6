"""The console's devices view of a real gateway, over real HTTP: a camera analysing the street clip with
the real model, a JT/T 808 terminal driving over TCP, a platform command waiting for an offline truck,
a flooding underpass replayed from a CSV, and patrol cameras visited over HTTP. What an operator checks:
the camera's last frame is a JPEG of the frame's size, the speeding mixer has its open violation (with
its case) and its terminal connected, the underpass has a sparkline and an open episode; and nothing
of it is served without credentials."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import cv2
import httpx
import numpy as np
import pytest

from core.model import Position
from gateway.deployment import load_deployment
from gateway.protocols import jt808
from gateway.runtime import Gateway
from gateway.simulator import Terminal
from tests.camera_server import CameraFleet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolo11n_int8_openvino_model"
TOKEN = "wall-screen-token-" + "w" * 24
KERB = [[395, 25], [470, 25], [470, 80], [395, 80]]


def config(tmp_path: Path, now: datetime) -> Path:
    readings = tmp_path / "underpass.csv"  # water rising for ten minutes up to now, on the recording's clock
    rows = [f"{(now - timedelta(seconds=600 - 30 * i)).isoformat()},wl-underpass-01,{5 + 1.5 * i}" for i in range(21)]
    readings.write_text("time,device,level_cm\n" + "\n".join(rows) + "\n", encoding="utf-8")
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: east-district
        timezone: Asia/Shanghai
        data_dir: data
        web: {{host: 127.0.0.1, port: 0, tokens: [{{name: wall, role: operator, token: {TOKEN}}}]}}
        video:
          detector: {{backend: openvino, model: {MODEL}, threads: 1}}
          cameras:
            - name: 东门-01
              url: {CLIP}
              realtime: true
              detect_fps: 2
              address: 东华门大街北侧
              zones: [{{name: 路边, polygon: {KERB}}}]
              rules: [{{name: parking, kind: dwell, zone: 路边, classes: [car, truck], min_seconds: 3600,
                       category: illegal_parking}}]
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: 0}}
          fleet:
            vehicles:
              - {{id: mixer-01, plate: 京A·H2002, type: mixer, company: 东城混凝土, terminal: "013912340002",
                 speed_limit_kmh: 50, working_hours: ["00:00-24:00"]}}
              - {{id: muck-01, plate: 京A·D1001, type: muck_truck, terminal: "013912340001",
                 working_hours: ["00:00-24:00"]}}
        sensors:
          devices:
            - {{id: wl-underpass-01, name: 东单下穿隧道积水点, kind: water_level, lon: 116.404, lat: 39.9105}}
          level_rules:
            - name: underpass-flooding
              category: road_flooding
              case_from: deep
              min_duration_s: 60
              levels: [{{name: shallow, at: 15, severity: info}}, {{name: deep, at: 27, severity: warning}}]
          replay: [{{file: {readings}, speed: 0, shift_to_now: false}}]
        """), encoding="utf-8")
    return path


async def drive(port: int, now: datetime) -> Terminal:
    """mixer-01's terminal: registers, authenticates and reports 20 s at 80 km/h (its limit is 50)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    term = Terminal(reader, writer, "013912340002", say=lambda _: None)
    code = (await term.request(jt808.MSG_REGISTER, jt808.encode_register_body(terminal_id="1234567", plate="SIM")))
    assert (await term.request(jt808.MSG_AUTH, jt808.encode_auth_body(code.fields["auth_code"]))).fields["result"] == 0
    step = 80 / 3.6 / (111_320 * np.cos(np.radians(39.91)))
    for i in range(20):
        fix = Position(39.91, 116.39 + i * step, (now - timedelta(seconds=25 - i)).astimezone(jt808.CST),
                       speed_kmh=80, course=90, status=2, device=term.terminal)
        assert (await term.request(jt808.MSG_LOCATION, jt808.encode_location_body(fix))).fields["result"] == 0
    return term


async def until(what, timeout: float = 90.0):
    """Poll `what()` (a coroutine) until it returns something true."""
    async with asyncio.timeout(timeout):
        while not (found := await what()):
            await asyncio.sleep(0.2)
    return found


def by_id(section: dict) -> dict:
    return {item["id"]: item for item in section["items"]}


async def test_devices_of_a_running_gateway(tmp_path):
    now = datetime.now(UTC)
    gateway = Gateway(load_deployment(config(tmp_path, now)))
    await gateway.start()
    term = None
    try:
        base = f"http://127.0.0.1:{gateway.component('web').port}"
        wall = httpx.AsyncClient(base_url=base, timeout=20, headers={"Authorization": f"Bearer {TOKEN}"})
        anon = httpx.AsyncClient(base_url=base, timeout=20)
        forged = httpx.AsyncClient(base_url=base, timeout=20, headers={"Authorization": "Bearer " + "f" * 40})
        term = await drive(gateway.component("jt808").port, now)
        sent = await wall.post("/api/vehicles/muck-01/commands", json={"kind": "text", "text": "请回场"})
        assert sent.status_code == 202 and sent.json()["state"] == "queued"

        async def ready():
            view = (await wall.get("/api/devices")).json()
            cam = view["cameras"]["items"][0]
            mixer = by_id(view["vehicles"])["mixer-01"]
            underpass = view["sensors"]["items"][0]
            if cam["frame_url"] and mixer["open_violations"] and underpass["open_episodes"]:
                return view
            return None

        view = await until(ready)
        cam = view["cameras"]["items"][0]
        frame_url = f"/cameras/{quote('东门-01')}/last.jpg"
        assert cam["id"] == "东门-01" and cam["online"] and cam["frame_url"] == frame_url
        assert cam["frame_size"] == [480, 360] and cam["decoded_fps"] > 0 and cam["zones"] == ["路边"]
        jpeg = await wall.get(frame_url)
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        picture = cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape == (360, 480, 3)

        vehicles = by_id(view["vehicles"])
        mixer, muck = vehicles["mixer-01"], vehicles["muck-01"]
        [speeding] = mixer["open_violations"]
        assert speeding["rule"] == "overspeed" and speeding["case_id"]
        assert gateway.outbox.get(speeding["case_id"]).case["rule"] == "overspeed"
        assert mixer["last_fix"]["speed_kmh"] == 80 and mixer["online"]
        terminal = mixer["terminal"]
        assert terminal["connected"] and terminal["authenticated"] and terminal["address"].startswith("127.0.0.1:")
        assert terminal["pending_commands"] == 0 and terminal["last_message_at"]
        assert muck["terminal"] == {"connected": False, "authenticated": False, "pending_commands": 1}

        [underpass] = view["sensors"]["items"]
        assert underpass["name"] == "东单下穿隧道积水点" and underpass["last_reading"]["values"] == [
            {"field": "level_cm", "value": 35.0, "unit": "cm"}]
        [episode] = underpass["open_episodes"]
        assert (episode["level"], episode["severity"]) == ("deep", "warning")
        assert len(underpass["series"]["points"]) == 11
        assert view["counters"]["jt808"]["positions"] >= 20

        page = await wall.get("/devices")
        assert page.status_code == 200
        html = page.text
        assert f'<img class="frame" src="{frame_url}"' in html and "东门-01" in html and "东华门大街北侧" in html
        assert "京A·H2002" in html and "overspeed" in html and f'href="/cases/{speeding["case_id"]}"' in html
        assert "1 command waiting" in html and "东单下穿隧道积水点" in html
        assert html.count('<svg class="spark"') == 1 and "deep" in html
        filtered = await wall.get("/devices", params={"kind": "vehicles", "q": "muck"})
        assert "京A·D1001" in filtered.text and "京A·H2002" not in filtered.text and "东门-01" not in filtered.text
        assert (await wall.get("/devices", params={"limit": "none"})).status_code == 400
        assert (await wall.get("/api/devices", params={"kind": "drones"})).status_code == 400
        assert (await wall.get(f"/cameras/{quote('西门-02')}/last.jpg")).status_code == 404

        # nothing of it without credentials: pages go to the login, the rest answers 401
        for client in (anon, forged):
            for path in ("/devices", "/api/devices", frame_url):
                r = await client.get(path, follow_redirects=False)
                if client is anon and path == "/devices":
                    assert r.status_code == 302 and r.headers["location"].startswith("/login?next=")
                else:
                    assert r.status_code == 401, (path, r.status_code)
                assert b"\xff\xd8" not in r.content[:4] and "东单" not in r.text and "mixer" not in r.text

        # the terminal goes away: the view says so, with when its connection ended
        term.writer.close()
        term = None

        async def gone():
            terminal = by_id((await wall.get("/api/devices", params={"kind": "vehicles"})).json()["vehicles"])[
                "mixer-01"]["terminal"]
            return terminal if not terminal["connected"] else None

        terminal = await until(gone, 20)
        assert not terminal["authenticated"] and terminal["disconnected_at"] and terminal["last_message_at"]
        for client in (wall, anon, forged):
            await client.aclose()
    finally:
        if term is not None:
            term.writer.close()
        assert await gateway.shutdown()


def street_pictures() -> list[bytes]:
    cap, out = cv2.VideoCapture(str(CLIP)), []
    for _ in range(2):
        ok, image = cap.read()
        assert ok
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    cap.release()
    return out


async def test_patrolled_cameras_show_their_state_and_last_picture(tmp_path):
    fleet = CameraFleet(street_pictures(), {"cam-locked": "deny"})
    await fleet.start()
    try:
        inventory = tmp_path / "cameras.csv"
        inventory.write_text("id,name,url,lon,lat,address,group,preset\n" + "".join(
            f"{cam},{name},{fleet.url(cam)},116.39,39.90,{address},key,street\n"
            for cam, name, address in (("cam-01", "东门路口", "东华门大街"), ("cam-locked", "西门", "西华门大街"))),
            encoding="utf-8")
        path = tmp_path / "site.yaml"
        path.write_text(textwrap.dedent(f"""
            site: patrol
            data_dir: data
            web: {{host: 127.0.0.1, port: 0, tokens: [{{name: wall, role: viewer, token: {TOKEN}}}]}}
            video:
              detector: {{backend: openvino, model: {MODEL}, threads: 1}}
              patrol:
                inventory: {inventory}
                presets:
                  street: {{zones: [{{name: 路边, polygon: [[0.82, 0.07], [0.98, 0.07], [0.98, 0.22], [0.82, 0.22]]}}],
                           rules: []}}
                groups: {{key: {{interval_s: 2}}}}
                offline_after: 1
                timeout_s: 1
                inference_workers: 1
            """), encoding="utf-8")
        gateway = Gateway(load_deployment(path))
        await gateway.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.component('web').port}", timeout=20,
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as wall:
                async def visited():
                    patrol = (await wall.get("/api/devices", params={"kind": "patrol"})).json()["patrol"]
                    cams = by_id(patrol)
                    ok = cams["cam-01"]["frame_url"] and cams["cam-locked"]["online"] is False
                    return patrol if ok else None

                patrol = await until(visited, 60)
                locked, good = patrol["items"]  # the offline one first
                assert locked["id"] == "cam-locked" and "http_401" in locked["last_error"]
                assert locked["frame_url"] is None and locked["failures"] >= 1
                assert good["name"] == "东门路口" and good["group"] == "key" and good["preset"] == "street"
                assert good["online"] and good["last_visit"] and good["next_visit"] and good["phase"] in (
                    "scheduled", "fetching", "queued", "analysing")
                assert patrol["groups"]["key"]["cameras"] == 2 and patrol["summary"]["offline"] == 1
                jpeg = await wall.get(good["frame_url"])
                picture = cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_COLOR)
                assert jpeg.status_code == 200 and picture.shape == (360, 480, 3)
                page = (await wall.get("/devices")).text
                assert "Patrol cameras" in page and "东门路口" in page and f'src="{good["frame_url"]}"' in page
                assert (await wall.get(f"/cameras/{locked['id']}/last.jpg")).status_code == 404
        finally:
            assert await gateway.shutdown()
    finally:
        await fleet.stop()
