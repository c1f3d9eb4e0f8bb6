"""The JSON API (`/api/...`) and its OpenAPI document (`/api/openapi.json`).

Every route needs a session cookie or `Authorization: Bearer <token>` (web.tokens); a change
(retry, confirm, reject, a vehicle command) needs the operator role, and from a browser session also
the `X-CSRF-Token` header. Vehicle commands (`/api/vehicles/{id}/commands`, operator role to send and to
read) go to the JT/T 808 server's `command` / `commands_of`.
Store reads run in a thread: they are SQLite calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.devices import KINDS, MAX_LIMIT, DeviceQuery, DeviceQueryError
from gateway.outbox import ReviewError
from gateway.review import WINDOWS_DAYS, precision
from gateway.web import maps
from gateway.web.access import principal, requires
from gateway.web.queries import CaseQuery, QueryError
from gateway.web.state import CONSOLE, log


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False, indent=1, default=str), status=status,
                        content_type="application/json")


async def status(request: web.Request) -> web.Response:
    snap, error = request.app[CONSOLE].snapshot()
    return _json(snap) if error is None else _json({"error": error}, 500)


async def cases(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        q = CaseQuery.from_params(request.query, console.timezone)
    except QueryError as exc:
        return _json({"error": str(exc)}, 400)
    total, records = await asyncio.to_thread(console.search.search, q)
    return _json({"total": total, "offset": q.offset, "limit": q.limit, "cases": [r.to_json() for r in records]})


async def case(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = request.match_info["case_id"]

    def read():
        rec = console.outbox.get(case_id)
        return rec, (console.outbox.dead_letters(case_id) if rec is not None else [])

    rec, letters = await asyncio.to_thread(read)
    if rec is None:
        return _json({"error": f"no case {case_id!r}"}, 404)
    data = rec.to_json()
    data["dead_letters"] = [{"at": d.at.isoformat(), "status_code": d.status_code,
                             "response_body": d.response_body} for d in letters]
    return _json(data)


async def retry_case(request: web.Request, case_id: str) -> bool:
    """Make a case due for delivery now (pages and API alike); False if unknown or already delivered."""
    console = request.app[CONSOLE]
    ok = await asyncio.to_thread(console.outbox.retry, case_id)
    if ok:
        console.stats["retries"] += 1
        log.info("console: %s asked to send case %s again", principal(request).name, case_id)
    return ok


@requires("operator")
async def retry(request: web.Request) -> web.Response:
    case_id = request.match_info["case_id"]
    if not await retry_case(request, case_id):
        return _json({"error": f"case {case_id!r} is unknown or already delivered"}, 409)
    return _json({"case_id": case_id, "status": "pending"})


MAX_REASON_FORM = 2000  # characters of a reason read from a request; the store keeps 500


async def reason_of(request: web.Request) -> str:
    """The `reason` of a JSON body or a form (pages and API alike); '' if none."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return ""
        value = body.get("reason") if isinstance(body, dict) else None
    else:
        value = (await request.post()).get("reason")
    return value.strip()[:MAX_REASON_FORM] if isinstance(value, str) else ""


async def review_case(request: web.Request, case_id: str, decision: str, reason: str) -> tuple[int, dict]:
    """Confirm or reject a case for the pages and the API: (HTTP status, JSON body). A confirmed
    held case and a rejection's withdrawn event wake the delivery worker at once."""
    console = request.app[CONSOLE]
    who = principal(request).name
    try:
        if decision == "confirmed":
            status = await asyncio.to_thread(console.outbox.confirm, case_id, who, reason)
            event = None
        else:
            if not reason:
                return 400, {"error": "a rejection needs a reason"}
            done = await asyncio.to_thread(console.outbox.reject, case_id, reason, who)
            status, event = done if done is not None else (None, None)
    except ReviewError as exc:
        return 409, {"error": str(exc)}
    if status is None:
        return 404, {"error": f"no case {case_id!r}"}
    console.stats[f"reviews_{decision}"] += 1
    log.info("console: %s %s case %s (%s)", who, decision, case_id, reason or "no reason given")
    if console.notify_central is not None and (status == "pending" or event is not None):
        console.notify_central()
    body = {"case_id": case_id, "review": decision, "status": status}
    if event is not None:
        body["event_id"] = event.event_id
    return 200, body


