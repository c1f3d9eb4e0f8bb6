"""A real browser (Debian's headless Chromium, driven through chromium-driver) uses the console of a
gateway that has processed replayed vehicle tracks and sensor series plus a video case filed by
the case desk from real frames: log in, see the cases with their thumbnails, open a case whose
snapshot and clip frames load, send it again while the platform is down, open a vehicle case held
for review with its map and confirm it (it then reaches the local receiver), reject another held
case (never sent), see the devices (the street camera's last analysed frame, vehicles, each sensor's
last hours).

Screenshots go to $CITYGATE_TEST_ARTIFACTS (default: test-artifacts/ in the checkout)."""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest
from central_receiver import CentralReceiver

from core.model import Alert, Detection, Evidence
from detectors.video.evidence import ClipBuffer, crop, render_snapshot
from gateway.deployment import load_deployment
from gateway.runtime import Gateway
from gateway.web.auth import hash_password

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "configs" / "data"
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
MODEL = REPO / "models" / "yolo11n_int8_openvino_model"
ARTIFACTS = Path(os.environ.get("CITYGATE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "console"
PASSWORD = "operator-password-1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def config_file(tmp_path: Path, central_url: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: browser
        data_dir: data
        central: {{url: '{central_url}', poll_s: 0.2, backoff_initial_s: 0.2, backoff_max_s: 1}}
        cases:
          review: {{rules: {{overspeed: review, unregistered_vehicle: review}}}}
        web:
          host: 127.0.0.1
          port: 0
          users: [{{name: wang.li, role: operator, password_hash: '{hash_password(PASSWORD)}'}}]
        video:
          detector: {{backend: openvino, model: {MODEL}, threads: 1}}
          cameras:
            - {{name: 东门-01, url: {CLIP}, realtime: true, detect_fps: 1, address: 东华门大街北侧,
               zones: [{{name: 路边, polygon: [[395, 25], [470, 25], [470, 80], [395, 80]]}}]}}
        vehicles:
          fleet:
            vehicles:
              - {{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50}}
            zones:  # drawn in GCJ-02, as a city's web-map layers often are
              - {{id: centre, name: 核心区渣土车禁行区, crs: gcj02, applies_to: [muck_truck], windows: ["00:00-24:00"],
                 polygon: [[116.4012, 39.9064], [116.4162, 39.9064], [116.4162, 39.9214], [116.4012, 39.9214]]}}
            sites:
              - {{id: depot-east, name: 东部车场, kind: depot,
                 polygon: [[116.4300, 39.9100], [116.4340, 39.9100], [116.4340, 39.9130], [116.4300, 39.9130]]}}
          replay:
            - {{file: {DATA / "tracks" / "mixer-01.csv"}, speed: 0}}
            - {{file: {DATA / "tracks" / "unknown-truck.csv"}, speed: 0}}
        sensors:
          devices:
            - {{id: wl-underpass-01, kind: water_level, lon: 116.404, lat: 39.9105}}
            - {{id: wl-street-02, kind: water_level, lon: 116.4016, lat: 39.912}}
            - {{id: rain-01, kind: rain_gauge, profile: generic-rain-gauge-json, lon: 116.4, lat: 39.915}}
          level_rules:
            - {{name: underpass-flooding, warn_at: 20, critical_at: 35, category: road_flooding}}
          replay:
            - {{file: {DATA / "sensors" / "cloudburst-demo.csv"}, speed: 0}}
        """), encoding="utf-8")
    return path


def parking_alert() -> Alert:
    """An illegal-parking alert with a snapshot, a crop and a clip made from real video frames."""
    cap = cv2.VideoCapture(str(CLIP))
    clip = ClipBuffer(10.0)
    frame = None
    for i in range(12):
        ok, frame = cap.read()
        assert ok, f"cannot read frame {i} of {CLIP}"
        clip.add(i * 0.1, frame)
    cap.release()
    det = Detection(label="car", class_id=2, confidence=0.87, box=(180.0, 120.0, 300.0, 260.0))
    now = datetime.now(UTC)
    zone = [[150, 100], [340, 100], [340, 300], [150, 300]]
    evidence = (Evidence("snapshot.jpg", "image/jpeg", render_snapshot(frame, det, zone, "car", 7, now, "东门-01")),
                Evidence("crop.jpg", "image/jpeg", crop(frame, det.box)),
                Evidence("clip.avi", "video/x-msvideo", clip.to_avi()))
    return Alert(rule="no-parking", subject_kind="camera", subject_id="东门-01", state="open", time=now,
                 source="video", category="illegal_parking", place="kerb", lon=116.397, lat=39.909, track_id=7,
                 message="car parked 312 s in kerb", facts={"dwell_s": 312, "object": "car"}, evidence=evidence)


def browse(base: str, case_id: str, platform_up) -> dict:
    """The browser session (blocking: runs in a thread while the gateway serves)."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--lang=zh-CN"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    wait = WebDriverWait(driver, 20)
    seen: dict = {}

    def loaded(selector: str) -> list[int]:
        images = driver.find_elements(By.CSS_SELECTOR, selector)
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete", i) for i in images))
        return [driver.execute_script("return arguments[0].naturalWidth", i) for i in images]

    try:
        driver.get(base + "/cases")
        wait.until(ec.url_contains("/login"))
        driver.save_screenshot(str(ARTIFACTS / "01-login.png"))
        driver.find_element(By.NAME, "user").send_keys("wang.li")
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.cases")))
        seen["after_login_url"] = driver.current_url
        seen["thumbs"] = loaded("img.thumb")
        seen["cases_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.save_screenshot(str(ARTIFACTS / "02-cases.png"))

        driver.find_element(By.CSS_SELECTOR, f'a[href="/cases/{case_id}"]').click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "figure.clip")))
        seen["evidence"] = loaded("img.evidence")
        seen["evidence_alts"] = [i.get_attribute("alt") for i in driver.find_elements(By.CSS_SELECTOR, "img.evidence")]
        driver.find_element(By.CSS_SELECTOR, "figure.clip button.play").click()
        wait.until(lambda d: not d.find_element(By.CSS_SELECTOR, "figure.clip .frame").text.startswith("1 /"))
        seen["clip_frame"] = loaded("figure.clip img")
        seen["case_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(ARTIFACTS / "03-video-case.png"))
        # the platform is down: an operator sends the case again; the form asks first, carries its CSRF token
        driver.find_element(By.CSS_SELECTOR, "form[action$='/retry'] button").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".notice")))
        seen["retried_url"] = driver.current_url
        driver.save_screenshot(str(ARTIFACTS / "05-retried.png"))
        platform_up()

        driver.get(base + "/cases?status=held&source=vehicle&q=map.png")  # held for review, with a map
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.cases")))
        driver.find_element(By.CSS_SELECTOR, "table.cases tr.case a[href^='/cases/']").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.evidence")))
        seen["map"] = loaded("img.evidence")
        seen["held_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.save_screenshot(str(ARTIFACTS / "04-vehicle-case.png"))
        seen["confirmed"] = driver.current_url.rsplit("/", 1)[1]
        driver.find_element(By.CSS_SELECTOR, "form[action$='/confirm'] button").click()
        wait.until(ec.url_contains("?reviewed=confirmed"))
        seen["confirmed_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.save_screenshot(str(ARTIFACTS / "09-confirmed.png"))
        # the other held case is rejected from the To review list, with a reason
        driver.get(base + "/review")
        seen["review_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.save_screenshot(str(ARTIFACTS / "11-review.png"))
        driver.find_element(By.CSS_SELECTOR, "#held table.cases tr.case a[href^='/cases/']").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "form[action$='/reject']")))
        seen["rejected"] = driver.current_url.rsplit("/", 1)[1]
        driver.find_element(By.CSS_SELECTOR, "form[action$='/reject'] input[name=reason]").send_keys("误报：环卫车")
        driver.find_element(By.CSS_SELECTOR, "form[action$='/reject'] button").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.url_contains("?reviewed=rejected"))
        seen["rejected_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.save_screenshot(str(ARTIFACTS / "10-rejected.png"))

        driver.get(base + "/devices")  # the page reloads itself every 10 s: the camera's first frame comes
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.frame")))
        seen["devices_frame"] = loaded("img.frame")
        seen["devices_sparks"] = len(driver.find_elements(By.CSS_SELECTOR, "#sensors svg.spark polyline"))
        seen["devices_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.set_window_size(1400, 1500)  # the whole page: cameras, vehicles and sensors
        driver.save_screenshot(str(ARTIFACTS / "06-devices.png"))
        driver.set_window_size(1400, 1000)
        driver.find_element(By.CSS_SELECTOR, "#counters summary").click()  # the raw counters, folded away
        seen["counters_text"] = driver.find_element(By.ID, "counters").text
        driver.get(base + "/map")
        wait.until(lambda d: d.find_element(By.ID, "map").get_attribute("data-ready") == "1")
        seen["map_shapes"] = len(driver.find_elements(By.CSS_SELECTOR, "#map path.leaflet-interactive"))
        seen["map_legend"] = driver.find_element(By.ID, "legend").text
        seen["map_labels"] = [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".leaflet-tooltip")]
        driver.save_screenshot(str(ARTIFACTS / "08-map.png"))
        driver.get(base + "/")
        seen["overview_text"] = driver.find_element(By.TAG_NAME, "main").text
        driver.save_screenshot(str(ARTIFACTS / "07-overview.png"))
        seen["log"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        driver.quit()
    return seen


@pytest.mark.slow
async def test_an_operator_uses_the_console_in_a_real_browser(tmp_path):
    assert Path(CHROMIUM).exists() and Path(DRIVER).exists(), "install chromium and chromium-driver (scripts/test.sh)"
    rx = CentralReceiver().start()
    rx.set_status(503)  # the platform is down until the browser has sent the video case again
    gateway = Gateway(load_deployment(config_file(tmp_path, rx.url)))
    await gateway.start()
    try:
        gateway.bus.submit(parking_alert())
        async with asyncio.timeout(60):
            while gateway.desk.stats["cases"] < 4:
                await asyncio.sleep(0.05)
        [video] = [r for r in gateway.outbox.list(limit=100) if r.case["source"] == "video"]
        seen = await asyncio.to_thread(browse, f"http://127.0.0.1:{gateway.component('web').port}", video.case_id,
                                       lambda: rx.set_status(200))
        async with asyncio.timeout(60):  # the confirmed case reaches the platform
            while seen["confirmed"] not in rx.accepted_ids() or video.case_id not in rx.accepted_ids():
                await asyncio.sleep(0.05)
        rejected = gateway.outbox.get(seen["rejected"])
    finally:
        assert await gateway.shutdown()
        rx.stop()

    assert seen["rejected"] != seen["confirmed"] and seen["rejected"] not in rx.accepted_ids()
    assert rejected.status == "rejected" and rejected.review["reason"] == "误报：环卫车"
    assert "Held for review" in seen["held_text"] and "Confirmed." in seen["confirmed_text"]
    assert "Rule precision" in seen["review_text"] and "100%" in seen["review_text"]  # 1 of 1 confirmed
    assert "Rejected." in seen["rejected_text"] and "误报：环卫车" in seen["rejected_text"]

    assert seen["after_login_url"].endswith("/cases")
    assert seen["thumbs"] and all(w > 0 for w in seen["thumbs"])  # every thumbnail loaded
    assert "no-parking" in seen["cases_text"] and "overspeed" in seen["cases_text"]
    assert seen["evidence_alts"][:2] == ["snapshot.jpg", "crop.jpg"]
    assert all(w > 0 for w in seen["evidence"]) and seen["evidence"][0] == 480  # the snapshot, full size
    assert seen["clip_frame"] == [480]
    assert "dwell_s" in seen["case_text"] and "pending" in seen["case_text"]
    assert seen["map"] and all(w > 0 for w in seen["map"])
    assert seen["retried_url"].endswith("?retried=1")
    assert seen["devices_frame"] == [480]  # the camera's last analysed frame, drawn by the gateway
    assert "东门-01" in seen["devices_text"] and "东华门大街北侧" in seen["devices_text"]
    assert seen["devices_sparks"] == 2  # the water levels' last hours (no rain rule watches the gauge here)
    assert "Device health" in seen["counters_text"] and "positions" in seen["counters_text"]
    assert "Outbox" in seen["overview_text"]
    assert "Vehicles 2" in seen["devices_text"] and "mixer-01" in seen["devices_text"]
    assert "not in the fleet" in seen["devices_text"]  # the unknown truck's terminal
    assert "wl-underpass-01" in seen["devices_text"]  # sensors with their last reading
    for layer in ("grid", "forbidden zones", "sites", "sensors", "vehicles", "cases (24 h)"):
        assert layer in seen["map_legend"]
    assert seen["map_shapes"] > 10 and {"核心区渣土车禁行区", "东部车场"} <= set(seen["map_labels"])
    assert seen["log"] == []  # no script errors, nothing refused by the Content-Security-Policy
    for name in ("01-login", "02-cases", "03-video-case", "04-vehicle-case", "05-retried", "06-devices", "08-map",
                 "09-confirmed", "10-rejected", "11-review"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 5000
