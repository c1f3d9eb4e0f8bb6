"""The console's devices view (gateway/devices.py) over real components: a gateway graph built from a
config (router, sensor and fleet rules, the alert bus and case desk, the JT/T 808 server's command
book), a camera pipeline running the real model on frames of the street clip; the device index, the
query bounds, the camera picture's drawing and its rate, the patrol pictures' memory budget and the
sparkline's SVG."""

from __future__ import annotations

import asyncio
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.model import Alert, Detection, Frame, Position, Reading
from detectors.sensor import SensorMonitor, SensorsConfig
from gateway.camera_view import KeptPicture, LastFrame, LastPictures, Outline, render_view
from gateway.config import load_config
from gateway.deployment import load_deployment
from gateway.device_index import DeviceIndex
from gateway.devices import DeviceQuery, DeviceQueryError, Devices
from gateway.health import DeviceHealth
from gateway.web.device_pages import sparkline
from gateway.wiring import build_graph

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolo11n_int8_openvino_model"
KERB = [(395, 25), (470, 25), (470, 80), (395, 80)]  # the parked car and van of the clip

SITE = """
site: devices
timezone: Asia/Shanghai
data_dir: data
vehicles:
  jt808: {enabled: true, host: 127.0.0.1, port: 0}
  fleet:
    vehicles:
      - {id: mixer-01, plate: 京A·H2002, type: mixer, company: 东城混凝土, terminal: "013912340002",
         speed_limit_kmh: 50, working_hours: ["00:00-24:00"]}
      - {id: muck-01, plate: 京A·D1001, type: muck_truck, terminal: "013912340001", working_hours: ["00:00-24:00"]}
sensors:
  devices:
    - {id: wl-1, name: 东单下穿隧道积水点, kind: water_level, lon: 116.404, lat: 39.9105}
    - {id: wl-2, name: 南池子积水点, kind: water_level, lon: 116.4016, lat: 39.912}
    - {id: rain-1, name: 东城雨量站, kind: rain_gauge, lon: 116.40, lat: 39.915}
  level_rules:
    - name: underpass-flooding
      category: road_flooding
      case_from: deep
      min_duration_s: 60
      levels: [{name: shallow, at: 15, severity: info, label: 积水15cm}, {name: deep, at: 27, severity: warning}]
  rain_rules:
    - {name: heavy-rain, thresholds: [{window_s: 3600, mm: 16, severity: warning, name: heavy}]}
"""


def site(tmp_path: Path, text: str = SITE) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


async def settled(bus) -> None:
    async with asyncio.timeout(20):
        while bus.pending:
            await asyncio.sleep(0.01)


def fixes(device: str, start: datetime, seconds: int, speed_kmh: float) -> list[Position]:
    """A truck driving east at a steady speed, one fix a second (plausible for the position filters)."""
    step = speed_kmh / 3.6 / (111_320 * np.cos(np.radians(39.91)))
    return [Position(39.91, 116.39 + i * step, start + timedelta(seconds=i), speed_kmh=speed_kmh, course=90,
                     device=device, status=2) for i in range(seconds)]