@requires("operator")
async def confirm(request: web.Request) -> web.Response:
    code, body = await review_case(request, request.match_info["case_id"], "confirmed", await reason_of(request))
    return _json(body, code)


@requires("operator")
async def reject(request: web.Request) -> web.Response:
    code, body = await review_case(request, request.match_info["case_id"], "rejected", await reason_of(request))
    return _json(body, code)


def rule_precision(console, now: float) -> dict[str, dict[int, Any]]:
    """Each rule's precision over 7 and 30 days (a thread: SQLite); rules in review mode are listed
    even before their first review."""
    counts = {days: console.outbox.review_counts(now - days * 86400) for days in WINDOWS_DAYS}
    held_rules = ()
    if console.config is not None:
        held_rules = [r for r, mode in console.config.cases.review.rules.items() if mode == "review"]
    return precision(counts, held_rules)


async def review_precision(request: web.Request) -> web.Response:
    table = await asyncio.to_thread(rule_precision, request.app[CONSOLE], time.time())
    return _json({"windows_days": list(WINDOWS_DAYS),
                  "rules": {rule: {str(d): p.to_json() for d, p in per.items()} for rule, per in table.items()}})


COUNTER_SECTIONS = ("cameras", "devices", "rules", "patrol", "jt808", "mqtt-source", "modbus", "http-ingest")


async def devices(request: web.Request) -> web.Response:
    """The devices view of gateway/devices.py (what /devices shows) and the runtime's device counters."""
    console = request.app[CONSOLE]
    try:
        query = DeviceQuery.from_params(request.query)
    except DeviceQueryError as exc:
        return _json({"error": str(exc)}, 400)
    snap, error = console.snapshot()
    if error is not None:
        return _json({"error": error}, 500)
    body = console.devices.view(query) if console.devices is not None else {}
    body["counters"] = {k: v for k, v in snap.items() if k in COUNTER_SECTIONS or k.startswith("nmea:")}
    return _json(body)


async def me(request: web.Request) -> web.Response:
    p = principal(request)
    return _json({"name": p.name, "role": p.role, "via": p.via})


@requires("admin")
async def users(request: web.Request) -> web.Response:
    rows = request.app[CONSOLE].accounts.names()
    return _json([{"name": n, "role": r, "source": where} for n, r, where in rows])


async def map_layers(request: web.Request) -> web.Response:
    """GeoJSON layers of /map, in the map's coordinate system."""
    console = request.app[CONSOLE]
    crs = console.map_crs

    def read() -> dict:
        if console.static_layers is None and console.config is not None:
            console.static_layers = maps.static_layers(console.config, console.grid_path, crs)
        layers = dict(console.static_layers or {})
        now = time.time()
        _, records = console.search.search(CaseQuery(since=datetime.fromtimestamp(now - 86400, UTC),
                                                     limit=maps.MAX_CASES))
        layers["cases"] = maps.case_layer(records, crs)
        if console.series is not None:
            layers["vehicles"] = maps.vehicle_layer(console.series.vehicles(now), crs)
            if "sensors" in layers:
                layers["sensors"] = maps.with_readings(layers["sensors"], console.series.readings(now))
        return layers

    layers = await asyncio.to_thread(read)
    tiles = {"url": console.map_tiles, "attribution": console.map_attribution} if console.map_tiles else None
    return web.json_response({"crs": crs, "tiles": tiles, "layers": layers}, dumps=dumps)


def _command_target(request: web.Request) -> tuple[Any, str] | web.Response:
    server = request.app[CONSOLE].commands
    if server is None:
        return _json({"error": "the JT/T 808 server is not running (vehicles.jt808.enabled)"}, 503)
    return server, request.match_info["vehicle_id"]


