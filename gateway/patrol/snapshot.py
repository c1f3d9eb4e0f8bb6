"""One picture per visit: an HTTP(S) snapshot (basic or digest auth) or the next keyframe of an RTSP
stream; the connection is closed afterwards either way.

Every failure is a `VisitFailed` with a short reason that the scheduler counts per camera; none
takes longer than the visit timeout. Digest challenges are remembered per camera, so later visits
answer in one round trip (a stale nonce costs one more, as RFC 7616 intends).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from gateway.patrol.config import PatrolAuth
from gateway.patrol.digest import Challenge, DigestError, authorization, parse_challenge
from gateway.patrol.inventory import PatrolCamera
from gateway.sources.keyframe import grab_keyframe  # the one place an RTSP picture is taken
from gateway.sources.stream import StreamError

MAX_ERROR_BODY = 4096  # of a 401 or error body we read only this much before closing


class VisitFailed(Exception):
    """A visit without a picture; `reason` is a short counter key (timeout, http_401, refused, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Picture:
    """What a visit brought back: JPEG bytes (HTTP) or an already decoded BGR image (RTSP)."""

    jpeg: bytes | None = None
    image: Any = None  # numpy.ndarray


def with_credentials(url: str, auth: PatrolAuth | None) -> str:
    """An RTSP URL with the camera's credentials, unless the URL carries its own."""
    parts = urlsplit(url)
    if auth is None or parts.username is not None:
        return url
    netloc = f"{quote(auth.username, safe='')}:{quote(auth.password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class _AuthState:
    scheme: str | None = None  # "basic" / "digest" once the camera told us
    challenge: Challenge | None = None
    nc: int = 0


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes = b""
    challenges: list[str] = field(default_factory=list)


class SnapshotClient:
    """Fetches pictures for all cameras of a box; `start()` before, `close()` after."""

    def __init__(self, *, timeout_s: float, connect_timeout_s: float, max_bytes: int, concurrency: int,
                 verify_tls: bool = True, rtsp_threads: int | None = None) -> None:
        self.verify_tls = verify_tls
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[str, _AuthState] = {}
        # RTSP grabs block in OpenCV: their own bounded pool, so they never starve other threads
        self._rtsp = ThreadPoolExecutor(rtsp_threads or min(concurrency, 2 * (os.cpu_count() or 2)),
                                        thread_name_prefix="patrol-rtsp")

    async def start(self) -> None:
        # force_close: a visit takes its picture and lets go; thousands of idle keep-alives help nobody
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=True, ttl_dns_cache=300,
                                         ssl=None if self.verify_tls else False)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=self.connect_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._rtsp.shutdown(wait=False, cancel_futures=True)

    async def fetch(self, camera: PatrolCamera) -> Picture:
        try:
            async with asyncio.timeout(self.timeout_s):
                if camera.url.lower().startswith(("rtsp://", "rtsps://")):
                    loop = asyncio.get_running_loop()
                    url = with_credentials(camera.url, camera.auth)
                    try:
                        image = await loop.run_in_executor(self._rtsp, grab_keyframe, url, self.timeout_s)
                    except StreamError as exc:
                        raise VisitFailed("no_picture", str(exc)) from exc
                    return Picture(image=image)
                return Picture(jpeg=await self._http(camera))
        except TimeoutError as exc:
            raise VisitFailed("timeout", f"no picture within {self.timeout_s:g} s") from exc
        except aiohttp.ClientSSLError as exc:
            raise VisitFailed("tls", f"{exc} (a self-signed camera certificate needs verify_tls: false)") from exc
        except aiohttp.ClientConnectorError as exc:
            raise VisitFailed("refused", str(exc.os_error or exc)) from exc
        except aiohttp.ClientError as exc:
            raise VisitFailed("network", f"{type(exc).__name__}: {exc}") from exc

    async def _http(self, camera: PatrolCamera) -> bytes:
        state = self._auth.setdefault(camera.id, _AuthState())
        answer = await self._get(camera, self._header(camera, state))
        if answer.status == 401 and camera.auth is not None:
            fresh = self._answer_challenge(camera, state, answer.challenges)
            if fresh:
                answer = await self._get(camera, self._header(camera, state))
        if answer.status == 401:
            state.challenge = None  # a changed password: start over at the next visit
            why = "credentials refused" if camera.auth is not None else "the camera wants credentials, none configured"
            raise VisitFailed("http_401", why)
        if answer.status != 200:
            raise VisitFailed(f"http_{answer.status}", answer.body[:200].decode("utf-8", "replace").strip())
        if not answer.body:
            raise VisitFailed("no_picture", "empty response body")
        return answer.body

    def _header(self, camera: PatrolCamera, state: _AuthState) -> dict[str, str]:
        auth = camera.auth
        if auth is None:
            return {}
        if state.scheme == "basic" or auth.scheme == "basic":
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {token}"}
        if state.scheme == "digest" and state.challenge is not None:
            state.nc += 1
            uri = urlsplit(camera.url)
            path = (uri.path or "/") + (f"?{uri.query}" if uri.query else "")
            return {"Authorization": authorization(state.challenge, "GET", path, auth.username, auth.password,
                                                   state.nc, secrets.token_hex(8))}
        return {}

    @staticmethod
    def _answer_challenge(camera: PatrolCamera, state: _AuthState, challenges: list[str]) -> bool:
        """Take the camera's challenge; False when there is nothing new to answer it with."""
        auth = camera.auth
        assert auth is not None
        digest = next((c for c in challenges if c.strip().lower().startswith("digest")), None)
        basic = any(c.strip().lower().startswith("basic") for c in challenges)
        if auth.scheme in ("auto", "digest") and digest is not None:
            try:
                challenge = parse_challenge(digest)
            except DigestError as exc:
                raise VisitFailed("auth_unsupported", str(exc)) from exc
            stale = 'stale=true' in digest.lower().replace(" ", "").replace('"', "")
            renewed = state.challenge is None or stale or challenge.nonce != state.challenge.nonce
            state.scheme, state.challenge, state.nc = "digest", challenge, 0
            return renewed
        if auth.scheme in ("auto", "basic") and basic:
            first = state.scheme != "basic"  # already sent basic: the password is wrong, do not repeat it
            state.scheme = "basic"
            return first
        offered = ", ".join(c.split(" ", 1)[0] for c in challenges) or "nothing"
        raise VisitFailed("auth_unsupported", f"the camera offers {offered}, credentials are for {auth.scheme}")

    async def _get(self, camera: PatrolCamera, headers: dict[str, str]) -> _Answer:
        assert self._session is not None, "SnapshotClient.start() first"
        async with self._session.get(camera.url, headers=headers, allow_redirects=False) as resp:
            if resp.status != 200:
                body = await resp.content.read(MAX_ERROR_BODY)
                return _Answer(resp.status, body, resp.headers.getall("WWW-Authenticate", []))
            if resp.content_length is not None and resp.content_length > self.max_bytes:
                raise VisitFailed("too_large", f"{resp.content_length} bytes > max_picture_bytes {self.max_bytes}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > self.max_bytes:
                    raise VisitFailed("too_large", f"more than max_picture_bytes {self.max_bytes}")
                chunks.append(chunk)
            return _Answer(200, b"".join(chunks))
