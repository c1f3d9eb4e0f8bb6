"""HTTP push ingest on real HTTP over loopback: token, size limit, decoding of an NB-IoT platform's callback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

import aiohttp
from conftest import REPO
from test_mqtt_source import WAIT

from gateway.profiles import load_profiles
from gateway.sources.http_ingest import HttpIngestServer, build_ingest_app

PROFILES = load_profiles(REPO / "device_profiles")
NDDS75 = "dragino-ndds75-nbiot-http"
TOKEN = "s3cret-token"
IMEI = "IMEI:868411056756471"
NOW_MS = int(datetime.now(UTC).timestamp()) * 1000


def callback(*reports: dict) -> dict:
    """An IoT platform's push: a batch of uplinks of one subscription."""
    return {"reports": list(reports), "registrations": [], "deregistrations": [], "updates": [], "expirations": [],
            "responses": []}


def report(value: str, serial: str = IMEI, ts: int = NOW_MS) -> dict:
    return {"serialNumber": serial, "timestamp": ts, "subscriptionId": "fa37d89c", "resourcePath": "uplinkMsg/0/data",
            "value": value}


GOOD = "41105675647100640cd1070a1600"  # Dragino's example: 3281 mV, CSQ 7, 2582 mm


@contextlib.asynccontextmanager
async def ingest_server(**kw):
    readings: list = []
    app = build_ingest_app(PROFILES, readings.append, token=TOKEN, **kw)
    server = HttpIngestServer(app, "127.0.0.1", 0)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    await asyncio.wait_for(server.started.wait(), WAIT)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as http:
            async def post(body, *, token: str | None = TOKEN, profile: str = NDDS75, raw: bytes | None = None):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                data = raw if raw is not None else json.dumps(body).encode()
                async with http.post(f"/ingest/{profile}", data=data, headers=headers) as r:
                    return r.status, await r.json()
            yield post, readings, server
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_an_nbiot_uplink_is_decoded_with_units():
    async with ingest_server() as (post, readings, server):
        status, answer = await post(callback(report(GOOD)))
    assert (status, answer) == (200, {"accepted": 1, "refused": []})
    (reading,) = readings
    assert reading.device == IMEI and reading.profile == NDDS75
    assert reading.values == {"level_cm": 41.8, "distance_mm": 2582.0, "battery_v": 3.281, "signal_csq": 7.0}
    assert reading.units["level_cm"] == "cm" and reading.time == datetime.fromtimestamp(NOW_MS / 1000, UTC)
    assert server.stats()["observations"] == 1


async def test_token_size_and_profile_are_checked_with_clear_4xx(caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.sources.http_ingest"):
        async with ingest_server(max_body_bytes=1024) as (post, readings, server):
            assert await post(callback(report(GOOD)), token=None) == (401, {"error": "missing or wrong bearer token"})
            assert (await post(callback(report(GOOD)), token="guess"))[0] == 401
            status, answer = await post({}, raw=b"x" * 5000)
            assert (status, answer) == (413, {"error": "body is over the 1024 byte limit"})
            status, answer = await post(callback(report(GOOD)), profile="generic-water-level-json")
            assert status == 404 and "dragino-ndds75-nbiot-http" in answer["error"]
            status, answer = await post({}, raw=b"{not json")
            assert status == 400 and "not JSON" in answer["error"]
            status, answer = await post(callback(report(GOOD[:20])))  # truncated payload
            assert status == 400 and "truncated" in answer["error"] and "offset 11" in answer["error"]
            status, answer = await post({"reports": []})
            assert status == 400 and "no uplinks" in answer["error"]
            status, answer = await post(callback(report(GOOD, ts=NOW_MS + 86_400_000)))  # a day ahead
            assert status == 400 and "in the future" in answer["error"]
            assert await post(callback(report(GOOD))) == (200, {"accepted": 1, "refused": []})
    assert len(readings) == 1
    stats = server.stats()
    assert (stats["unauthorized"], stats["oversize"], stats["unknown_profile"], stats["undecodable"]) == (2, 1, 1, 4)
    assert sum("401" in r.getMessage() for r in caplog.records) == 1  # once per client and interval


async def test_a_batch_keeps_its_good_uplinks_and_unknown_devices_are_refused():
    known = {IMEI: NDDS75, "IMEI:2": "generic-water-level-json"}
    async with ingest_server(known_devices=known) as (post, readings, server):
        status, answer = await post(callback(report(GOOD), report("zz"), report(GOOD, serial="IMEI:999")))
        assert status == 200 and answer["accepted"] == 1 and len(answer["refused"]) == 2
        assert "not hex" in answer["refused"][0] and "unknown device 'IMEI:999'" in answer["refused"][1]
        status, answer = await post(callback(report(GOOD, serial="IMEI:2")))
        assert status == 403 and "configured with profile 'generic-water-level-json'" in answer["error"]
    assert [r.device for r in readings] == [IMEI]
    assert server.stats()["unknown_device"] == 1 and server.stats()["wrong_profile"] == 1


async def test_the_sub_application_mounts_under_another_server():
    """How the web server hosts it: app.add_subapp('/ingest/', build_ingest_app(...))."""
    from aiohttp import web

    readings: list = []
    root = web.Application()
    root.add_subapp("/ingest/", build_ingest_app(PROFILES, readings.append, token=TOKEN))
    runner = web.AppRunner(root)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/ingest/{NDDS75}", json=callback(report(GOOD)),
                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
    finally:
        await runner.cleanup()
    assert readings[0].values["level_cm"] == 41.8