@requires("operator")
async def send_command(request: web.Request) -> web.Response:
    """Queue a platform command for a vehicle's terminal: sent now if it is connected and authenticated."""
    from gateway.sources.jt808_commands import CommandRefused

    target = _command_target(request)
    if isinstance(target, web.Response):
        return target
    server, vehicle = target
    try:
        body = await request.json()
    except ValueError:
        return _json({"error": "the body must be JSON: {\"kind\": \"text\" | \"query\" | \"params\", ...}"}, 400)
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        return _json({"error": "the body must be a JSON object with a 'kind': text | query | params"}, 400)
    who = principal(request).name
    try:
        cmd = server.command(vehicle, body["kind"], body, origin=f"api:{who}")
    except CommandRefused as exc:
        return _json({"error": str(exc)}, exc.status)
    log.info("console: %s sent %s command %s to %s (%s)", who, cmd.kind, cmd.id, cmd.vehicle, cmd.state)
    return _json(cmd.to_json(), 202)


@requires("operator")
async def vehicle_commands(request: web.Request) -> web.Response:
    from gateway.sources.jt808_commands import CommandRefused

    target = _command_target(request)
    if isinstance(target, web.Response):
        return target
    server, vehicle = target
    try:
        found = server.commands_of(vehicle)
    except CommandRefused as exc:
        return _json({"error": str(exc)}, exc.status)
    return _json({"vehicle": vehicle, "commands": [c.to_json() for c in found]})


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


ROUTES = [
    ("GET", "/api/status", status),
    ("GET", "/api/cases", cases),
    ("GET", "/api/cases/{case_id}", case),
    ("POST", "/api/cases/{case_id}/retry", retry),
    ("POST", "/api/cases/{case_id}/confirm", confirm),
    ("POST", "/api/cases/{case_id}/reject", reject),
    ("GET", "/api/review/precision", review_precision),
    ("GET", "/api/devices", devices),
    ("GET", "/api/me", me),
    ("GET", "/api/users", users),
    ("GET", "/api/openapi.json", openapi),
    ("GET", "/api/map", map_layers),
    ("POST", "/api/vehicles/{vehicle_id}/commands", send_command),
    ("GET", "/api/vehicles/{vehicle_id}/commands", vehicle_commands),
]


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_CASE_ID = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "string"}}
_VEHICLE_ID = {"name": "vehicle_id", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "Fleet vehicle id (or a terminal number)."}
_CSRF = {"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Required with a session cookie."}
_AUTH_ERRORS = {"401": _error("No or unknown credentials."), "403": _error("Role too low, or CSRF token missing.")}


_CSRF = {"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Required with a session cookie."}
_REASON_BODY = {"required": False, "content": {
    "application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string"}}}},
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"reason": {"type": "string"}}}}}}


