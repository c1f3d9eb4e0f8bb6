"""The console as an `aiohttp.web` application: pages, evidence, metrics, the JSON API.

Routes (everything but /healthz, /login and /static/ needs a session or a Bearer token):

    /                                   overview: outbox, newest cases, cameras, alerts
    /cases?status&source&category&rule&grid&street&since&until&q&limit&offset
    /cases/<case_id>                    one case: evidence (snapshot, crop, map, clip), facts, delivery
    POST /cases/<case_id>/retry         send again (operator; form with CSRF token)
    POST /cases/<case_id>/confirm|reject  review before dispatch (operator; form with CSRF token, reason)
    /review                             cases held for review, each rule's precision (7 and 30 days)
    /devices?kind&q&limit&offset        cameras (last frames), patrol cameras, vehicles, sensors
    /cameras/<name>/last.jpg            a camera's last analysed frame with its zones and detections drawn
    /evidence/<case_id>/<name>          an evidence file the case lists (?size=thumb: a small JPEG)
    /evidence/<case_id>/<name>/frames/<i>.jpg   frame i of an MJPEG clip
    /metrics                            Prometheus (session, API token or web.metrics_token)
    /api/...                            JSON, see gateway/web/api.py and /api/openapi.json
    /healthz                            "ok", for systemd / docker health checks
    /login, POST /login, POST /logout
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import OrderedDict
from pathlib import Path

from aiohttp import web
from PIL import Image

from gateway.devices import DeviceQuery, DeviceQueryError
from gateway.review import WINDOWS_DAYS
from gateway.web import access, api, device_pages, metrics, pages
from gateway.web.access import public, requires, viewer
from gateway.web.clips import ClipError
from gateway.web.evidence import find_item, media_type
from gateway.web.queries import CaseQuery, QueryError
from gateway.web.state import CONSOLE, Console, log

STATIC = Path(__file__).resolve().parent / "static"
PAGE_CASES = 20  # newest cases on the overview
REVIEW_ROWS = 100  # held cases on /review; the rest through /cases?status=held
THUMB_SIZE = (192, 108)
_THUMBS = 256  # thumbnails kept in memory (about 6 KB each)
MAX_BODY = 64 * 1024  # forms are small; anything bigger is refused with 413


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def _not_found(what: str) -> web.Response:
    return web.json_response({"error": what}, status=404)


@public
async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def overview(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    snap, error = console.snapshot()

    def read():
        return console.outbox.counts(), console.outbox.fill_ratio(), console.outbox.list(limit=PAGE_CASES)

    counts, ratio, records = await asyncio.to_thread(read)
    return _html(pages.overview_page(viewer(request), snap, counts, ratio, records, snapshot_error=error))


async def cases_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        q = CaseQuery.from_params(request.query, console.timezone)
        error = None
    except QueryError as exc:
        q, error = CaseQuery(), str(exc)

    def read():
        return (*console.search.search(q), console.search.facets())

    total, records, facets = await asyncio.to_thread(read)
    return _html(pages.cases_page(viewer(request), q, total, records, facets, error), 400 if error else 200)


async def case_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = request.match_info["case_id"]

    def read():
        rec = console.outbox.get(case_id)
        if rec is None:
            return None, [], {}
        clips = {}
        for item in rec.case.get("evidence", ()):
            if isinstance(item, dict) and str(item.get("media_type", "")) in ("video/x-msvideo", "video/avi"):
                path = console.evidence.locate(item)
                if path is not None:
                    try:
                        index = console.evidence.clip_index(path)
                        clips[str(item.get("name"))] = (len(index.frames), index.fps)
                    except (ClipError, OSError) as exc:
                        log.warning("case %s: clip %s cannot be shown: %s", case_id, item.get("name"), exc)
        return rec, console.outbox.dead_letters(case_id), clips

    rec, letters, clips = await asyncio.to_thread(read)
    if rec is None:
        return _html(f"<!DOCTYPE html><p>No case {pages.e(case_id)}.</p>", 404)
    notice = ("The case is due for delivery again." if request.query.get("retried")
              else _REVIEWED.get(request.query.get("reviewed", "")))
    return _html(pages.case_page(viewer(request), rec, letters, clips, notice))


_REVIEWED = {"confirmed": "Confirmed.", "rejected": "Rejected."}


async def _review_form(request: web.Request, decision: str) -> web.Response:
    case_id = request.match_info["case_id"]
    code, body = await api.review_case(request, case_id, decision, await api.reason_of(request))
    if code != 200:
        return _html(f"<!DOCTYPE html><p>Case {pages.e(case_id)}: {pages.e(body['error'])}</p>"
                     f'<p><a href="{pages.e(pages.case_url(case_id))}">back to the case</a></p>', code)
    raise web.HTTPSeeOther(pages.case_url(case_id) + "?reviewed=" + decision)


@requires("operator")
async def case_confirm(request: web.Request) -> web.Response:
    return await _review_form(request, "confirmed")


@requires("operator")
async def case_reject(request: web.Request) -> web.Response:
    return await _review_form(request, "rejected")


async def review_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]

    def read():
        total, held = console.search.search(CaseQuery(status="held", limit=REVIEW_ROWS))
        return total, held, api.rule_precision(console, time.time())

    total, held, table = await asyncio.to_thread(read)
    return _html(pages.review_page(viewer(request), total, held, table, WINDOWS_DAYS))


@requires("operator")
async def case_retry(request: web.Request) -> web.Response:
    case_id = request.match_info["case_id"]
    if not await api.retry_case(request, case_id):
        return _html(f"<!DOCTYPE html><p>Case {pages.e(case_id)} is unknown or already delivered.</p>", 409)
    raise web.HTTPSeeOther(pages.case_url(case_id) + "?retried=1")


async def devices_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    snap, error = console.snapshot()
    try:
        query, query_error = DeviceQuery.from_params(request.query), None
    except DeviceQueryError as exc:
        query, query_error = DeviceQuery(), str(exc)
    view = console.devices.view(query) if console.devices is not None and query_error is None else None
    return _html(device_pages.devices_page(viewer(request), view, snap, error, query_error),
                 400 if query_error else 200)


async def camera_frame(request: web.Request) -> web.Response:
    """A camera's last analysed frame, drawn now (at most once a second per camera, two cameras at a time)."""
    console = request.app[CONSOLE]
    name = request.match_info["name"]
    if console.devices is None or not console.devices.has_camera(name):
        return _not_found(f"no camera {name!r} with a picture")
    async with console.drawing:
        try:
            data = await asyncio.to_thread(console.devices.camera_jpeg, name)
        except (ValueError, OSError) as exc:
            log.warning("camera %s: last frame not drawn: %s", name, exc)
            return _not_found(f"the last frame of camera {name!r} cannot be drawn")
    if data is None:
        return _not_found(f"camera {name!r} has not analysed a frame yet")
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"Content-Security-Policy": "default-src 'none'; sandbox"})


