"""Patrol visits over real HTTP on loopback: basic and digest authentication, a changed password,
a camera that never answers, error pages and oversized pictures; and the digest answer itself
against the worked examples of RFC 7616 section 3.9.1."""

from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
import pytest

from gateway.patrol.config import PatrolAuth
from gateway.patrol.digest import DigestError, authorization, parse_challenge
from gateway.patrol.inventory import PatrolCamera
from gateway.patrol.snapshot import SnapshotClient, VisitFailed, with_credentials
from tests.camera_server import PASSWORD, USER, CameraFleet

RFC_CHALLENGE = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
                 'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(("alg", "response"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_digest_answer_matches_rfc_7616(alg: str, response: str) -> None:
    ch = parse_challenge(RFC_CHALLENGE.format(alg=alg) + ', Basic realm="x"')
    header = authorization(ch, "GET", "/dir/index.html", "Mufasa", "Circle of Life", 1, CNONCE)
    assert f'response="{response}"' in header
    assert "nc=00000001" in header and "qop=auth" in header and 'opaque="FQhe/' in header


def test_digest_challenges_it_cannot_answer() -> None:
    with pytest.raises(DigestError, match="only 'auth'"):
        parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    with pytest.raises(DigestError, match="not supported"):
        parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-1')
    with pytest.raises(DigestError, match="no Digest challenge"):
        parse_challenge('Basic realm="r"')


def test_rtsp_credentials_go_into_the_url() -> None:
    auth = PatrolAuth(username="ad min", password="p@ss:w")
    assert with_credentials("rtsp://10.0.0.1:554/ch1", auth) == "rtsp://ad%20min:p%40ss%3Aw@10.0.0.1:554/ch1"
    assert with_credentials("rtsp://u:p@10.0.0.1/ch1", auth) == "rtsp://u:p@10.0.0.1/ch1"


def jpeg(w: int = 64, h: int = 48) -> bytes:
    return cv2.imencode(".jpg", np.full((h, w, 3), 127, np.uint8))[1].tobytes()


def cam(fleet: CameraFleet, cam_id: str, scheme: str | None = "auto", password: str = PASSWORD) -> PatrolCamera:
    auth = PatrolAuth(scheme=scheme, username=USER, password=password) if scheme else None
    return PatrolCamera(id=cam_id, name=cam_id, url=fleet.url(cam_id), group="g", preset="p", auth=auth)


async def with_fleet(behaviour: dict[str, str], body, *, timeout_s: float = 2.0, max_bytes: int = 1_000_000):
    fleet = CameraFleet([jpeg()], behaviour)
    await fleet.start()
    client = SnapshotClient(timeout_s=timeout_s, connect_timeout_s=1.0, max_bytes=max_bytes, concurrency=8)
    await client.start()
    try:
        return await body(fleet, client)
    finally:
        await client.close()
        await fleet.stop()


def test_basic_and_digest_authentication() -> None:
    async def body(fleet: CameraFleet, client: SnapshotClient) -> None:
        for _ in range(3):
            assert (await client.fetch(cam(fleet, "hik", "auto"))).jpeg == fleet.picture_of("hik")
            assert (await client.fetch(cam(fleet, "dahua", "digest"))).jpeg == fleet.picture_of("dahua")
            assert (await client.fetch(cam(fleet, "old", "basic"))).jpeg == fleet.picture_of("old")
            assert (await client.fetch(cam(fleet, "axis", "auto"))).jpeg == fleet.picture_of("axis")
        # digest: one challenge round trip on the first visit, then the nonce is reused (nc 2, 3)
        assert fleet.requests["hik"] == 4 and fleet.requests["dahua"] == 4
        assert fleet.requests["old"] == 3  # basic sent at once when configured
        assert fleet.requests["axis"] == 4  # auto learns basic from the first challenge
        assert fleet.served["hik"] == 3

    asyncio.run(with_fleet({"hik": "digest", "dahua": "digest", "old": "basic", "axis": "basic"}, body))


