"""HTTP push ingest: IoT platforms (NB-IoT operators' AEP/OneNET-style platforms, IoT Creators, ...)
forward device uplinks as HTTP callbacks to ``POST /ingest/<profile>``.

- ``Authorization: Bearer <token>`` is required (compared in constant time): 401 otherwise.
- The body is at most ``max_body_bytes``: 413 (without reading more than that).
- ``<profile>`` must be a profile with ``transport: http``: 404 otherwise, naming the known ones.
- Decoding is the profile's, through the same `Intake` as MQTT (counted, rate-limited logs): an
  unusable message is 400 with the reason, a refused device 403; a batch with some good uplinks
  is 200 with the reasons for the others, so that a platform does not resend the good ones.

`build_ingest_app` returns an ``aiohttp.web.Application`` whose route is ``/{profile}``: the web
server mounts it with ``app.add_subapp("/ingest/", ingest_app)``. `HttpIngestServer` runs it alone
on its own port (a component: ``name``, ``run(stop)``, ``stats()``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.profiles import DeviceProfile
from gateway.sources.intake import Intake, OnObservation

__all__ = ["INTAKE", "HttpIngestServer", "build_ingest_app"]

log = logging.getLogger(__name__)
INTAKE = web.AppKey("intake", Intake)


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None,
                             dumps=lambda d: json.dumps(d, ensure_ascii=False))


def build_ingest_app(profiles: Mapping[str, DeviceProfile], on_observation: OnObservation, *, token: str,
                     max_body_bytes: int = 65_536, known_devices: Mapping[str, str | None] | None = None,
                     log_interval_s: float = 60.0) -> web.Application:
    """The push endpoint as a sub-application (route ``/{profile}``); its Intake is ``app[INTAKE]``."""
    if not token:
        raise ValueError("HTTP ingest needs a token")
    pushed = {name: p for name, p in profiles.items() if p.transport == "http"}
    intake = Intake(on_observation, known_devices=known_devices, log_interval_s=log_interval_s, logger=log)
    for key in ("unauthorized", "oversize", "unknown_profile"):
        intake.stats[key] = 0
    expected = f"Bearer {token}".encode()

    async def ingest(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            intake.stats["unauthorized"] += 1
            intake.warn(f"auth:{request.remote}", "HTTP ingest: request from %s without the right token: 401",
                        request.remote)
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        profile = pushed.get(request.match_info["profile"])
        if profile is None:
            intake.stats["unknown_profile"] += 1
            return _error(404, f"no HTTP device profile named {request.match_info['profile'][:80]!r} "
                         f"(known: {', '.join(sorted(pushed)) or 'none'})")
        body = await _read_body(request, max_body_bytes)
        if body is None:
            intake.stats["oversize"] += 1
            intake.warn(f"oversize:{request.remote}", "HTTP ingest: body over %d bytes from %s: 413",
                        max_body_bytes, request.remote)
            return _error(413, f"body is over the {max_body_bytes} byte limit",
                         **{"Connection": "close"})
        received = datetime.now(UTC)
        device_refusals = _device_refusals(intake)
        observations, refused = intake.decode(profile, lambda: profile.decode_message(body, received=received))
        for obs in observations:
            await intake.deliver(obs)
        if not observations and refused:
            forbidden = bool(refused) and _device_refusals(intake) - device_refusals == len(refused)
            return _error(403 if forbidden else 400, "; ".join(refused)[:2000])
        return web.json_response({"accepted": len(observations), "refused": refused})

    app = web.Application()
    app[INTAKE] = intake
    app.router.add_post("/{profile}", ingest)
    return app


def _device_refusals(intake: Intake) -> int:
    return sum(intake.stats[k] for k in ("unknown_device", "wrong_profile", "device_limit"))


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (declared or actual; at most limit+1 bytes are read)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    data = bytearray()
    while len(data) <= limit:
        chunk = await request.content.read(limit + 1 - len(data))
        if not chunk:
            return bytes(data)
        data += chunk
    return None


class HttpIngestServer:
    """The ingest sub-application alone on its own address (``/ingest/<profile>``)."""

    name = "http-ingest"

    def __init__(self, app: web.Application, host: str = "0.0.0.0", port: int = 8090) -> None:
        self.ingest_app = app
        self.host, self.port = host, port
        self.started = asyncio.Event()  # set once listening; `port` is then the bound one (0 = any free)

    def stats(self) -> dict[str, Any]:
        return dict(self.ingest_app[INTAKE].stats)

    async def run(self, stop: asyncio.Event) -> None:
        root = web.Application()
        root.add_subapp("/ingest/", self.ingest_app)
        runner = web.AppRunner(root, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]
            log.info("HTTP ingest listening on %s:%d/ingest/<profile>", self.host, self.port)
            self.started.set()
            await stop.wait()
        finally:
            self.started.clear()
            await runner.cleanup()