async def map_page(request: web.Request) -> web.Response:
    return _html(pages.map_page(viewer(request)))


async def _evidence_file(request: web.Request) -> tuple[Path, dict] | web.Response:
    console = request.app[CONSOLE]
    case_id, name = request.match_info["case_id"], request.match_info["name"]
    rec = await asyncio.to_thread(console.outbox.get, case_id)
    item = find_item(rec.case, name) if rec is not None else None
    if item is None:
        return _not_found(f"case {case_id!r} has no evidence {name!r}")
    path = await asyncio.to_thread(console.evidence.locate, item)
    if path is None:
        console.stats["evidence_refused"] += 1
        log.warning("evidence %s of case %s is missing or outside %s", item.get("path"), case_id,
                    console.evidence.root)
        return _not_found(f"evidence {name!r} of case {case_id!r} is not available")
    return path, item


_thumb_cache: OrderedDict[tuple[str, float], bytes] = OrderedDict()


def _thumbnail(path: Path) -> bytes:
    key = (str(path), path.stat().st_mtime)
    if key in _thumb_cache:
        _thumb_cache.move_to_end(key)
        return _thumb_cache[key]
    with Image.open(path) as img:
        img.draft("RGB", THUMB_SIZE)  # JPEG: decode at 1/2..1/8 scale, much faster
        img = img.convert("RGB")
        img.thumbnail(THUMB_SIZE)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=75)
    _thumb_cache[key] = buf.getvalue()
    while len(_thumb_cache) > _THUMBS:
        _thumb_cache.popitem(last=False)
    return _thumb_cache[key]


async def evidence(request: web.Request) -> web.StreamResponse:
    found = await _evidence_file(request)
    if isinstance(found, web.Response):
        return found
    path, item = found
    headers = {"Cache-Control": "private, max-age=86400, immutable",  # evidence never changes
               "Content-Security-Policy": "default-src 'none'; sandbox"}
    if request.query.get("size") == "thumb" and str(item.get("media_type", "")).startswith("image/"):
        try:
            data = await asyncio.to_thread(_thumbnail, path)
            return web.Response(body=data, content_type="image/jpeg", headers=headers)
        except (OSError, ValueError) as exc:  # not a decodable image: the file itself
            log.warning("thumbnail of %s failed: %s", path, exc)
    if item.get("sha256"):
        headers["ETag"] = f'"{item["sha256"]}"'
    headers["Content-Type"] = media_type(item)
    headers["Content-Disposition"] = "inline" if media_type(item).startswith("image/") else "attachment"
    return web.FileResponse(path, headers=headers)


async def clip_frame(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    found = await _evidence_file(request)
    if isinstance(found, web.Response):
        return found
    path, _ = found
    try:
        data = await asyncio.to_thread(console.evidence.clip_frame, path, int(request.match_info["index"]))
    except (ClipError, OSError) as exc:
        return _not_found(f"not a clip that can be shown: {exc}")
    if data is None:
        return _not_found("no such frame")
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})


async def metrics_route(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    snap, _ = console.snapshot()
    store = await asyncio.to_thread(console.search.store_stats, time.time())
    body = metrics.exposition(snap, store)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def build_app(console: Console) -> web.Application:
    """The console application over `console` (the caller runs it: see gateway/web/server.py)."""
    app = web.Application(middlewares=[access.access_middleware], client_max_size=MAX_BODY,
                          handler_args={"max_field_size": 8190, "max_line_size": 8190})
    app[CONSOLE] = console
    app.on_response_prepare.append(access.security_headers)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/login", access.login_get)
    r.add_post("/login", access.login_post)
    r.add_post("/logout", access.logout)
    r.add_get("/", overview)
    r.add_get("/cases", cases_page)
    r.add_get("/cases/{case_id}", case_page)
    r.add_post("/cases/{case_id}/retry", case_retry)
    r.add_post("/cases/{case_id}/confirm", case_confirm)
    r.add_post("/cases/{case_id}/reject", case_reject)
    r.add_get("/review", review_page)
    r.add_get("/devices", devices_page)
    r.add_get("/cameras/{name}/last.jpg", camera_frame)
    r.add_get("/map", map_page)
    r.add_get("/evidence/{case_id}/{name}", evidence)
    r.add_get(r"/evidence/{case_id}/{name}/frames/{index:\d{1,6}}.jpg", clip_frame)
    r.add_get("/metrics", metrics_route)
    for method, path, handler in api.ROUTES:
        r.add_route(method, path, handler)
    r.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
    return app
