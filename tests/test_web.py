"""The operator console over real HTTP on loopback, backed by a real SQLite outbox and evidence files:
access control (sessions, CSRF, roles, tokens, login rate limit), evidence confinement, cases with
filters, clips, /metrics, the OpenAPI document and a server that keeps answering under idle load."""

import asyncio
import hashlib
import io
import json
import os
import re
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pytest
from PIL import Image

from core.model import Case
from detectors.video.evidence import ClipBuffer
from gateway.config import WebConfig, WebToken, WebUser
from gateway.outbox import Outbox
from gateway.web.auth import hash_password
from gateway.web.server import ConsoleServer

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 23, 9, 41, 7, tzinfo=CST)
PASSWORDS = {"vera": "viewer-pass-1", "otto": "operator-pass-2", "ada": "admin-pass-3"}
ROLES = {"vera": "viewer", "otto": "operator", "ada": "admin"}
OP_TOKEN = "op-token-" + "x" * 24
VIEW_TOKEN = "view-token-" + "y" * 24
METRICS_TOKEN = "metrics-token-zzzzzzzz"
HASHES = {name: hash_password(pw) for name, pw in PASSWORDS.items()}

SNAPSHOT = {
    "site": "east-district", "gateway_id": "edge-07",
    "started_at": "2026-11-23T08:00:00+08:00", "uptime_s": 6067.2,
    "cameras": {
        "cam-012": {"online": True, "decoded_fps": 4.9, "frames_decoded": 29800, "frames_dropped": 3,
                    "frames_analysed": 5900, "inferences": 5960, "skipped_by_motion": 120, "reconnects": 0,
                    "analysis_errors": 0, "last_error": "",
                    "analysis_latency": {"buckets": [0.05, 0.1], "counts": [10, 5, 1], "sum": 1.2, "count": 16}},
        "cam-013": {"online": False, "decoded_fps": 0.0, "frames_decoded": 0, "frames_dropped": 0,
                    "inferences": 0, "skipped_by_motion": 0, "reconnects": 7,
                    "last_error": "rtsp://10.0.0.13 <timeout>"},
    },
    "rules": {"positions": 1400, "readings": 60, "vehicles": {"filter_verdicts": {"live": 1397, "impossible_jump": 3}, "rules": {}}},
    "jt808": {"frames": 1500, "decode_errors": 2, "open_connections": 2},
    "devices": {"online": 3, "offline": 1},
    "mqtt-source": {"received": 40, "undecodable": 1, "reconnects": 2},
    "outbox": {"pending": 2, "delivered": 0, "dead": 0, "fill_ratio": 0.0},
    "central": {"delivered": 0, "failed_attempts": 4},
    "tasks": {"camera:cam-012": {"restarts": 0, "state": "running"}},
    "pumps": {"p1": {"rpm": 1200}},  # a section the console does not know about
    "recent_alerts": [
        {"rule": "level-high", "state": "open", "subject_kind": "sensor", "subject_id": "wl-03",
         "place": "underpass", "severity": "critical", "time": "2026-11-23T09:40:00+08:00",
         "message": "water level 42 cm > 30 cm"},
    ],
}