async def test_vehicles_and_sensors_from_a_running_graph(tmp_path):
    graph = build_graph(load_deployment(site(tmp_path)))
    stop = asyncio.Event()
    bus = asyncio.create_task(graph.bus.run(stop))
    try:
        router, now = graph.router, datetime.now(UTC)
        # water rising at the underpass for ten minutes, the street stays dry, rain 2 mm a minute
        for i in range(21):
            t = now - timedelta(seconds=600 - 30 * i)
            router.on_reading(Reading("wl-1", t, {"level_cm": 5.0 + 1.5 * i}, units={"level_cm": "cm"}))
            router.on_reading(Reading("wl-2", t, {"level_cm": 5.0}, units={"level_cm": "cm"}))
            if i % 2 == 0:
                router.on_reading(Reading("rain-1", t, {"rain_mm": 2.0}, units={"rain_mm": "mm"}))
        # the mixer drives at 80 km/h for 20 s (limit 50); a terminal not in the fleet reports once
        for p in fixes("013912340002", now - timedelta(seconds=25), 20, 80.0):
            router.on_position(p)
        router.on_position(Position(39.92, 116.43, now - timedelta(seconds=3), speed_kmh=30, device="013999999999"))
        # a text for the muck truck, whose terminal is not connected: it waits
        graph.find("jt808").command("muck-01", "text", {"text": "请回场"})
        await settled(graph.bus)
        devices = Devices.from_graph(graph)
        view = devices.view(DeviceQuery(), now)
    finally:
        stop.set()
        await bus
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()

    assert "patrol" not in view and view["cameras"]["total"] == 0
    vehicles = view["vehicles"]
    assert vehicles["jt808"] and vehicles["total"] == 3
    assert vehicles["summary"] == {"online": 2, "unknown": 1, "alerting": 2}  # muck-01 was never heard from
    unknown, mixer, muck = vehicles["items"]  # problems first: the unregistered terminal, the speeding mixer
    assert unknown["id"] == "13999999999" and not unknown["registered"]  # its canonical key
    assert [a["rule"] for a in unknown["open_violations"]] == ["unregistered_vehicle"]
    assert mixer["id"] == "mixer-01" and mixer["plate"] == "京A·H2002" and mixer["online"] is True
    assert mixer["last_fix"]["speed_kmh"] == 80.0 and mixer["last_fix"]["time"].endswith("+08:00")
    [speeding] = mixer["open_violations"]
    assert speeding["rule"] == "overspeed" and speeding["case_id"] and speeding["severity"] == "warning"
    assert mixer["terminal"] is None  # its fixes came in by a router call here, not over JT/T 808
    assert muck["id"] == "muck-01" and muck["online"] is None and muck["last_fix"] is None
    assert muck["terminal"] == {"connected": False, "authenticated": False, "pending_commands": 1}

    sensors = view["sensors"]
    assert [s["id"] for s in sensors["items"]] == ["rain-1", "wl-1", "wl-2"]  # the two alarming ones first
    rain, underpass, street = sensors["items"]
    assert underpass["name"] == "东单下穿隧道积水点" and underpass["online"] is True
    assert underpass["last_reading"]["values"] == [{"field": "level_cm", "value": 35.0, "unit": "cm"}]
    [deep] = underpass["open_episodes"]
    assert (deep["rule"], deep["level"], deep["severity"]) == ("underpass-flooding", "deep", "warning")
    assert datetime.fromisoformat(deep["since"]) > now - timedelta(seconds=600)
    series = underpass["series"]
    assert series["field"] == "level_cm" and series["unit"] == "cm" and series["kind"] == "level"
    assert len(series["points"]) == 11 and series["points"][-1][1] == 35.0  # the highest of each minute
    assert [t["at"] for t in series["thresholds"]] == [15, 27]
    assert street["open_episodes"] == [] and street["series"]["points"][-1][1] == 5.0
    [heavy] = rain["open_episodes"]
    assert heavy["level"] == "heavy" and heavy["kind"] == "rain"
    assert rain["series"]["kind"] == "rain_total" and rain["series"]["points"][-1][1] == 22.0  # 11 x 2 mm


async def test_query_filters_pages_and_names_bad_parameters(tmp_path):
    graph = build_graph(load_deployment(site(tmp_path)))
    try:
        devices = Devices.from_graph(graph)
        found = devices.view(DeviceQuery(text="东城"))  # a company and a sensor's name
        assert [v["id"] for v in found["vehicles"]["items"]] == ["mixer-01"]
        assert [s["id"] for s in found["sensors"]["items"]] == ["rain-1"]
        page = devices.view(DeviceQuery(kind="sensors", limit=2, offset=1))
        assert set(page) == {"generated_at", "query", "sensors"}
        assert page["sensors"]["total"] == 3 and [s["id"] for s in page["sensors"]["items"]] == ["wl-1", "wl-2"]
    finally:
        graph.desk.close()
        graph.outbox.close()
        graph.timeseries.close()
    assert DeviceQuery.from_params({"kind": "vehicles", "q": " 京A ", "limit": "5"}) == DeviceQuery("vehicles", "京A", 5)
    for params, named in (({"kind": "drones"}, "kind"), ({"limit": "0"}, "limit"), ({"limit": "many"}, "limit"),
                          ({"offset": "-1"}, "offset"), ({"q": "x" * 101}, "q")):
        with pytest.raises(DeviceQueryError, match=f"^{named}:"):
            DeviceQuery.from_params(params)


# -- the index of open alerts and last observations -------------------------------------------------

def alert(state: str, t: datetime, severity: str = "info", place: str = "underpass") -> Alert:
    return Alert(rule="flooding", subject_kind="sensor", subject_id="wl-1", state=state, time=t, source="sensor",
                 severity=severity, place=place, message=f"{severity} at {t:%H:%M}")