def _result(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ReviewResult"}}}}


def _q(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"},
            "description": description}


_TIME = {"type": ["string", "null"], "format": "date-time"}
_OPEN_ALERTS = {"type": "array", "items": {"$ref": "#/components/schemas/OpenAlert"}}


def _section(item: str, extra: dict | None = None) -> dict:
    return {"type": "object", "properties": {
        "total": {"type": "integer", "description": "Devices that match, in all."},
        "offset": {"type": "integer"},
        "summary": {"type": "object", "description": "online, offline, unknown (never heard), alerting: counts "
                    "over every match", "additionalProperties": {"type": "integer"}},
        "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}}, **(extra or {})}}


DEVICE_SCHEMAS: dict[str, Any] = {
    "OpenAlert": {"type": "object", "description": "A rule's condition open now (from its first opening alert).",
                  "properties": {"rule": {"type": "string"}, "place": {"type": "string"},
                                 "track_id": {"type": ["integer", "null"]}, "severity": {"type": "string"},
                                 "since": _TIME, "latest": _TIME, "message": {"type": "string"},
                                 "category": {"type": ["string", "null"]},
                                 "case_id": {"type": ["string", "null"], "description": "The case it filed."}}},
    "Camera": {"type": "object", "properties": {
        "id": {"type": "string"}, "address": {"type": "string"}, "online": {"type": "boolean"},
        "decoded_fps": {"type": "number"}, "analysed_fps": {"type": "number"}, "detect_fps": {"type": "number"},
        "last_analysed_at": _TIME, "frame_url": {"type": ["string", "null"]},
        "frame_size": {"type": ["array", "null"], "items": {"type": "integer"}, "description": "[width, height]"},
        "detections": {"type": "object", "description": "Objects of the last inference by label",
                       "additionalProperties": {"type": "integer"}},
        "zones": {"type": "array", "items": {"type": "string"}}, "last_error": {"type": ["string", "null"]},
        "open_alerts": _OPEN_ALERTS}},
    "PatrolCamera": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "group": {"type": "string"},
        "preset": {"type": "string"}, "online": {"type": ["boolean", "null"]},
        "phase": {"enum": ["scheduled", "fetching", "queued", "analysing", "out_of_hours"]},
        "last_visit": _TIME, "next_visit": _TIME, "failures": {"type": "integer"},
        "last_error": {"type": ["string", "null"]}, "frame_url": {"type": ["string", "null"],
                                                                  "description": "while the memory budget keeps it"},
        "open_alerts": _OPEN_ALERTS}},
    "Vehicle": {"type": "object", "properties": {
        "id": {"type": "string"}, "plate": {"type": "string"}, "type": {"type": "string"},
        "company": {"type": "string"}, "registered": {"type": "boolean", "description": "false: a terminal or "
                                                      "tracker not in the fleet that reported positions"},
        "online": {"type": ["boolean", "null"]},
        "last_fix": {"type": ["object", "null"], "properties": {
            "time": _TIME, "lon": {"type": "number"}, "lat": {"type": "number"}, "speed_kmh": {"type": "number"},
            "course": {"type": "number"}, "valid": {"type": "boolean"}, "history": {"type": "boolean"}}},
        "open_violations": _OPEN_ALERTS,
        "terminal": {"type": ["object", "null"], "description": "The JT/T 808 terminal's connection; null when it "
                     "never connected or no JT/T 808 server runs", "properties": {
                         "connected": {"type": "boolean"}, "authenticated": {"type": "boolean"},
                         "address": {"type": "string"}, "connected_at": _TIME, "last_message_at": _TIME,
                         "disconnected_at": _TIME, "pending_commands": {"type": "integer"},
                         "protocol": {"type": "string"}}}}},
    "Sensor": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"},
        "online": {"type": ["boolean", "null"]},
        "last_reading": {"type": ["object", "null"], "properties": {"time": _TIME, "values": {
            "type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "value": {"type": "number"}, "unit": {"type": "string"}}}}}},
        "series": {"type": ["object", "null"], "description": "Per minute over the last hours: the highest level, "
                   "or the rain fallen since the first point (kind rain_total)", "properties": {
                       "field": {"type": "string"}, "unit": {"type": "string"},
                       "kind": {"enum": ["level", "rain_total"]}, "hours": {"type": "number"},
                       "points": {"type": "array", "items": {"type": "array", "items": {"type": "number"},
                                                             "description": "[epoch seconds, value]"}},
                       "thresholds": {"type": "array", "items": {"type": "object"}}}},
        "open_episodes": {"type": "array", "items": {"type": "object", "properties": {
            "rule": {"type": "string"}, "kind": {"enum": ["level", "rise", "rain"]}, "level": {"type": "string"},
            "label": {"type": "string"}, "severity": {"type": "string"}, "since": _TIME, "peak": {"type": "number"}}}},
        "open_alerts": _OPEN_ALERTS}},
    "Devices": {"type": "object", "properties": {
        "generated_at": _TIME, "query": {"type": "object"},
        "cameras": _section("Camera"),
        "patrol": _section("PatrolCamera", {"groups": {"type": "object", "description": "Per group: cameras, "
                                                        "cycle time, visits per minute, offline, behind schedule"}}),
        "vehicles": _section("Vehicle", {"jt808": {"type": "boolean", "description": "a JT/T 808 server runs"}}),
        "sensors": _section("Sensor"),
        "counters": {"type": "object", "description": "The runtime's device counters (as in /api/status)"}}},
}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "citygate console API", "version": "1",
             "description": "The gateway's cases, devices and status. Authenticate with a console session "
                            "(cookie; state changes also need the X-CSRF-Token header) or with "
                            "`Authorization: Bearer <token>` from web.tokens."},
    "security": [{"bearer": []}, {"session": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "session": {"type": "apiKey", "in": "cookie", "name": "citygate_session"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Review": {"type": "object", "description": "An operator's decision on the case.",
                       "properties": {"decision": {"enum": ["confirmed", "rejected"]}, "by": {"type": "string"},
                                      "at": {"type": "string", "format": "date-time"},
                                      "reason": {"type": ["string", "null"]}}},
            "ReviewResult": {"type": "object", "required": ["case_id", "review", "status"],
                             "properties": {"case_id": {"type": "string"},
                                            "review": {"enum": ["confirmed", "rejected"]},
                                            "status": {"type": "string", "description": "The case's status now."},
                                            "event_id": {"type": "string", "description": "The withdrawn event "
                                                         "of a rejected case the platform already had."}}},
            "Precision": {"type": "object", "properties": {
                "confirmed": {"type": "integer"}, "rejected": {"type": "integer"}, "reviewed": {"type": "integer"},
                "precision": {"type": ["number", "null"], "description": "confirmed / reviewed"}}},
            "Case": {"type": "object", "description": "The case JSON sent to the central platform, plus its "
                     "delivery state in the local store.",
                     "required": ["case_id", "status"],
                     "properties": {"case_id": {"type": "string"}, "source": {"type": "string"},
                                    "rule": {"type": "string"}, "category": {"type": "object"},
                                    "location": {"type": "object"}, "subject": {"type": "object"},
                                    "facts": {"type": "object"}, "evidence": {"type": "array", "items": {"type": "object"}},
                                    "status": {"enum": ["pending", "delivered", "dead", "stored", "held",
                                                        "rejected"]},
                                    "state": {"enum": ["open", "cleared", "withdrawn"]},
                                    "review": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Review"}]},
                                    "attempts": {"type": "integer"}, "recurrences": {"type": "integer"},
                                    "last_error": {"type": ["string", "null"]},
                                    "created_at": {"type": "string", "format": "date-time"},
                                    "delivered_at": {"type": ["string", "null"], "format": "date-time"}}},
            **DEVICE_SCHEMAS,
            "CommandRequest": {"type": "object", "required": ["kind"], "description": "text: 0x8300 to the "
                               "driver's display (read aloud); query: 0x8201 position query; params: 0x8103 "
                               "terminal parameters by name (gateway/protocols/jt808.py PARAMETERS) or hex id.",
                               "properties": {"kind": {"enum": ["text", "query", "params"]},
                                              "text": {"type": "string", "description": "kind text: GBK, at most "
                                                       "1000 bytes"},
                                              "emergency": {"type": "boolean", "description": "kind text"},
                                              "params": {"type": "object", "description": "kind params, e.g. "
                                                         "{\"default_report_interval_s\": 10}",
                                                         "additionalProperties": {"type": ["integer", "string"]}}}},
            "Command": {"type": "object", "required": ["id", "vehicle", "kind", "state"],
                        "properties": {"id": {"type": "string"}, "vehicle": {"type": "string"},
                                       "terminal": {"type": "string"}, "kind": {"enum": ["text", "query", "params"]},
                                       "msg_id": {"type": "string"}, "args": {"type": "object"},
                                       "origin": {"type": "string"},
                                       "state": {"enum": ["queued", "sent", "acknowledged", "failed", "expired"]},
                                       "serial": {"type": ["integer", "null"]}, "result": {"type": ["integer", "null"]},
                                       "result_name": {"type": ["string", "null"]},
                                       "reason": {"type": ["string", "null"]},
                                       "position": {"type": ["object", "null"]},
                                       "created_at": {"type": "string", "format": "date-time"},
                                       "expires_at": {"type": "string", "format": "date-time"},
                                       "sent_at": {"type": ["string", "null"], "format": "date-time"},
                                       "done_at": {"type": ["string", "null"], "format": "date-time"}}},
        },
    },
    "paths": {
        "/api/status": {"get": {"summary": "The runtime's status snapshot (every part's counters).",
                                "responses": {"200": {"description": "Snapshot", "content": {"application/json": {
                                    "schema": {"type": "object"}}}}, "500": _error("snapshot failed"), **_AUTH_ERRORS}}},
        "/api/cases": {"get": {
            "summary": "Cases, newest first, filtered.",
            "parameters": [_q("status", "pending | delivered | dead | stored | held | rejected"), _q("source", "video | vehicle | sensor"),
                           _q("category", "catalog key, code or name"), _q("rule", "rule name"),
                           _q("grid", "unit-grid code prefix"), _q("street", "part of the street name"),
                           _q("since", "filed at or after (ISO 8601; no zone = the site's)", {"type": "string", "format": "date-time"}),
                           _q("until", "filed before", {"type": "string", "format": "date-time"}),
                           _q("q", "text anywhere in the case"),
                           _q("limit", "1-200, default 50", {"type": "integer", "minimum": 1, "maximum": 200}),
                           _q("offset", "cases to skip", {"type": "integer", "minimum": 0})],
            "responses": {"200": {"description": "A page of cases", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"total": {"type": "integer"}, "offset": {"type": "integer"},
                                                 "limit": {"type": "integer"},
                                                 "cases": {"type": "array", "items": {"$ref": "#/components/schemas/Case"}}}}}}},
                          "400": _error("a filter value is invalid"), **_AUTH_ERRORS}}},
        "/api/cases/{case_id}": {"get": {
            "summary": "One case with its delivery state and the platform's rejections.",
            "parameters": [_CASE_ID],
            "responses": {"200": {"description": "The case", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Case"}}}}, "404": _error("unknown case"), **_AUTH_ERRORS}}},
        "/api/cases/{case_id}/retry": {"post": {
            "summary": "Send a dead, stored or pending case (again) now. Role: operator.",
            "parameters": [_CASE_ID, {"name": "X-CSRF-Token", "in": "header", "required": False,
                                      "schema": {"type": "string"}, "description": "Required with a session cookie."}],
            "responses": {"200": {"description": "Due for delivery", "content": {"application/json": {"schema": {
                "type": "object"}}}}, "409": _error("unknown or already delivered"), **_AUTH_ERRORS}}},
        "/api/cases/{case_id}/confirm": {"post": {
            "summary": "Confirm a case: a held one is sent now; any other is marked confirmed. Role: operator.",
            "parameters": [_CASE_ID, _CSRF],
            "requestBody": _REASON_BODY,
            "responses": {"200": _result("Confirmed"), "404": _error("unknown case"),
                          "409": _error("already reviewed"), **_AUTH_ERRORS}}},
        "/api/cases/{case_id}/reject": {"post": {
            "summary": "Reject a case with a reason: a held one is never sent; one the platform already has is "
                       "withdrawn (a withdrawn event). Role: operator.",
            "parameters": [_CASE_ID, _CSRF],
            "requestBody": {**_REASON_BODY, "required": True},
            "responses": {"200": _result("Rejected"), "400": _error("no reason given"),
                          "404": _error("unknown case"), "409": _error("already rejected"), **_AUTH_ERRORS}}},
        "/api/review/precision": {"get": {
            "summary": "Each rule's precision (confirmed / reviewed) over the last 7 and 30 days.",
            "responses": {"200": {"description": "Per rule, per window in days", "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "windows_days": {"type": "array", "items": {"type": "integer"}},
                    "rules": {"type": "object", "additionalProperties": {
                        "type": "object", "additionalProperties": {"$ref": "#/components/schemas/Precision"}}}}}}}},
                **_AUTH_ERRORS}}},
        "/api/devices": {"get": {
            "summary": "What /devices shows: cameras (online, fps, the last analysed frame at frame_url: "
                       "/cameras/<name>/last.jpg, a JPEG with the zones and detections drawn, same credentials), "
                       "patrol cameras, vehicles (last fix, open violations, JT/T 808 terminal), sensors (last "
                       "reading, the last hours per minute, open episodes); problems first, then by id. Plus the "
                       "runtime's device counters. Sections are left out when the gateway has no such device "
                       "source (patrol) or the query asks for another kind.",
            "parameters": [_q("kind", " | ".join(KINDS) + "; default all", {"enum": list(KINDS)}),
                           _q("q", "part of an id, name, plate, company or address (any case)"),
                           _q("limit", f"rows per section, 1-{MAX_LIMIT}, default 100",
                              {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
                           _q("offset", "rows to skip in each section", {"type": "integer", "minimum": 0})],
            "responses": {"200": {"description": "Devices", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Devices"}}}},
                "400": _error("a parameter is invalid"), "500": _error("snapshot failed"), **_AUTH_ERRORS}}},
        "/api/me": {"get": {"summary": "Who the credentials belong to.",
                            "responses": {"200": {"description": "Name, role and how authenticated", "content": {
                                "application/json": {"schema": {"type": "object"}}}}, **_AUTH_ERRORS}}},
        "/api/users": {"get": {"summary": "Users and tokens with their roles (no secrets). Role: admin.",
                               "responses": {"200": {"description": "Users", "content": {"application/json": {
                                   "schema": {"type": "array", "items": {"type": "object"}}}}}, **_AUTH_ERRORS}}},
        "/api/map": {"get": {"summary": "Map layers as GeoJSON FeatureCollections in the map's coordinate "
                                        "system (crs): grid, zones, sites, routes, roads, cameras, sensors (with "
                                        "their last reading), vehicles and their tracks, cases of the last 24 h.",
                             "responses": {"200": {"description": "crs, tiles and layers", "content": {
                                 "application/json": {"schema": {"type": "object", "properties": {
                                     "crs": {"enum": ["wgs84", "gcj02"]}, "tiles": {"type": ["object", "null"]},
                                     "layers": {"type": "object"}}}}}}, **_AUTH_ERRORS}}},
        "/api/vehicles/{vehicle_id}/commands": {
            "post": {"summary": "Send a command to a vehicle's JT/T 808 terminal now, or queue it until the terminal "
                                "authenticates again (vehicles.jt808.command_ttl_s). Role: operator.",
                     "parameters": [_VEHICLE_ID, _CSRF],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "$ref": "#/components/schemas/CommandRequest"}}}},
                     "responses": {"202": {"description": "Taken: sent or queued", "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/Command"}}}},
                                   "400": _error("bad kind or arguments"), "404": _error("unknown vehicle"),
                                   "429": _error("too many commands waiting"),
                                   "503": _error("no JT/T 808 server runs"), **_AUTH_ERRORS}},
            "get": {"summary": "A vehicle's commands, newest first, with their state and the terminal's result. "
                               "Role: operator.",
                    "parameters": [_VEHICLE_ID],
                    "responses": {"200": {"description": "Commands", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"vehicle": {"type": "string"}, "commands": {
                            "type": "array", "items": {"$ref": "#/components/schemas/Command"}}}}}}},
                                  "404": _error("unknown vehicle"), "503": _error("no JT/T 808 server runs"),
                                  **_AUTH_ERRORS}}},
        "/api/openapi.json": {"get": {"summary": "This document.",
                                      "responses": {"200": {"description": "OpenAPI 3.1", "content": {
                                          "application/json": {"schema": {"type": "object"}}}}, **_AUTH_ERRORS}}},
    },
}