def jpeg_bytes(colour=(200, 30, 30), size=(640, 360)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def clip_bytes(n: int = 6) -> bytes:
    clip = ClipBuffer(10)
    for i in range(n):
        clip.add(i * 0.5, np.full((72, 128, 3), 40 * i, np.uint8))
    return clip.to_avi()


def make_case(root, case_id, name, code, rule, files: dict[str, tuple[str, bytes]], when=T0, source="video",
              street="东华门街道", grid="11010100100101") -> Case:
    folder = root / when.strftime("%Y%m%d") / case_id
    folder.mkdir(parents=True)
    evidence = []
    for fname, (media, data) in files.items():
        path = folder / fname
        path.write_bytes(data)
        evidence.append({"name": fname, "media_type": media, "path": str(path),
                         "sha256": hashlib.sha256(data).hexdigest(), "size": str(len(data))})
    return Case(
        case_id=case_id, source=source,
        category={"key": rule, "type": "event", "major": code[:2], "minor": code[2:], "code": code, "name": name},
        rule=rule, severity="warning", detected_at=when,
        location={"lon": 116.39, "lat": 39.90, "grid_code": grid, "street": street},
        subject={"kind": "camera", "id": "cam-012", "place": "east-gate", "track_id": 57},
        evidence=tuple(evidence), facts={"dwell_s": 312, "object": "car", "note": "<script>alert(1)</script>"},
        message=f"{name}: car parked 312 s",
    )


PARKING = "edge-07-01JD3K9V4Q000000000000000A"
VENDOR = "edge-07-01JD3K9V4Q000000000000000B"
TRUCK = "edge-07-01JD3K9V4Q000000000000000C"


@pytest.fixture
async def site(tmp_path):
    data = tmp_path / "data"
    root = data / "evidence"
    root.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("not for the web")
    outbox = Outbox(data / "cases.sqlite3")
    snapshot = json.loads(json.dumps(SNAPSHOT))
    parking = make_case(root, PARKING, "机动车乱停放", "0505", "no-parking-east-gate",
                        {"snapshot.jpg": ("image/jpeg", jpeg_bytes()), "clip.avi": ("video/x-msvideo", clip_bytes())})
    vendor = make_case(root, VENDOR, "无照经营游商", "0501", "no-vendors",
                       {"snapshot.jpg": ("image/jpeg", jpeg_bytes((30, 200, 30)))}, when=T0 + timedelta(minutes=1),
                       street="景山街道", grid="11010100200301")
    truck = make_case(root, TRUCK, "渣土车违规", "9001", "forbidden-zone",
                      {"map.png": ("image/png", jpeg_bytes())}, when=T0 + timedelta(minutes=2), source="vehicle")
    # A link planted in a case folder that points at the case database, listed as evidence.
    link = root / T0.strftime("%Y%m%d") / PARKING / "db.jpg"
    os.symlink(data / "cases.sqlite3", link)
    linked = Case.from_json({**parking.to_json(), "case_id": "edge-07-linked",
                             "evidence": [{"name": "db.jpg", "media_type": "image/jpeg", "path": str(link)}]})
    # A damaged (or forged) case whose evidence points outside the evidence folder.
    outside = Case.from_json({**vendor.to_json(), "case_id": "edge-07-outside",
                              "evidence": [{"name": "secret.txt", "media_type": "text/plain",
                                            "path": str(tmp_path / "secret.txt")}]})
    outbox.enqueue_many([linked, outside], now=(T0 - timedelta(hours=1)).timestamp())
    outbox.enqueue_many([parking], now=T0.timestamp())
    outbox.enqueue_many([vendor], now=(T0 + timedelta(minutes=1)).timestamp())
    outbox.enqueue_many([truck], now=(T0 + timedelta(minutes=2)).timestamp())
    outbox.mark_dead("edge-07-outside", 422, '{"error": "bad grid code"}')
    cfg = WebConfig(users=[WebUser(name=n, role=ROLES[n], password_hash=h) for n, h in HASHES.items()],
                    tokens=[WebToken(name="dispatch", role="operator", token=OP_TOKEN),
                            WebToken(name="dashboard", role="viewer", token=VIEW_TOKEN)],
                    metrics_token=METRICS_TOKEN, login_attempts=3)
    server = ConsoleServer(outbox, lambda: snapshot, evidence_root=root, port=0, web_config=cfg, timezone=CST)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    yield {"base": base, "server": server, "outbox": outbox, "snapshot": snapshot, "root": root, "data": data}
    await server.stop()
    outbox.close()


def client(base: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base, timeout=20, headers=headers)


def form_csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def login(c: httpx.AsyncClient, user: str, password: str | None = None) -> httpx.Response:
    page = await c.get("/login")
    return await c.post("/login", data={"user": user, "password": password or PASSWORDS[user],
                                        "csrf": form_csrf(page.text), "next": "/cases"})


def every_route(server: ConsoleServer) -> list[tuple[str, str]]:
    """Each route of the application with its placeholders filled in."""
    out = []
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if path is None or route.method == "HEAD":
            continue
        path = (path.replace("{case_id}", PARKING).replace("{name}", "clip.avi").replace("{index}", "0"))
        out.append((route.method, path))
    return out


# -- access control ---------------------------------------------------------------------------------

async def test_nothing_but_healthz_and_login_is_served_without_credentials(site):
    server = site["server"]
    routes = every_route(server)
    assert ("GET", f"/evidence/{PARKING}/clip.avi/frames/0.jpg") in routes and ("GET", "/metrics") in routes
    assert ("GET", "/devices") in routes and ("GET", "/api/devices") in routes
    assert ("GET", "/cameras/clip.avi/last.jpg") in routes  # a camera's last frame: an image, answered 401
    async with client(site["base"]) as anon, client(site["base"], "not-a-token-" + "q" * 20) as forged:
        for method, path in routes:
            if path in ("/healthz", "/login") or path.startswith("/static"):
                continue
            for c in (anon, forged):
                r = await c.request(method, path, follow_redirects=False)
                if c is anon and method == "GET" and not path.startswith(("/api/", "/evidence/", "/metrics",
                                                                           "/cameras/")):
                    assert r.status_code == 302 and r.headers["location"].startswith("/login?next="), (method, path)
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
                assert "机动车乱停放" not in r.text and "cam-012" not in r.text
        r = await anon.get("/healthz")
        assert r.status_code == 200 and r.text.strip() == "ok"
        # the metrics token opens /metrics only
        async with client(site["base"], METRICS_TOKEN) as prom:
            assert (await prom.get("/metrics")).status_code == 200
            assert (await prom.get("/api/cases")).status_code == 401


async def test_login_sets_a_strict_httponly_session_cookie_and_logout_ends_it(site):
    async with client(site["base"]) as c:
        r = await login(c, "vera")
        assert r.status_code == 303 and r.headers["location"] == "/cases"
        cookie = r.headers["set-cookie"]
        assert "citygate_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # not behind TLS in this config
        page = await c.get("/")
        assert page.status_code == 200 and "vera (viewer)" in page.text and "east-district" in page.text
        assert "机动车乱停放" in page.text and "rtsp://10.0.0.13 &lt;timeout&gt;" in page.text
        assert "Pumps" in page.text and "1200" in page.text  # unknown snapshot section shown generically
        assert "<script>alert" not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        out = await c.post("/logout", data={"csrf": form_csrf(page.text)})
        assert out.status_code == 303
        assert (await c.get("/", follow_redirects=False)).status_code == 302


async def test_wrong_password_and_forged_login_form_are_refused(site):
    async with client(site["base"]) as c:
        r = await login(c, "vera", "wrong")
        assert r.status_code == 401 and "Wrong user or password" in r.text and "citygate_session" not in c.cookies
        r = await login(c, "nobody", "whatever")
        assert r.status_code == 401
        page = await c.get("/login")  # a login never sends the browser to another site
        r = await c.post("/login", data={"user": "vera", "password": PASSWORDS["vera"], "csrf": form_csrf(page.text),
                                         "next": "//evil.example/phish"})
        assert r.status_code == 303 and r.headers["location"] == "/"
        # a login form posted without the token of the login page (login CSRF)
        r = await httpx.AsyncClient(base_url=site["base"]).post("/login", data={"user": "vera",
                                                                               "password": PASSWORDS["vera"]})
        assert r.status_code == 403


async def test_login_attempts_are_limited_per_user_and_per_address(site):
    async with client(site["base"]) as c:
        for _ in range(3):
            assert (await login(c, "otto", "guess")).status_code == 401
        r = await login(c, "otto")  # the right password, but too late
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "Too many failed logins" in r.text
        assert (await login(c, "vera")).status_code == 303  # another user is not locked out
        for user in ("x1", "x2", "x3"):  # 3 + 3 failures from this address reach its limit (2 x 3)
            assert (await login(c, user, "guess")).status_code == 401
        assert (await login(c, "ada")).status_code == 429
    assert site["server"].stats()["logins_throttled"] == 2


async def test_a_viewer_cannot_retry_an_operator_can_with_the_csrf_token(site):
    outbox = site["outbox"]
    async with client(site["base"]) as viewer, client(site["base"]) as operator:
        await login(viewer, "vera")
        page = await viewer.get("/cases/edge-07-outside")
        assert "Send again now" not in page.text and "An operator can send this case again" in page.text
        r = await viewer.post("/cases/edge-07-outside/retry", data={"csrf": form_csrf(page.text)})
        assert r.status_code == 403 and "needs the operator role" in r.text
        r = await viewer.post("/api/cases/edge-07-outside/retry", headers={"X-CSRF-Token": form_csrf(page.text)})
        assert r.status_code == 403
        assert outbox.get("edge-07-outside").status == "dead"

        await login(operator, "otto")
        page = await operator.get("/cases/edge-07-outside")
        assert "Send again now" in page.text and "HTTP 422" in page.text and "bad grid code" in page.text
        assert (await operator.post("/cases/edge-07-outside/retry", data={})).status_code == 403  # no CSRF token
        assert (await operator.post("/cases/edge-07-outside/retry", data={"csrf": "forged"})).status_code == 403
        assert (await operator.post("/api/cases/edge-07-outside/retry")).status_code == 403
        assert outbox.get("edge-07-outside").status == "dead"
        r = await operator.post("/cases/edge-07-outside/retry", data={"csrf": form_csrf(page.text)})
        assert r.status_code == 303 and r.headers["location"].endswith("?retried=1")
        assert outbox.get("edge-07-outside").status == "pending"
    async with client(site["base"], VIEW_TOKEN) as dashboard, client(site["base"], OP_TOKEN) as dispatch:
        assert (await dashboard.post(f"/api/cases/{PARKING}/retry")).status_code == 403
        r = await dispatch.post(f"/api/cases/{PARKING}/retry")  # a token needs no CSRF token
        assert r.status_code == 200 and r.json()["status"] == "pending"
        assert (await dispatch.get("/api/users")).status_code == 403  # admin only
    async with client(site["base"]) as admin:
        await login(admin, "ada")
        users = (await admin.get("/api/users")).json()
        assert {u["name"] for u in users} == {"vera", "otto", "ada", "dispatch", "dashboard"}
        assert "argon2" not in json.dumps(users)


def test_a_console_beyond_loopback_needs_credentials(tmp_path):
    with pytest.raises(ValueError, match="no user or token"):
        WebConfig(host="0.0.0.0")
    assert WebConfig(host="0.0.0.0", users_file="users.txt").host == "0.0.0.0"
    with Outbox(tmp_path / "o.sqlite3") as outbox, pytest.raises(ValueError, match="refusing"):
        ConsoleServer(outbox, dict, evidence_root=tmp_path, host="0.0.0.0", port=0)


async def test_without_configured_users_a_one_run_admin_password_is_made(tmp_path, caplog):
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        server = ConsoleServer(outbox, dict, evidence_root=tmp_path, port=0)
        await server.start()
        try:
            password = server.console.accounts.generated_password
            assert password and password in caplog.text
            async with client(f"http://127.0.0.1:{server.port}") as c:
                assert (await c.get("/api/me")).status_code == 401
                page = await c.get("/login")
                r = await c.post("/login", data={"user": "admin", "password": password, "csrf": form_csrf(page.text)})
                assert r.status_code == 303
                assert (await c.get("/api/me")).json() == {"name": "admin", "role": "admin", "via": "session"}
        finally:
            await server.stop()


# -- evidence -----------------------------------------------------------------------------------------

async def test_evidence_is_served_with_its_media_type_and_thumbnails(site):
    async with client(site["base"], VIEW_TOKEN) as c:
        r = await c.get(f"/evidence/{PARKING}/snapshot.jpg")
        data = (site["root"] / T0.strftime("%Y%m%d") / PARKING / "snapshot.jpg").read_bytes()
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == data
        thumb = await c.get(f"/evidence/{PARKING}/snapshot.jpg?size=thumb")
        assert thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (192, 108)
        clip = await c.get(f"/evidence/{PARKING}/clip.avi")
        assert clip.status_code == 200 and clip.content[:4] == b"RIFF"
        assert clip.headers["content-disposition"] == "attachment"
        frame = await c.get(f"/evidence/{PARKING}/clip.avi/frames/3.jpg")
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        pixel = np.asarray(Image.open(io.BytesIO(frame.content)))[10, 10]
        assert abs(int(pixel[0]) - 120) < 8  # the 4th frame, not another one
        assert (await c.get(f"/evidence/{PARKING}/clip.avi/frames/6.jpg")).status_code == 404
        assert (await c.get(f"/evidence/{PARKING}/snapshot.jpg/frames/0.jpg")).status_code == 404


async def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are (httpx would normalise '..' away) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.mark.parametrize("path", [
    "/evidence/{id}/../../cases.sqlite3",
    "/evidence/{id}/..%2F..%2F..%2Fcases.sqlite3",
    "/evidence/{id}/%2E%2E/%2E%2E/%2E%2E/cases.sqlite3",
    "/evidence/{id}/cases.sqlite3",
    "/evidence/{id}/",
    "/evidence/nope/snapshot.jpg",
    "/evidence/edge-07-outside/secret.txt",  # listed in the case, but outside the evidence folder
    "/evidence/edge-07-linked/db.jpg",  # a link in a case folder pointing at the case database
    "/static/../cases.sqlite3",
    "/static/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
])
async def test_evidence_never_serves_other_files(site, path):
    port = site["server"].port
    target = path.format(id=PARKING)
    answer = await raw(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEW_TOKEN}\r\n"
                             "Connection: close\r\n\r\n".encode())
    assert answer.split(b" ")[1] in (b"400", b"403", b"404"), answer[:200]
    assert b"not for the web" not in answer and b"SQLite format" not in answer and b"root:" not in answer