def test_open_alerts_keep_their_first_time_and_case_and_close_once():
    index, t = DeviceIndex(), datetime(2026, 7, 15, 6, 0, tzinfo=UTC)

    class Outcome:
        case_id = "edge-07-1"

    index.after_alert(alert("open", t), None)
    index.after_alert(alert("open", t + timedelta(minutes=5), "warning"), Outcome())  # escalated: now a case
    index.after_alert(alert("open", t + timedelta(minutes=6), place="street"), None)
    underpass, street = index.open_alerts("sensor", "wl-1")
    assert (underpass.since, underpass.latest, underpass.severity) == (t, t + timedelta(minutes=5), "warning")
    assert underpass.case_id == "edge-07-1" and street.case_id is None
    index.after_alert(alert("closed", t + timedelta(minutes=9)), None)
    index.after_alert(alert("closed", t + timedelta(minutes=9)), None)  # a second close changes nothing
    assert [a.place for a in index.open_alerts("sensor", "wl-1")] == ["street"]
    assert index.stats()["open_alerts"] == 1 and index.open_alerts("sensor", "wl-9") == []


def test_the_index_is_bounded_and_keeps_what_it_has():
    index, t = DeviceIndex(max_devices=2, max_open=1), datetime(2026, 7, 15, 6, 0, tzinfo=UTC)
    for device in ("wl-1", "wl-2", "wl-3", "wl-1"):
        index.observed(Reading(device, t, {"level_cm": 1.0}))
    index.after_alert(alert("open", t), None)
    index.after_alert(alert("open", t, place="street"), None)
    assert sorted(index.readings) == ["wl-1", "wl-2"] and len(index.open_alerts("sensor", "wl-1")) == 1
    index.observed(Position(39.9, 116.4, t, speed_kmh=30, device="mixer-01"))
    index.observed(Position(39.8, 116.3, t - timedelta(hours=1), device="mixer-01", history=True))  # a late supplement
    assert index.positions["mixer-01"].speed_kmh == 30
    assert index.stats() == {"vehicles": 1, "sensors": 2, "open_alerts": 1, "devices_left_out": 1,
                             "alerts_left_out": 1}


def test_open_episodes_survive_a_restart_of_the_sensor_rules():
    config = SensorsConfig.model_validate({
        "devices": [{"id": "wl-1", "kind": "water_level", "lon": 116.4, "lat": 39.9}],
        "level_rules": [{"name": "flooding", "warn_at": 20, "critical_at": 35, "min_duration_s": 0}]})
    before, t = SensorMonitor(config), datetime(2026, 7, 15, 6, 0, tzinfo=UTC)
    for i, level in enumerate((5, 22, 40)):
        before.process(Reading("wl-1", t + timedelta(minutes=i), {"level_cm": level}))
    after = SensorMonitor(config)
    after.restore_state(before.export_state())
    assert after.open_episodes() == before.open_episodes() == [
        {"rule": "flooding", "device": "wl-1", "kind": "level", "level": "critical", "label": "critical",
         "severity": "critical", "since": t + timedelta(minutes=1), "peak": 40}]
    assert after.recent_values("wl-1", t + timedelta(minutes=1)) == {
        "level_cm": [((t + timedelta(minutes=1)).timestamp(), 22), ((t + timedelta(minutes=2)).timestamp(), 40)]}


# -- cameras ------------------------------------------------------------------------------------------

def clip_frames(*indices: int) -> list[np.ndarray]:
    cap, out, i = cv2.VideoCapture(str(CLIP)), [], 0
    while len(out) < len(indices):
        ok, image = cap.read()
        assert ok, f"{CLIP} has fewer than {max(indices)} frames"
        if i in indices:
            out.append(image)
        i += 1
    cap.release()
    return out


def yellow(image: np.ndarray, x: int, y: int) -> bool:
    b, g, r = (int(v) for v in image[y, x])
    return b < 90 and g > 180 and r > 180


