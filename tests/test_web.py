"""Status page and JSON API over real HTTP on loopback, backed by a real SQLite outbox."""

import asyncio
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from PIL import Image

from core.model import Case
from gateway.outbox import Outbox
from gateway.web.server import StatusServer

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 23, 9, 41, 7, tzinfo=CST)

SNAPSHOT = {
    "site": "east-district",
    "started_at": "2026-11-23T08:00:00+08:00",
    "uptime_s": 6067.2,
    "cameras": {
        "cam-012": {"online": True, "decoded_fps": 4.9, "frames_decoded": 29800, "frames_dropped": 3,
                    "inferences": 5960, "skipped_by_motion": 120, "reconnects": 0, "last_error": None},
        "cam-013": {"online": False, "decoded_fps": 0.0, "frames_decoded": 0, "frames_dropped": 0,
                    "inferences": 0, "skipped_by_motion": 0, "reconnects": 7,
                    "last_error": "rtsp://10.0.0.13 <timeout>"},
    },
    "vehicles": {"terminals_connected": 2, "positions": 1400, "filtered": {"jump": 3}, "open_alerts": 1},
    "outbox": {"pending": 2, "delivered": 0, "dead": 0, "fill_ratio": 0.0, "worker": "backing off"},
    "tasks": {"camera:cam-012": {"restarts": 0, "state": "running"}},
    "pumps": {"p1": {"rpm": 1200}},  # a section the page does not know about
    "recent_alerts": [
        {"rule": "level-high", "state": "open", "subject_kind": "sensor", "subject_id": "wl-03",
         "place": "underpass", "severity": "critical", "time": "2026-11-23T09:40:00+08:00",
         "message": "water level 42 cm > 30 cm"},
    ],
    "errors": {"decode": 0},
}


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def make_case(evidence_root, case_id, name, code, rule, data: bytes, when=T0) -> Case:
    folder = evidence_root / when.strftime("%Y%m%d") / case_id
    folder.mkdir(parents=True)
    path = folder / "snapshot.jpg"
    path.write_bytes(data)
    return Case(
        case_id=case_id, source="video",
        category={"key": rule, "type": "event", "major": code[:2], "minor": code[2:], "code": code, "name": name},
        rule=rule, severity="warning", detected_at=when,
        location={"lon": 116.39, "lat": 39.90, "grid_code": "11010100100101", "street": "东华门街道"},
        subject={"kind": "camera", "id": "cam-012", "place": "east-gate", "track_id": 57},
        evidence=({"name": "snapshot.jpg", "media_type": "image/jpeg", "path": str(path),
                   "sha256": hashlib.sha256(data).hexdigest(), "size": str(len(data))},),
        facts={"dwell_s": 312, "object": "car", "note": "<script>alert(1)</script>"},
        message="car parked 312 s",
    )


@pytest.fixture
async def web(tmp_path):
    root = tmp_path / "evidence"
    (tmp_path / "secret.txt").write_text("not for the web")
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    data = jpeg_bytes()
    parking = make_case(root, "edge-07-01JD3K9V4Q000000000000000A", "机动车乱停放", "0505",
                        "no-parking-east-gate", data)
    vendor = make_case(root, "edge-07-01JD3K9V4Q000000000000000B", "无照经营游商", "0501", "no-vendors",
                       data, when=T0 + timedelta(minutes=1))
    # A damaged (or forged) case whose evidence points outside the evidence folder.
    outside = Case.from_json({**vendor.to_json(), "case_id": "edge-07-outside",
                              "evidence": [{"name": "secret.txt", "media_type": "text/plain",
                                            "path": str(tmp_path / "secret.txt")}]})
    outbox.enqueue_many([parking, vendor, outside])
    outbox.mark_dead("edge-07-outside", 422, '{"error": "bad grid code"}')
    server = StatusServer(outbox, lambda: SNAPSHOT, evidence_root=root, port=0)
    await server.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        yield client, server, parking, data
    await server.stop()
    outbox.close()


async def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are (httpx would normalise '..' away) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_index_shows_cases_cameras_sections_and_alerts(web):
    client, _, parking, _ = web
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'http-equiv="refresh" content="5"' in html
    assert "east-district" in html and "01:41:07" in html  # site and uptime
    assert "机动车乱停放" in html and "0505" in html and "无照经营游商" in html
    assert parking.case_id in html and f'href="/cases/{parking.case_id}"' in html
    assert f'src="/evidence/{parking.case_id}/snapshot.jpg"' in html  # thumbnail
    assert "11010100100101" in html and "东华门街道" in html
    assert "cam-013" in html and "rtsp://10.0.0.13 &lt;timeout&gt;" in html  # camera error, escaped
    assert "Pumps" in html and "1200" in html  # unknown section rendered generically
    assert "backing off" in html  # extra outbox key from the snapshot
    assert "water level 42 cm" in html
    assert "http://" not in html.replace('href="/', "")  # nothing from outside the box
    assert "<script" not in html