# -- cases --------------------------------------------------------------------------------------------

async def test_cases_newest_first_with_filters_and_search(site):
    async with client(site["base"], VIEW_TOKEN) as c:
        async def ids(**params):
            r = await c.get("/api/cases", params=params)
            assert r.status_code == 200, r.text
            return [x["case_id"] for x in r.json()["cases"]]

        assert await ids() == [TRUCK, VENDOR, PARKING, "edge-07-outside", "edge-07-linked"]
        assert await ids(source="vehicle") == [TRUCK]
        assert await ids(status="dead") == ["edge-07-outside"]
        assert await ids(category="0505") == [PARKING, "edge-07-linked"]
        assert await ids(category="无照经营游商") == [VENDOR, "edge-07-outside"]
        assert await ids(street="景山") == [VENDOR, "edge-07-outside"]
        assert await ids(grid="110101002") == [VENDOR, "edge-07-outside"]
        assert await ids(q="渣土") == [TRUCK]
        assert await ids(q="100%") == []  # LIKE wildcards are literal
        assert await ids(since="2026-11-23T09:41", until="2026-11-23T09:43") == [VENDOR, PARKING]
        assert await ids(limit=2, offset=1) == [VENDOR, PARKING]
        page = (await c.get("/api/cases", params={"limit": 2})).json()
        assert page["total"] == 5 and page["cases"][0]["category"]["name"] == "渣土车违规"
        for bad in ({"status": "lost"}, {"limit": "many"}, {"limit": 0}, {"since": "yesterday"}):
            r = await c.get("/api/cases", params=bad)
            assert r.status_code == 400 and list(bad)[0] in r.json()["error"]
        one = (await c.get(f"/api/cases/{PARKING}")).json()
        assert one["case_id"] == PARKING and one["evidence"][0]["media_type"] == "image/jpeg"
        assert (await c.get("/api/cases/edge-07-outside")).json()["dead_letters"][0]["status_code"] == 422
        assert (await c.get("/api/cases/unknown")).status_code == 404


