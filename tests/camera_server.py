"""Fake snapshot cameras on loopback, real HTTP: `GET /cam/<id>.jpg` answers with a JPEG, as the
ISAPI / CGI snapshot URLs of Hikvision and Dahua cameras do.

Per camera behaviour: ok (default), basic / digest (HTTP authentication with `USER`/`PASSWORD`,
checked here independently of the client's code), deny (always 401: a changed password), hang (never
answers), error (500), garbage (200 with bytes that are no JPEG). Used by the patrol tests in-process
and by bench/patrol.py as a separate process: `python tests/camera_server.py --pictures DIR --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import re
import secrets
import ssl
import sys
import zlib
from collections import Counter
from pathlib import Path

from aiohttp import web

USER, PASSWORD, REALM = "admin", "s3cret pw", "IP Camera(12345)"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class CameraFleet:
    def __init__(self, pictures: list[bytes], behaviour: dict[str, str] | None = None) -> None:
        self.pictures = pictures
        self.behaviour = dict(behaviour or {})
        self.assigned: dict[str, bytes] = {}  # camera id -> its own picture, overriding the default
        self.sequences: dict[str, list[bytes]] = {}  # camera id -> pictures served in turn, one per visit
        self.requests: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # pictures actually handed out
        self.nonces: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def picture_of(self, cam_id: str) -> bytes:
        if cam_id in self.sequences:
            seq = self.sequences[cam_id]
            return seq[self.served[cam_id] % len(seq)]
        return self.assigned.get(cam_id) or self.pictures[zlib.crc32(cam_id.encode()) % len(self.pictures)]

    def url(self, cam_id: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/cam/{cam_id}.jpg"

    async def start(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get("/cam/{cam}.jpg", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _challenge(self) -> str:
        nonce = secrets.token_hex(16)
        self.nonces.add(nonce)
        return f'Digest realm="{REALM}", qop="auth", nonce="{nonce}", opaque="{secrets.token_hex(4)}", algorithm=MD5'

    def _digest_ok(self, header: str, path: str) -> bool:
        if not header.startswith("Digest "):
            return False
        p = {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]*)', header)}
        if p.get("nonce") not in self.nonces or p.get("uri") != path or p.get("username") != USER:
            return False
        ha1, ha2 = _md5(f"{USER}:{REALM}:{PASSWORD}"), _md5(f"GET:{path}")
        expected = _md5(f"{ha1}:{p['nonce']}:{p.get('nc')}:{p.get('cnonce')}:{p.get('qop')}:{ha2}")
        return p.get("response") == expected

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        cam = request.match_info["cam"]
        self.requests[cam] += 1
        mode = self.behaviour.get(cam, "ok")
        auth = request.headers.get("Authorization", "")
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "error":
            return web.Response(status=500, text="internal error")
        if mode == "deny":
            return web.Response(status=401, headers={"WWW-Authenticate": self._challenge()})
        if mode == "basic":
            good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if auth != good:
                return web.Response(status=401, headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        if mode == "digest" and not self._digest_ok(auth, request.path_qs):
            return web.Response(status=401, headers={"WWW-Authenticate": self._challenge()})
        body = b"<html>not a picture</html>" if mode == "garbage" else self.picture_of(cam)
        self.served[cam] += 1
        return web.Response(body=body, content_type="image/jpeg")


async def _serve(pictures: list[bytes], port: int) -> None:
    fleet = CameraFleet(pictures)
    await fleet.start(port)
    print(f"ready {fleet.port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pictures", type=Path, required=True, help="folder of .jpg files to serve")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    pictures = [p.read_bytes() for p in sorted(args.pictures.glob("*.jpg"))]
    if not pictures:
        sys.exit(f"no .jpg in {args.pictures}")
    asyncio.run(_serve(pictures, args.port))


if __name__ == "__main__":
    main()
