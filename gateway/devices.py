"""The console's devices view: cameras, patrol cameras, vehicles and sensors as an operator checks them,
gathered from the running components into plain JSON-able dicts. The /devices page renders it and
/api/devices returns it, so both always say the same.

- cameras: online, decoded and analysed fps, the last analysed frame (`frame_url`, drawn on request
  by `camera_jpeg`), what the last inference found, open alerts;
- patrol cameras: group, preset, phase (fetching, queued, analysing, scheduled), last and next visit,
  failures, and the last picture while the memory budget keeps it;
- vehicles: last fix, open violations (the fleet rules' open alerts, with their case), the JT/T 808
  terminal's connection and waiting commands;
- sensors: last reading with units, the last hours per minute (levels as measured, rain as the total
  fallen since the start), open alarm episodes (level, since when) and other open alerts.

`view` runs on the event loop (the components' state lives there, and is not thread-safe); only
`camera_jpeg` blocks (drawing, encoding) and is called from a thread. Problems sort first (offline,
open alerts), then by id; `DeviceQuery` bounds what one request can ask for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import accumulate
from typing import Any
from urllib.parse import quote

from core.model import Position, Reading
from detectors.vehicle.identity import terminal_key
from gateway.device_index import DeviceIndex, OpenAlert

KINDS = ("cameras", "patrol", "vehicles", "sensors")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT = 100
SERIES_HOURS = 3.0  # the sensors' sparkline: what the rules keep per minute (the evidence chart's default)


class DeviceQueryError(ValueError):
    """A parameter of /devices or /api/devices that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    kind: str | None = None  # one section, or all
    text: str | None = None  # part of an id, name, plate, company or address (any case)
    limit: int = DEFAULT_LIMIT  # rows per section
    offset: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DeviceQuery:
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise DeviceQueryError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        text = (params.get("q") or "").strip() or None
        if text is not None and len(text) > MAX_TEXT:
            raise DeviceQueryError(f"q: at most {MAX_TEXT} characters")
        return cls(kind, text, _int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), _int(params, "offset", 0, 0, 10**9))

    def wants(self, kind: str) -> bool:
        return self.kind is None or self.kind == kind

    def matches(self, *texts: Any) -> bool:
        if self.text is None:
            return True
        needle = self.text.casefold()
        return any(needle in str(t).casefold() for t in texts if t)