async def test_case_page_shows_evidence_inline_and_escapes_facts(web):
    client, _, parking, _ = web
    r = await client.get(f"/cases/{parking.case_id}")
    assert r.status_code == 200
    assert f'<img class="evidence" src="/evidence/{parking.case_id}/snapshot.jpg"' in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "<script>" not in r.text
    assert "citygate cases retry " + parking.case_id in r.text
    assert (await client.get("/cases/nope")).status_code == 404


async def test_dead_case_page_shows_the_rejection(web):
    client, *_ = web
    r = await client.get("/cases/edge-07-outside")
    assert r.status_code == 200
    assert "HTTP 422" in r.text and "bad grid code" in r.text


async def test_evidence_is_served_with_its_media_type(web):
    client, _, parking, data = web
    r = await client.get(f"/evidence/{parking.case_id}/snapshot.jpg")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content == data
    head = await client.head(f"/evidence/{parking.case_id}/snapshot.jpg")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""


@pytest.mark.parametrize("path", [
    "/evidence/{id}/../../etc/passwd",
    "/evidence/{id}/..%2F..%2F..%2Fetc%2Fpasswd",
    "/evidence/{id}/outbox.sqlite3",
    "/evidence/{id}/",
    "/evidence/nope/snapshot.jpg",
    "/evidence/edge-07-outside/secret.txt",  # listed in the case, but outside evidence_root
])
async def test_evidence_never_serves_other_files(web, path):
    _, server, parking, _ = web
    answer = await raw(server.port, f"GET {path.format(id=parking.case_id)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"not for the web" not in answer and b"root:" not in answer


async def test_api_cases_lists_by_status(web):
    client, _, parking, _ = web
    r = await client.get("/api/cases", params={"status": "pending"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    cases = r.json()
    assert [c["case_id"] for c in cases] == ["edge-07-01JD3K9V4Q000000000000000B", parking.case_id]
    first = cases[1]
    assert first["status"] == "pending" and first["attempts"] == 0 and first["recurrences"] == 0
    assert first["category"]["name"] == "机动车乱停放" and first["last_error"] is None
    dead = (await client.get("/api/cases?status=dead")).json()
    assert [c["case_id"] for c in dead] == ["edge-07-outside"]
    assert dead[0]["last_error"] == "rejected with HTTP 422"
    assert len((await client.get("/api/cases?limit=1")).json()) == 1
    assert (await client.get("/api/cases?status=lost")).status_code == 400
    assert (await client.get("/api/cases?limit=many")).status_code == 400


async def test_api_case_by_id(web):
    client, _, parking, _ = web
    r = await client.get(f"/api/cases/{parking.case_id}")
    assert r.status_code == 200 and r.json()["case_id"] == parking.case_id
    assert r.json()["evidence"][0]["media_type"] == "image/jpeg"
    dead = (await client.get("/api/cases/edge-07-outside")).json()
    assert dead["dead_letters"][0]["status_code"] == 422
    assert (await client.get("/api/cases/unknown")).status_code == 404


async def test_api_status_is_the_snapshot(web):
    client, *_ = web
    r = await client.get("/api/status")
    assert r.status_code == 200 and r.json() == json.loads(json.dumps(SNAPSHOT))


async def test_healthz_unknown_path_and_wrong_method(web):
    client, *_ = web
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.text.strip() == "ok"
    assert (await client.get("/nothing/here")).status_code == 404
    r = await client.post("/api/cases", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("request_bytes", [
    b"HELLO\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET http://evil/ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 200 + b"\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS hello sent to plain HTTP
])
async def test_malformed_request_gets_400_and_server_keeps_serving(web, request_bytes):
    client, server, _, _ = web
    answer = await raw(server.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.stats["bad_requests"] == 1
    assert (await client.get("/healthz")).text.strip() == "ok"


async def test_failing_snapshot_still_shows_cases(tmp_path):
    def broken():
        raise RuntimeError("camera table locked")

    with Outbox(tmp_path / "o.sqlite3") as outbox:
        server = StatusServer(outbox, broken, evidence_root=tmp_path, port=0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                page = await client.get("/")
                assert page.status_code == 200 and "camera table locked" in page.text
                assert (await client.get("/api/status")).status_code == 500
        finally:
            await server.stop()


async def test_a_silent_client_does_not_block_others(web):
    client, server, _, _ = web
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    await writer.drain()
    try:
        assert (await client.get("/healthz")).status_code == 200
    finally:
        writer.close()
        await writer.wait_closed()


def test_coordinates_keep_their_precision_on_the_page():
    from gateway.web.page import generic

    html = generic({"lon": 116.3962, "lat": 39.907123})
    assert "116.3962" in html and "39.907123" in html