async def test_case_pages_show_evidence_clip_facts_and_delivery(site):
    async with client(site["base"]) as c:
        await login(c, "vera")
        page = await c.get("/cases", params={"street": "东华门"})
        assert page.status_code == 200 and PARKING in page.text and VENDOR not in page.text
        assert f'src="/evidence/{PARKING}/snapshot.jpg?size=thumb"' in page.text
        r = await c.get(f"/cases/{PARKING}")
        assert f'<img class="evidence" src="/evidence/{PARKING}/snapshot.jpg"' in r.text
        assert f'data-frames="/evidence/{PARKING}/clip.avi/frames/" data-count="6"' in r.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "<script>alert" not in r.text
        assert "dwell_s" in r.text and "pending" in r.text and "东华门街道" in r.text
        assert (await c.get("/cases/nope")).status_code == 404
        assert (await c.get("/cases", params={"since": "soon"})).status_code == 400
        devices = await c.get("/devices")
        assert "cam-013" in devices.text and "rtsp://10.0.0.13 &lt;timeout&gt;" in devices.text


async def test_failing_snapshot_still_shows_cases(tmp_path):
    def broken():
        raise RuntimeError("camera table locked")

    cfg = WebConfig(tokens=[WebToken(name="t", role="viewer", token=VIEW_TOKEN)])
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        server = ConsoleServer(outbox, broken, evidence_root=tmp_path, port=0, web_config=cfg)
        await server.start()
        try:
            async with client(f"http://127.0.0.1:{server.port}", VIEW_TOKEN) as c:
                assert (await c.get("/api/status")).status_code == 500
                assert (await c.get("/api/cases")).json()["total"] == 0
                assert (await c.get("/metrics")).status_code == 200
        finally:
            await server.stop()