def _int(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise DeviceQueryError(f"{name}: {raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise DeviceQueryError(f"{name}: {value} is not between {lo} and {hi}")
    return value


def frame_url(camera: str) -> str:
    return f"/cameras/{quote(camera, safe='')}/last.jpg"


class Devices:
    """The devices view over a running gateway's components (see `from_graph`)."""

    def __init__(self, config: Any, *, index: DeviceIndex, health: Any, sensors: Any, cameras: Mapping[str, Any],
                 patrol: Any = None, jt808: Any = None) -> None:
        self.config = config
        self.tz: tzinfo = config.tz
        self.index, self.health, self.sensors = index, health, sensors
        self.cameras = dict(cameras)  # name -> gateway.video_worker.CameraChannel
        self.patrol = patrol  # gateway.patrol.scheduler.PatrolScheduler
        self.jt808 = jt808  # gateway.sources.jt808_server.Jt808Server
        self._outlines: dict[str, list] = {}
        self._sensor_devices = {d.id: d for d in config.sensors.devices}
        self._fleet = {v.id: v for v in config.vehicles.fleet.vehicles}
        sensors_cfg = config.sensors
        self._episode_rules = {r.name for r in (*sensors_cfg.level_rules, *sensors_cfg.rise_rules, *sensors_cfg.rain_rules)}
        self._rain_fields = {r.value_field for r in sensors_cfg.rain_rules}

    @classmethod
    def from_graph(cls, graph: Any) -> Devices:
        cameras = {c.name.removeprefix("camera:"): c for c in graph.stages["sources"] if c.name.startswith("camera:")}
        return cls(graph.deployment.config, index=graph.router.devices, health=graph.router.health,
                   sensors=graph.router.sensors, cameras=cameras, patrol=graph.find("patrol"),
                   jt808=graph.find("jt808"))

    # -- the view ---------------------------------------------------------------------------------

    def view(self, query: DeviceQuery = DeviceQuery(), now: datetime | None = None) -> dict[str, Any]:
        """Every section the query asks for, each {total, offset, items, summary}."""
        now = now or datetime.now(UTC)
        out: dict[str, Any] = {"generated_at": self._iso(now), "query": {
            "kind": query.kind, "q": query.text, "limit": query.limit, "offset": query.offset}}
        if query.wants("cameras"):
            out["cameras"] = self._page([self._camera(n, c) for n, c in sorted(self.cameras.items())
                                         if query.matches(n, c.pipeline.camera.address)], query)
        if query.wants("patrol") and self.patrol is not None:
            section = self._page([self._patrolled(s) for s in self.patrol.camera_states()
                                  if query.matches(s["id"], s["name"], s["address"], s["group"])], query)
            section["groups"] = self.patrol.stats()["groups"]
            out["patrol"] = section
        if query.wants("vehicles"):
            out["vehicles"] = self._page(self._vehicles(query), query)
            out["vehicles"]["jt808"] = self.jt808 is not None
        if query.wants("sensors"):
            episodes: dict[str, list[dict]] = {}
            for ep in self.sensors.open_episodes():
                episodes.setdefault(ep["device"], []).append(ep)
            out["sensors"] = self._page([self._sensor(d, episodes.get(d.id, []))
                                         for d in self.config.sensors.devices
                                         if query.matches(d.id, d.name, d.address)], query, self._with_series)
        return out

    def _page(self, items: list[dict], query: DeviceQuery, detail: Any = None) -> dict[str, Any]:
        """Problems first, then by id; the summary counts every match, `detail` completes the rows shown."""
        items.sort(key=lambda i: (not i["problem"], i["id"]))
        summary = Counter("offline" if i["online"] is False else "online" if i["online"] else "unknown" for i in items)
        summary["alerting"] = sum(1 for i in items if i["alerting"])
        shown = items[query.offset:query.offset + query.limit]
        return {"total": len(items), "offset": query.offset, "summary": dict(summary),
                "items": [detail(i) for i in shown] if detail is not None else shown}

    def _iso(self, when: datetime | float | None) -> str | None:
        if when is None:
            return None
        if not isinstance(when, datetime):
            when = datetime.fromtimestamp(when, UTC)
        return when.astimezone(self.tz).isoformat(timespec="seconds")

    def _alerts(self, alerts: list[OpenAlert]) -> list[dict[str, Any]]:
        return [{**a.to_json(), "since": self._iso(a.since), "latest": self._iso(a.latest)} for a in alerts]

    # -- cameras ----------------------------------------------------------------------------------

    def _camera(self, name: str, channel: Any) -> dict[str, Any]:
        stats = channel.stats()
        frame, found = channel.last.last or (None, ())
        detections = Counter(d.label for d in found)
        alerts = self._alerts(self.index.open_alerts("camera", name))
        online = bool(stats.get("online"))
        cam = channel.pipeline.camera
        return {"id": name, "name": name, "address": cam.address, "online": online,
                "problem": not online, "alerting": bool(alerts),
                "decoded_fps": stats.get("decoded_fps"), "analysed_fps": stats.get("analysed_fps"),
                "detect_fps": cam.detect_fps, "decode_mode": stats.get("decode_mode"),
                "last_analysed_at": self._iso(frame.time) if frame is not None else None,
                "frame_url": frame_url(name) if frame is not None else None,
                "frame_size": list(frame.size) if frame is not None else None,
                "detections": dict(detections), "zones": [z.name for z in cam.zones],
                "frames_analysed": stats.get("frames_analysed"), "reconnects": stats.get("reconnects"),
                "last_error": stats.get("last_error") or None, "open_alerts": alerts}

    def _patrolled(self, s: dict[str, Any]) -> dict[str, Any]:
        alerts = self._alerts(self.index.open_alerts("camera", s["id"]))
        return {**s, "name": s["name"] or s["id"], "problem": s["online"] is False, "alerting": bool(alerts),
                "last_visit": self._iso(s["last_visit"]), "next_visit": self._iso(s["next_visit"]),
                "last_error": s["last_error"] or None, "frame_url": frame_url(s["id"]) if s["picture"] else None,
                "open_alerts": alerts}

    def has_camera(self, name: str) -> bool:
        return name in self.cameras or (self.patrol is not None and name in self.patrol.pictures)

    def camera_jpeg(self, name: str) -> bytes | None:
        """The camera's last analysed picture with its zones and detections drawn (None: no such camera
        or no picture yet). Blocking: call from a thread."""
        from gateway.camera_view import outlines  # OpenCV: only where there are cameras

        channel = self.cameras.get(name)
        if channel is not None:
            cam = channel.pipeline.camera
            if name not in self._outlines:
                self._outlines[name] = outlines(cam)
            return channel.last.jpeg(self._outlines[name], f"{name}  {cam.address or ''}".strip(), self.tz)
        cam = self.patrol.camera(name) if self.patrol is not None else None
        if cam is not None:
            return self.patrol.pictures.jpeg(name, lambda size: self.patrol.camera_outlines(name, size),
                                             f"{name}  {cam.address or cam.name or ''}".strip(), self.tz)
        return None

    # -- vehicles ---------------------------------------------------------------------------------

    def _vehicles(self, query: DeviceQuery) -> list[dict[str, Any]]:
        terminals = self.jt808.terminals() if self.jt808 is not None else {}
        rows = [self._vehicle(v.id, v, self.index.positions.get(v.id), terminals.get(terminal_key(v.terminal)))
                for v in self._fleet.values() if query.matches(v.id, v.plate, v.company, v.terminal, v.type)]
        # terminals and trackers not in the fleet that reported positions (flagged by the rules)
        rows += [self._vehicle(device, None, fix, terminals.get(device))
                 for device, fix in self.index.positions.items() if device not in self._fleet and query.matches(device)]
        return rows

    def _vehicle(self, vid: str, cfg: Any, fix: Position | None, terminal: dict | None) -> dict[str, Any]:
        alerts = self._alerts(self.index.open_alerts("vehicle", vid) + self.index.open_alerts("terminal", vid))
        online = self.health.online("vehicle", vid) if cfg is not None else (True if fix is not None else None)
        return {"id": vid, "plate": cfg.plate if cfg else "", "type": cfg.type if cfg else "", "registered": cfg is not None,
                "company": cfg.company if cfg else "", "terminal_number": cfg.terminal if cfg else vid,
                "online": online, "problem": bool(alerts) or online is False or cfg is None, "alerting": bool(alerts),
                "last_fix": None if fix is None else {
                    "time": self._iso(fix.time), "lon": fix.lon, "lat": fix.lat, "speed_kmh": fix.speed_kmh,
                    "course": fix.course, "valid": fix.valid, "history": fix.history},
                "open_violations": alerts,
                "terminal": None if terminal is None else {
                    **terminal, "pending_commands": terminal.get("pending_commands", 0),
                    **{k: self._iso(terminal.get(k)) for k in ("connected_at", "last_message_at", "disconnected_at")
                       if k in terminal}}}

    # -- sensors ----------------------------------------------------------------------------------

    def _sensor(self, dev: Any, episodes: list[dict]) -> dict[str, Any]:
        reading: Reading | None = self.index.readings.get(dev.id)
        others = [a for a in self.index.open_alerts("sensor", dev.id) if a.rule not in self._episode_rules]
        online = self.health.online("sensor", dev.id)
        shown = [{**e, "since": self._iso(e["since"])} for e in sorted(episodes, key=lambda e: e["since"])]
        return {"id": dev.id, "name": dev.name, "kind": dev.kind, "address": dev.address, "profile": dev.profile,
                "online": online, "problem": bool(episodes) or bool(others) or online is False,
                "alerting": bool(episodes) or bool(others),
                "last_reading": None if reading is None else {
                    "time": self._iso(reading.time),
                    "values": [{"field": k, "value": v, "unit": reading.units.get(k, "")} for k, v in reading.values.items()]},
                "open_episodes": shown, "open_alerts": self._alerts(others)}

    def _with_series(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "series": self._series(self._sensor_devices[row["id"]], self.index.readings.get(row["id"]))}

    def _series(self, dev: Any, reading: Reading | None) -> dict[str, Any] | None:
        """The sparkline's points: the device's first level field (or rain, as the total fallen since
        the start of the window) per minute over the SERIES_HOURS up to its last reading."""
        end = reading.time if reading is not None else datetime.now(UTC)
        values = self.sensors.recent_values(dev.id, end - timedelta(hours=SERIES_HOURS))
        field = next((f for f in values if f not in self._rain_fields and values[f]), None)
        rain = field is None
        if rain:
            field = next((f for f in values if values[f]), None)
        if field is None:
            return None
        points = values[field]
        unit = reading.units.get(field, "") if reading is not None else ""
        thresholds: list[dict[str, Any]] = []
        if rain:
            points = list(zip([t for t, _ in points], accumulate(v for _, v in points), strict=True))
        else:
            for rule in self.config.sensors.level_rules:
                if rule.value_field == field and dev.id in self.config.sensors.devices_for(rule):
                    thresholds += [{"name": lv.label or lv.name, "at": lv.at, "severity": lv.severity}
                                   for lv in rule.ladder]
        return {"field": field, "unit": unit or ("mm" if rain else ""), "kind": "rain_total" if rain else "level",
                "hours": SERIES_HOURS, "from": self._iso(points[0][0]), "to": self._iso(points[-1][0]),
                "points": [[round(t), round(v, 3)] for t, v in points], "thresholds": thresholds}