def test_a_cameras_last_frame_is_drawn_on_request_at_most_once_a_second(tmp_path):
    from detectors.video.backends import load_detector
    from detectors.video.config import CameraConfig, DetectorConfig, VideoRuleConfig, ZoneConfig
    from detectors.video.pipeline import CameraPipeline
    from gateway.sources.camera import CameraSource
    from gateway.video_worker import CameraChannel, FrameWorker

    camera = CameraConfig(name="东门-01", url=str(CLIP), detect_fps=2, realtime=False, address="东华门大街",
                          zones=[ZoneConfig(name="路边", polygon=KERB)],
                          rules=[VideoRuleConfig(name="parking", kind="dwell", zone="路边", classes=["car"])])
    pipeline = CameraPipeline(camera, load_detector(DetectorConfig(backend="openvino", model=str(MODEL)), MODEL))
    now = [1000.0]
    last = LastFrame(clock=lambda: now[0])
    channel = CameraChannel(CameraSource(camera, lambda f: None, lambda a: None),
                            FrameWorker(camera.name, pipeline.process, lambda a: None), pipeline, last=last)
    devices = Devices(load_config(site(tmp_path, "site: cams\ntimezone: Asia/Shanghai\n")), index=DeviceIndex(),
                      health=DeviceHealth(lambda *a: None), sensors=SensorMonitor(SensorsConfig()),
                      cameras={camera.name: channel})
    assert devices.view()["cameras"]["items"][0]["frame_url"] is None and devices.camera_jpeg("东门-01") is None

    first, second = clip_frames(0, 40)
    t0 = datetime.now(UTC)
    for i, image in enumerate((first, second)):
        frame = Frame(camera.name, i, t0 + timedelta(seconds=i / 2), image)
        pipeline.process(frame)
        last.keep(frame, pipeline.last_detections)
        now[0] += 0.5
        if i == 0:
            jpeg = devices.camera_jpeg("东门-01")
    again = devices.camera_jpeg("东门-01")
    assert again is jpeg  # a newer frame within the second: the picture drawn before
    now[0] += 1.0
    newer = devices.camera_jpeg("东门-01")
    assert newer is not jpeg and newer != jpeg

    picture = cv2.imdecode(np.frombuffer(newer, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (360, 480, 3)  # a real JPEG of the frame's size
    assert sum(yellow(picture, x, y) for x in range(400, 466) for y in (79, 80, 81)) > 50  # the zone's lower edge
    assert (picture[:10, :150] < 40).mean() > 0.5  # the title bar: black behind the camera's name
    [item] = devices.view()["cameras"]["items"]
    assert item["frame_url"] == "/cameras/%E4%B8%9C%E9%97%A8-01/last.jpg" and item["frame_size"] == [480, 360]
    assert "person" in item["detections"] and {"car", "truck"} & set(item["detections"]) and item["zones"] == ["路边"]
    assert item["analysed_fps"] == 2.0  # two frames half a second apart on the analysis clock
    assert item["last_analysed_at"] == (t0 + timedelta(seconds=0.5)).astimezone(devices.tz).isoformat(
        timespec="seconds")


def test_chinese_names_are_drawn_as_characters():
    image = np.full((360, 480, 3), 128, np.uint8)
    det = Detection("car", 2, 0.9, (100.0, 100.0, 200.0, 180.0), track_id=7)
    plain = cv2.imdecode(np.frombuffer(render_view(image, [], [det], "cam"), np.uint8), cv2.IMREAD_COLOR)
    chinese = cv2.imdecode(np.frombuffer(render_view(image, [Outline("路边", ((10, 200), (200, 200), (200, 300)))],
                                                     [det], "东门-01 东华门大街"), np.uint8), cv2.IMREAD_COLOR)
    assert (np.abs(chinese[:20, 60:200].astype(int) - plain[:20, 60:200].astype(int)) > 60).sum() > 50
    assert (image == 128).all()  # the analysed frame itself is never drawn on


def test_patrol_pictures_stay_within_their_memory_budget():
    pictures, t = LastPictures(max_bytes=2500), datetime(2026, 7, 15, 6, 0, tzinfo=UTC)
    for cam in ("a", "b", "c", "b"):
        pictures.keep(cam, KeptPicture(b"x" * 1000, (640, 360), (), t))
    assert "a" not in pictures and {"b", "c"} <= {c for c in "abc" if c in pictures}
    assert pictures.bytes == 2000 and len(pictures) == 2


# -- the sparkline ------------------------------------------------------------------------------------

def test_sparkline_draws_every_point_and_the_levels_in_range():
    points = [[1_700_000_000 + 60 * i, v] for i, v in enumerate((5, 6, 9, 14, 30, 33))]
    svg = sparkline({"field": "level<cm>", "unit": "cm", "kind": "level", "hours": 3, "points": points,
                     "from": "2026-07-15T14:00:00+08:00", "to": "2026-07-15T14:05:00+08:00",
                     "thresholds": [{"name": "积水15cm", "at": 15, "severity": "info"},
                                    {"name": "deep", "at": 27, "severity": "warning"},
                                    {"name": "impassable", "at": 40, "severity": "critical"}]})
    coords = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(coords) == 6
    ys = [float(c.split(",")[1]) for c in coords]
    assert ys[-1] < ys[0]  # the water rose: the line goes up (SVG y grows downwards)
    assert svg.count("<line ") == 2 and "积水15cm 15" in svg and "impassable" not in svg  # 40 is above the range
    assert "level&lt;cm&gt;" in svg and "<cm>" not in svg
    assert "no recent series" in sparkline(None) and "no recent series" in sparkline({"points": [[0, 1]]})