def test_refused_credentials_and_missing_ones_fail_with_401() -> None:
    async def body(fleet: CameraFleet, client: SnapshotClient) -> None:
        with pytest.raises(VisitFailed) as err:
            await client.fetch(cam(fleet, "hik", "auto", password="old password"))
        assert err.value.reason == "http_401" and "credentials refused" in str(err.value)
        with pytest.raises(VisitFailed, match="none configured") as err:
            await client.fetch(cam(fleet, "hik", None))
        assert err.value.reason == "http_401"
        with pytest.raises(VisitFailed) as err:
            await client.fetch(cam(fleet, "deny", "auto"))
        assert err.value.reason == "http_401"
        assert fleet.requests["deny"] == 2  # asked once, answered once, then gave up
        with pytest.raises(VisitFailed) as err:
            await client.fetch(cam(fleet, "digest-only", "basic"))
        assert err.value.reason == "auth_unsupported"

    asyncio.run(with_fleet({"hik": "digest", "deny": "deny", "digest-only": "digest"}, body))


def test_dead_slow_broken_and_oversized_cameras() -> None:
    async def body(fleet: CameraFleet, client: SnapshotClient) -> None:
        t0 = time.monotonic()
        with pytest.raises(VisitFailed) as err:
            await client.fetch(cam(fleet, "hang", None))
        assert err.value.reason == "timeout" and time.monotonic() - t0 < 5
        with pytest.raises(VisitFailed) as err:
            await client.fetch(cam(fleet, "boom", None))
        assert err.value.reason == "http_500"
        with pytest.raises(VisitFailed) as err:
            await client.fetch(cam(fleet, "big", None))
        assert err.value.reason == "too_large"
        dead = PatrolCamera(id="dead", name="dead", url="http://127.0.0.1:9/x.jpg", group="g", preset="p")
        with pytest.raises(VisitFailed) as err:
            await client.fetch(dead)
        assert err.value.reason in ("refused", "timeout")

    big = jpeg(1280, 720)
    async def run() -> None:
        async def inner(fleet: CameraFleet, client: SnapshotClient) -> None:
            fleet.assigned["big"] = big
            await body(fleet, client)
        await with_fleet({"hang": "hang", "boom": "error"}, inner, timeout_s=0.5, max_bytes=len(big) - 1)

    asyncio.run(run())


def test_keyframe_grab_and_a_dead_rtsp_camera() -> None:
    """`grab_keyframe` takes the first keyframe and lets go (here from the test clip, which FFmpeg opens
    like a stream); an RTSP camera that refuses the connection fails the visit."""
    from pathlib import Path

    from gateway.patrol.snapshot import grab_keyframe

    clip = Path(__file__).resolve().parent / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"
    assert grab_keyframe(str(clip), 2.0).shape == (360, 480, 3)

    async def body() -> None:
        client = SnapshotClient(timeout_s=3.0, connect_timeout_s=1.0, max_bytes=1_000_000, concurrency=2)
        await client.start()
        try:
            dead = PatrolCamera(id="r", name="r", url="rtsp://127.0.0.1:9/stream", group="g", preset="p")
            with pytest.raises(VisitFailed) as err:
                await client.fetch(dead)
            assert err.value.reason in ("refused", "timeout", "no_picture")
        finally:
            await client.close()

    asyncio.run(body())


def test_https_camera_with_a_self_signed_certificate(tmp_path) -> None:
    """Cameras serve https with their own certificate: refused by default, taken with verify_tls off."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def body() -> None:
        fleet = CameraFleet([jpeg()])
        await fleet.start(ssl_context=context)
        camera = PatrolCamera(id="tls", name="tls", url=fleet.url("tls", "https"), group="g", preset="p")
        try:
            for verify in (True, False):
                client = SnapshotClient(timeout_s=3.0, connect_timeout_s=1.0, max_bytes=1_000_000, concurrency=2,
                                        verify_tls=verify)
                await client.start()
                try:
                    if verify:
                        with pytest.raises(VisitFailed) as err:
                            await client.fetch(camera)
                        assert err.value.reason == "tls" and "verify_tls: false" in str(err.value)
                    else:
                        assert (await client.fetch(camera)).jpeg == fleet.picture_of("tls")
                finally:
                    await client.close()
        finally:
            await fleet.stop()

    asyncio.run(body())