# -- metrics, OpenAPI, load ---------------------------------------------------------------------------

def sample(text: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    m = re.search(pattern, text)
    return None if m is None else float(m.group(1))


async def test_metrics_move_when_work_flows(site):
    snapshot, outbox = site["snapshot"], site["outbox"]
    async with client(site["base"], METRICS_TOKEN) as prom:
        before = (await prom.get("/metrics")).text
        assert sample(before, "citygate_frames_total", camera="cam-012", stage="decoded") == 29800
        assert sample(before, "citygate_messages_total", source="jt808") == 1500
        assert sample(before, "citygate_decode_errors_total", source="jt808") == 2
        assert sample(before, "citygate_reconnects_total", source="camera:cam-013") == 7
        assert sample(before, "citygate_inference_seconds_bucket", camera="cam-012", le="0.1") == 15
        assert sample(before, "citygate_inference_seconds_count", camera="cam-012") == 16
        assert sample(before, "citygate_outbox_cases", status="pending") == 4
        assert sample(before, "citygate_delivery_errors_total", status="422") == 1
        assert sample(before, "citygate_cases_by_rule", rule="no-vendors") == 2
        assert sample(before, "citygate_outbox_oldest_pending_age_seconds") > 0

        # work flows: frames decoded, a new case filed, one rejected by the platform
        snapshot["cameras"]["cam-012"]["frames_decoded"] += 25
        snapshot["jt808"]["frames"] += 3
        new = make_case(site["root"], "edge-07-new", "无照经营游商", "0501", "no-vendors",
                        {"s.jpg": ("image/jpeg", jpeg_bytes())}, when=T0 + timedelta(hours=1))
        outbox.enqueue(new)
        outbox.mark_dead(VENDOR, 422, "no")
        after = (await prom.get("/metrics")).text
        assert sample(after, "citygate_frames_total", camera="cam-012", stage="decoded") == 29825
        assert sample(after, "citygate_messages_total", source="jt808") == 1503
        assert sample(after, "citygate_cases_by_rule", rule="no-vendors") == 3
        assert sample(after, "citygate_delivery_errors_total", status="422") == 2
        assert sample(after, "citygate_outbox_cases", status="dead") == 2


async def test_openapi_lists_every_api_route(site):
    server = site["server"]
    async with client(site["base"], VIEW_TOKEN) as c:
        doc = (await c.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    routes = set()
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/api/") and route.method != "HEAD":
            routes.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes and routes == documented


async def test_healthz_answers_while_100_idle_connections_are_open(site):
    port = site["server"].port  # from four other addresses: within the per-address limit of 64
    idle = [await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 4}", 0))
            for i in range(100)]
    try:
        half = idle[0][1]
        half.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # one never finishes its request head
        await half.drain()
        async with client(site["base"]) as c:
            for _ in range(3):
                r = await c.get("/healthz")
                assert r.status_code == 200 and r.text.strip() == "ok"
        async with client(site["base"], VIEW_TOKEN) as c:
            assert (await c.get("/api/cases")).status_code == 200
    finally:
        for _, writer in idle:
            writer.close()


async def refused(port: int, source: str) -> bool:
    """Open a connection from `source`; True when the console closes it at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        return await asyncio.wait_for(reader.read(1), 0.5) == b""
    except TimeoutError:  # held open, waiting for a request
        return False
    finally:
        writer.close()


async def test_connections_over_the_limits_are_closed_and_the_rest_keep_working(tmp_path):
    outbox = Outbox(tmp_path / "cases.sqlite3")
    cfg = WebConfig(tokens=[WebToken(name="dashboard", role="viewer", token=VIEW_TOKEN)],
                    max_connections=12, max_connections_per_address=5)
    server = ConsoleServer(outbox, lambda: json.loads(json.dumps(SNAPSHOT)), evidence_root=tmp_path, port=0,
                           web_config=cfg, timezone=CST)
    await server.start()
    port, held = server.port, []
    try:
        for _ in range(5):  # one address up to its limit
            held.append(await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)))
        assert await refused(port, "127.0.0.2")
        async with client(f"http://127.0.0.1:{port}", VIEW_TOKEN) as c:  # others are served
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/api/cases")).status_code == 200
        for i in range(7):  # the whole console up to its limit, from two more addresses
            held.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{3 + i % 2}", 0)))
        await asyncio.sleep(0.1)
        assert await refused(port, "127.0.0.9")  # a fresh address finds the console full
        assert server.stats()["connections_refused"] == 2
        for _, writer in held[:3]:  # freed connections are available again
            writer.close()
        await asyncio.sleep(0.2)
        assert not await refused(port, "127.0.0.9")
    finally:
        for _, writer in held:
            writer.close()
        await server.stop()
        outbox.close()


@pytest.mark.parametrize("request_bytes", [
    b"HELLO\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS hello sent to plain HTTP
])
async def test_malformed_request_gets_4xx_and_server_keeps_serving(site, request_bytes):
    answer = await raw(site["server"].port, request_bytes)
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ")[1][:1] == b"4"
    async with client(site["base"]) as c:
        assert (await c.get("/healthz")).text.strip() == "ok"


async def test_large_forms_are_refused(site):
    async with client(site["base"]) as c:
        page = await c.get("/login")
        r = await c.post("/login", data={"user": "vera", "password": "p" * 200_000, "csrf": form_csrf(page.text)})
        assert r.status_code == 413


async def test_secure_cookies_behind_tls_and_a_broken_users_file_leaves_config_users(tmp_path, caplog):
    users_file = tmp_path / "users"
    users_file.write_text("not a user line\n")
    cfg = WebConfig(users=[WebUser(name="vera", role="viewer", password_hash=HASHES["vera"])],
                    users_file=str(users_file), secure_cookies=True)
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        server = ConsoleServer(outbox, dict, evidence_root=tmp_path, port=0, web_config=cfg, users_file=users_file)
        assert "users:1: expected 'name:role:argon2-hash'" in caplog.text
        assert server.console.accounts.generated_password is None
        await server.start()
        try:
            async with client(f"http://127.0.0.1:{server.port}") as c:
                page = await c.get("/login")
                assert "Secure" in page.headers["set-cookie"]
                token = form_csrf(page.text)  # a browser sends Secure cookies over TLS only: by hand here
                r = await c.post("/login", data={"user": "vera", "password": PASSWORDS["vera"], "csrf": token},
                                 headers={"Cookie": f"citygate_login={token}"})
                assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
        finally:
            await server.stop()


def test_latency_histogram_records_each_timed_call():
    from gateway.web.metrics import LatencyHistogram, exposition, timed

    hist = LatencyHistogram(buckets=(0.5, 1.0))
    double = timed(lambda x: 2 * x, hist)
    assert [double(i) for i in range(3)] == [0, 2, 4]
    hist.observe(0.75)
    hist.observe(5.0)
    snap = hist.snapshot()
    assert snap["counts"] == [3, 1, 1] and snap["count"] == 5 and snap["sum"] >= 5.75
    text = exposition({"cameras": {"c1": {"analysis_latency": snap}}}, {}).decode()
    assert 'citygate_inference_seconds_bucket{camera="c1",le="1.0"} 4.0' in text
    assert 'citygate_inference_seconds_bucket{camera="c1",le="+Inf"} 5.0' in text


async def test_metrics_of_a_running_gateway_move_when_a_terminal_drives(tmp_path):
    """A real gateway: a JT/T 808 terminal drives a recorded track over TCP into it, the overspeed
    rule files a case, and the scrape before and after shows it."""
    import textwrap
    from pathlib import Path

    from gateway.deployment import load_deployment
    from gateway.runtime import Gateway
    from gateway.simulator import load_track, simulate

    track = Path(__file__).resolve().parent.parent / "configs" / "data" / "tracks" / "mixer-01.csv"
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent(f"""
        site: scrape
        data_dir: data
        web: {{host: 127.0.0.1, port: 0, metrics_token: {METRICS_TOKEN}}}
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: 0}}
          fleet:
            vehicles:
              - {{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50,
                  working_hours: ["00:00-24:00"]}}  # one case (overspeed) whatever the hour
        """), encoding="utf-8")
    gateway = Gateway(load_deployment(config))
    await gateway.start()
    try:
        async with client(f"http://127.0.0.1:{gateway.component('web').port}", METRICS_TOKEN) as prom:
            before = (await prom.get("/metrics")).text
            positions = load_track(track)
            acked = await simulate("127.0.0.1", gateway.component('jt808').port, positions, speed=0, say=lambda _: None)
            assert acked == len(positions)
            async with asyncio.timeout(30):
                while gateway.desk.stats["cases"] < 1:
                    await asyncio.sleep(0.05)
            after = (await prom.get("/metrics")).text
    finally:
        assert await gateway.shutdown()
    assert (sample(before, "citygate_messages_total", source="jt808") or 0) == 0
    assert sample(after, "citygate_messages_total", source="jt808") >= len(positions)
    assert sample(after, "citygate_messages_total", source="positions") >= len(positions)
    assert sample(before, "citygate_cases_by_rule", rule="overspeed") is None
    assert sample(after, "citygate_cases_by_rule", rule="overspeed") == 1
    assert sample(after, "citygate_outbox_cases", status="stored") >= 1
    assert sample(after, "citygate_case_desk_total", outcome="cases") >= 1


async def test_map_layers_are_converted_to_the_map_coordinate_system(tmp_path):
    import textwrap

    from core.coords import gcj02_to_wgs84, wgs84_to_gcj02
    from gateway.config import load_config

    zone = [[116.4012, 39.9064], [116.4162, 39.9064], [116.4162, 39.9214], [116.4012, 39.9214]]

    def layers_for(tiles_crs: str) -> dict:
        path = tmp_path / f"{tiles_crs}.yaml"
        path.write_text(textwrap.dedent(f"""
            site: maps
            data_dir: data-{tiles_crs}
            web: {{port: 0, map_tiles: "http://tiles.city.local/{{z}}/{{x}}/{{y}}.png", map_tiles_crs: {tiles_crs},
                   tokens: [{{name: t, role: viewer, token: {VIEW_TOKEN}}}]}}
            vehicles:
              fleet:
                zones: [{{id: centre, name: 核心区禁行区, crs: gcj02, polygon: {zone}}}]
                roads: [{{id: r1, name: 东华门大街, line: [[116.40, 39.91], [116.41, 39.91]]}}]
            sensors:
              devices: [{{id: wl-1, kind: water_level, lon: 116.404, lat: 39.9105}}]
            """), encoding="utf-8")
        return load_config(path)

    for crs in ("wgs84", "gcj02"):
        config = layers_for(crs)
        with Outbox(config.data_path / "cases.sqlite3") as outbox:
            outbox.enqueue(make_case(config.data_path / "evidence", "maps-1", "机动车乱停放", "0505", "no-parking",
                                     {"s.jpg": ("image/jpeg", jpeg_bytes())}, when=datetime.now(CST)))
            server = ConsoleServer(outbox, dict, evidence_root=config.data_path / "evidence", port=0,
                                   gateway_config=config)
            await server.start()
            try:
                async with client(f"http://127.0.0.1:{server.port}", VIEW_TOKEN) as c:
                    data = (await c.get("/api/map")).json()
            finally:
                await server.stop()
        assert data["crs"] == crs and data["tiles"]["url"].startswith("http://tiles.city.local/")
        layers = data["layers"]
        assert len(layers["grid"]["features"]) > 0  # the shipped demo grid
        [centre] = layers["zones"]["features"]
        [road] = layers["roads"]["features"]
        [sensor] = layers["sensors"]["features"]
        [case] = layers["cases"]["features"]
        assert centre["properties"]["name"] == "核心区禁行区" and road["properties"]["name"] == "东华门大街"
        assert case["properties"]["id"] == "maps-1"
        first = centre["geometry"]["coordinates"][0][0]
        if crs == "wgs84":  # the GCJ-02 zone moved onto the GNSS plane; WGS-84 layers untouched
            assert first == pytest.approx(list(gcj02_to_wgs84(*zone[0])), abs=1e-6)
            assert sensor["geometry"]["coordinates"] == pytest.approx([116.404, 39.9105])
        else:  # the GCJ-02 zone as drawn; WGS-84 layers and case positions moved onto the tiles' plane
            assert first == pytest.approx(zone[0], abs=1e-6)
            assert sensor["geometry"]["coordinates"] == pytest.approx(list(wgs84_to_gcj02(116.404, 39.9105)), abs=1e-6)
            assert case["geometry"]["coordinates"] == pytest.approx(list(wgs84_to_gcj02(116.39, 39.90)), abs=1e-6)
