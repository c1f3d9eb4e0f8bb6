"""HTML of /devices: the devices view (gateway/devices.py) as an operator reads it, pure like pages.py.

Cameras as pictures (the last analysed frame with zones and detections, served by /cameras/<name>/last.jpg),
patrol cameras, vehicles and sensors as tables with problems first; each sensor's last hours as an
inline SVG line (no script, nothing the Content-Security-Policy refuses). Below, the runtime's raw
counters for whoever diagnoses a device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from gateway.web.pages import Viewer, _badge, _doc, _section, case_url, cell, e, fmt_time, generic

SPARK_W, SPARK_H = 220, 44
_COUNTER_TITLES = {"cameras": "Camera counters", "devices": "Device health (vehicles and sensors)",
                   "rules": "Rule counters (positions, readings, filters)", "patrol": "Patrol counters",
                   "jt808": "JT/T 808 server", "mqtt-source": "MQTT devices", "modbus": "Modbus TCP devices",
                   "http-ingest": "HTTP push uplinks"}
_PHASES = {"fetching": "fetching the picture", "queued": "waiting for the model", "analysing": "being analysed",
           "scheduled": "scheduled", "out_of_hours": "outside its hours"}


def _parse(iso: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(iso) if isinstance(iso, str) else None
    except ValueError:
        return None


def _age(seconds: float) -> str:
    s = abs(seconds)
    text = f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h" if s < 172800 \
        else f"{s / 86400:.0f} d"
    return f"in {text}" if seconds < 0 else f"{text} ago"


def when(iso: Any, now: datetime | None) -> str:
    """A time as HH:MM:SS (the full date in its tooltip) and how long ago it was."""
    t = _parse(iso)
    if t is None:
        return '<span class="muted">—</span>'
    short = t.strftime("%H:%M:%S") if now is not None and t.date() == now.astimezone(t.tzinfo).date() \
        else fmt_time(t)
    ago = f' <span class="muted">{e(_age((now - t).total_seconds()))}</span>' if now is not None else ""
    return f'<time datetime="{e(iso)}" title="{e(fmt_time(t))}">{e(short)}</time>{ago}'


def _online(value: bool | None) -> str:
    if value is None:
        return '<span class="badge">not heard</span>'
    return '<span class="badge online">online</span>' if value else '<span class="badge offline">offline</span>'


def _open_alerts(alerts: Sequence[Mapping[str, Any]], now: datetime | None) -> str:
    if not alerts:
        return '<span class="muted">—</span>'
    items = []
    for a in alerts:
        what = e(a.get("rule")) + (f" @{e(a['place'])}" if a.get("place") else "") \
            + (f" #{e(a['track_id'])}" if a.get("track_id") is not None else "")
        case = f' · <a href="{e(case_url(a["case_id"]))}">case</a>' if a.get("case_id") else ""
        items.append(f'<li title="{e(a.get("message"))}">{_badge(a.get("severity"))} {what} · since '
                     f'{when(a.get("since"), now)}{case}</li>')
    return f'<ul class="open">{"".join(items)}</ul>'


def sparkline(series: Mapping[str, Any] | None) -> str:
    """The series as an inline SVG line, with the rule's levels as dashed lines where they fall in
    its range (the lowest level always, so a low value reads as far from it), and the range in a title."""
    if not series or len(series.get("points") or ()) < 2:
        return ('<span class="muted" title="the rules keep the last hours per minute of the fields they watch: '
                'water levels, and rain where a rain rule watches the gauge">no recent series</span>')
    points = series["points"]
    values = [float(v) for _, v in points]
    thresholds = list(series.get("thresholds") or ())
    lo, hi = min(values), max(values)
    if thresholds:
        hi = max(hi, min(float(t["at"]) for t in thresholds))
    if series.get("kind") == "rain_total":
        lo = 0.0
    span = (hi - lo) or 1.0
    t0, t1 = points[0][0], points[-1][0]
    width = (t1 - t0) or 1.0

    def xy(t: float, v: float) -> str:
        return f"{(t - t0) / width * (SPARK_W - 2) + 1:.1f},{SPARK_H - 3 - (v - lo) / span * (SPARK_H - 6):.1f}"

    lines = []
    for t in thresholds:
        at = float(t["at"])
        if lo <= at <= hi:
            y = SPARK_H - 3 - (at - lo) / span * (SPARK_H - 6)
            colour = "#b42318" if t.get("severity") == "critical" else "#b26a00" if t.get("severity") == "warning" \
                else "#7a8590"
            lines.append(f'<line x1="0" x2="{SPARK_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
                         f'stroke-dasharray="4 3" stroke-width="1"><title>{e(t.get("name"))} {at:g}</title></line>')
    unit = series.get("unit") or ""
    what = "fallen" if series.get("kind") == "rain_total" else series.get("field", "")
    title = (f"{what}: {min(values):g}–{max(values):g} {unit}, {fmt_time(series.get('from'))} – "
             f"{fmt_time(series.get('to'))}")
    path = " ".join(xy(t, v) for t, v in points)
    return (f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" '
            f'aria-label="{e(title)}"><title>{e(title)}</title>{"".join(lines)}'
            f'<polyline points="{path}" fill="none" stroke="#1f3a5f" stroke-width="1.5"/></svg>'
            f'<br><span class="muted">{e(what)} · last {series.get("hours", 0):g} h · '
            f'{min(values):g}–{max(values):g} {e(unit)}</span>')


# -- sections ---------------------------------------------------------------------------------------


def _summary(section: Mapping[str, Any]) -> str:
    s = section.get("summary") or {}
    parts = [f"{section.get('total', 0)}"]
    parts += [f'<span class="{cls}">{s[k]} {k}</span>' for k, cls in
              (("online", "ok"), ("offline", "bad"), ("unknown", "muted"), ("alerting", "bad")) if s.get(k)]
    return " · ".join(parts)


def _pager(kind: str, section: Mapping[str, Any], query: Mapping[str, Any]) -> str:
    total, offset, shown = section.get("total", 0), section.get("offset", 0), len(section.get("items") or ())
    limit = query.get("limit") or 100
    if total <= shown and offset == 0:
        return ""
    base = {k: v for k, v in (("q", query.get("q")), ("limit", limit)) if v}
    links = [f'<span class="muted">{offset + 1 if shown else 0}–{offset + shown} of {total}</span>']
    if offset > 0:
        links.append(f'<a href="/devices?{e(urlencode({**base, "kind": kind, "offset": max(0, offset - limit)}))}">'
                     "« previous</a>")
    if offset + shown < total:
        links.append(f'<a href="/devices?{e(urlencode({**base, "kind": kind, "offset": offset + shown}))}">next »</a>')
    return f'<p class="pager">{" ".join(links)}</p>'


def _cameras(section: Mapping[str, Any], now: datetime | None) -> str:
    cards = []
    for c in section.get("items") or ():
        size = c.get("frame_size") or [480, 270]
        if c.get("frame_url"):
            picture = (f'<a href="{e(c["frame_url"])}"><img class="frame" src="{e(c["frame_url"])}" '
                       f'width="{int(size[0])}" height="{int(size[1])}" alt="{e(c["name"])}: last analysed frame"></a>')
        else:
            picture = '<div class="noframe">no frame analysed yet</div>'
        found = ", ".join(f"{e(k)} {v}" for k, v in sorted((c.get("detections") or {}).items())) or "nothing"
        error = f'<br><span class="bad">{e(c["last_error"])}</span>' if c.get("last_error") and not c["online"] else ""
        cards.append(
            f'<figure class="camera{"" if c["online"] else " down"}">{picture}<figcaption>'
            f'<b>{e(c["name"])}</b> {_online(c["online"])}<br><span class="muted">{e(c.get("address") or "")}</span><br>'
            f'decoded {cell(c.get("decoded_fps"))} fps · analysed {cell(c.get("analysed_fps"))} fps '
            f'(detect {cell(c.get("detect_fps"))})<br>last analysed {when(c.get("last_analysed_at"), now)}<br>'
            f'found: {found}{error}{_open_alerts(c.get("open_alerts") or (), now)}</figcaption></figure>')
    if not cards:
        return '<p class="muted">No camera matches.</p>'
    return f'<div class="cameras">{"".join(cards)}</div>'


def _patrol(section: Mapping[str, Any], now: datetime | None) -> str:
    groups = section.get("groups") or {}
    cols = ("cameras", "interval_s", "cycle_s", "visits_per_min", "offline", "behind_schedule", "late_s",
            "visit_ms_p99")
    head = "<tr><th>group</th>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"
    rows = "".join(f"<tr><td>{e(name)}</td>" + "".join(
        f'<td class="{"bad" if c == "behind_schedule" and g.get(c) else "num"}">{cell(g.get(c))}</td>' for c in cols)
        + "</tr>" for name, g in groups.items())
    table = [f"<table>{head}{rows}</table>"] if groups else []
    items = []
    for c in section.get("items") or ():
        picture = (f'<a href="{e(c["frame_url"])}"><img class="thumb" src="{e(c["frame_url"])}" '
                   f'alt="{e(c["id"])}: last picture" loading="lazy"></a>' if c.get("frame_url")
                   else '<span class="muted">—</span>')
        error = f'<br><span class="bad">{e(c["last_error"])}</span>' if c.get("last_error") else ""
        items.append(
            f'<tr><td>{picture}</td><td><b>{e(c["id"])}</b> {e(c["name"]) if c["name"] != c["id"] else ""}<br>'
            f'<span class="muted">{e(c.get("address") or "")}</span></td><td>{e(c["group"])}<br>'
            f'<span class="muted">preset {e(c["preset"])}</span></td><td>{_online(c["online"])}<br>'
            f'{e(_PHASES.get(c["phase"], c["phase"]))}</td><td>{when(c.get("last_visit"), now)}</td>'
            f'<td>{when(c.get("next_visit"), now)}</td><td class="num">{c.get("failures", 0)}{error}</td>'
            f'<td>{_open_alerts(c.get("open_alerts") or (), now)}</td></tr>')
    head = ("<tr><th>picture</th><th>camera</th><th>group</th><th>state</th><th>last visit</th><th>next visit</th>"
            "<th>failed visits</th><th>open alerts</th></tr>")
    table.append(f'<table class="devices">{head}{"".join(items)}</table>' if items
                 else '<p class="muted">No patrol camera matches.</p>')
    return "".join(table)


def _terminal(t: Mapping[str, Any] | None, jt808: bool, now: datetime | None) -> str:
    if t is None:
        return '<span class="muted">never connected</span>' if jt808 else '<span class="muted">—</span>'
    if t.get("authenticated"):
        state = '<span class="badge online">connected</span>'
    elif t.get("connected"):
        state = '<span class="badge warning">connected, not authenticated</span>'
        if t.get("auth_failures"):
            state += f' <span class="bad">{t["auth_failures"]} failed</span>'
    else:
        state = '<span class="badge offline">disconnected</span>'
    parts = [state]
    if t.get("address"):
        parts.append(f'<span class="muted">{e(t["address"])}{" · JT/T 808-" + e(t["protocol"]) if t.get("protocol") else ""}</span>')
    parts.append(f"last message {when(t.get('last_message_at'), now)}")
    if not t.get("connected") and t.get("disconnected_at"):
        parts.append(f"disconnected {when(t['disconnected_at'], now)}")
    pending = t.get("pending_commands") or 0
    parts.append(f'<span class="{"bad" if pending else "muted"}">{pending} command{"" if pending == 1 else "s"} '
                 "waiting</span>")
    return "<br>".join(parts)


def _vehicles(section: Mapping[str, Any], now: datetime | None) -> str:
    rows = []
    for v in section.get("items") or ():
        fix = v.get("last_fix")
        if fix:
            valid = "" if fix.get("valid", True) else ' <span class="bad">no GNSS fix</span>'
            last = (f'{when(fix.get("time"), now)}<br><b>{cell(fix.get("speed_kmh"))}</b> km/h · '
                    f'{cell(fix.get("lon"))}, {cell(fix.get("lat"))}{valid}')
        else:
            last = '<span class="muted">no fix yet</span>'
        kind = " · ".join(e(x) for x in (v.get("type"), v.get("company")) if x)
        who = (f'<b>{e(v["plate"] or v["id"])}</b> <span class="muted">{e(v["id"]) if v["plate"] else ""}</span><br>'
               f'<span class="muted">{kind}</span>') if v.get("registered") else \
            f'<b>{e(v["id"])}</b><br><span class="badge critical">not in the fleet</span>'
        rows.append(f'<tr><td>{who}</td><td>{_online(v.get("online"))}</td><td>{last}</td>'
                    f'<td>{_open_alerts(v.get("open_violations") or (), now)}</td>'
                    f'<td>{_terminal(v.get("terminal"), bool(section.get("jt808")), now)}</td></tr>')
    if not rows:
        return '<p class="muted">No vehicle matches.</p>'
    head = ("<tr><th>vehicle</th><th>status</th><th>last fix</th><th>open violations</th>"
            "<th>terminal (JT/T 808)</th></tr>")
    return f'<table class="devices">{head}{"".join(rows)}</table>'


def _sensors(section: Mapping[str, Any], now: datetime | None) -> str:
    rows = []
    for s in section.get("items") or ():
        reading = s.get("last_reading")
        if reading:
            values = "<br>".join(f'{e(v["field"])} <b>{cell(v["value"])}</b> {e(v.get("unit") or "")}'
                                 for v in reading.get("values") or ())
            last = f'{values}<br>{when(reading.get("time"), now)}'
        else:
            last = '<span class="muted">no reading yet</span>'
        episodes = []
        for ep in s.get("open_episodes") or ():
            label = f' {e(ep["label"])}' if ep.get("label") and ep["label"] != ep.get("level") else ""
            episodes.append(f'<li>{_badge(ep.get("severity"))} <b>{e(ep.get("level"))}</b>{label} · {e(ep.get("rule"))}'
                            f' · since {when(ep.get("since"), now)} · peak {cell(ep.get("peak"))}</li>')
        open_cell = (f'<ul class="open">{"".join(episodes)}</ul>' if episodes else "") + (
            _open_alerts(s.get("open_alerts") or (), now) if s.get("open_alerts") else "")
        subtitle = " · ".join(e(x) for x in (s["id"] if s.get("name") else "", s.get("kind")) if x)
        rows.append(f'<tr><td><b>{e(s["name"] or s["id"])}</b><br><span class="muted">{subtitle}<br>'
                    f'{e(s.get("address") or "")}</span></td><td>{_online(s.get("online"))}</td>'
                    f'<td>{last}</td><td>{sparkline(s.get("series"))}</td>'
                    f'<td>{open_cell or "<span class=muted>—</span>"}</td></tr>')
    if not rows:
        return '<p class="muted">No sensor matches.</p>'
    head = "<tr><th>sensor</th><th>status</th><th>last reading</th><th>recent</th><th>open episodes</th></tr>"
    return f'<table class="devices">{head}{"".join(rows)}</table>'


def _search(query: Mapping[str, Any]) -> str:
    kinds = "".join(f'<option value="{k}"{" selected" if query.get("kind") == k else ""}>{k}</option>'
                    for k in ("cameras", "patrol", "vehicles", "sensors"))
    return ('<form class="filters" method="get" action="/devices">'
            f'<input type="search" name="q" placeholder="id, name, plate, address" value="{e(query.get("q") or "")}">'
            f'<select name="kind"><option value="">all devices</option>{kinds}</select>'
            '<button type="submit">Find</button> <a href="/devices">all</a></form>')


def devices_page(viewer: Viewer, view: Mapping[str, Any] | None, snapshot: Mapping[str, Any],
                 snapshot_error: str | None = None, query_error: str | None = None) -> str:
    """The devices view, then the runtime's counters (collapsed)."""
    view = view or {}
    query = view.get("query") or {}
    now = _parse(view.get("generated_at"))
    parts = [_search(query)]
    if query_error:
        parts.append(f'<p class="bad" role="alert">{e(query_error)}</p>')
    if snapshot_error:
        parts.append(_section("Runtime snapshot unavailable", f'<p class="bad">{e(snapshot_error)}</p>'))
    if not view.get("generated_at") and not query_error:
        parts.append('<p class="muted">This console runs without a gateway: only counters are shown.</p>')
    sections = (("cameras", "Cameras", _cameras), ("patrol", "Patrol cameras", _patrol),
                ("vehicles", "Vehicles", _vehicles), ("sensors", "Sensors", _sensors))
    for kind, title, render in sections:
        section = view.get(kind)
        if section is None or (kind == "cameras" and not section.get("total") and query.get("kind") != kind):
            continue
        parts.append(f'<section id="{kind}"><h2>{e(title)} <span class="muted">{_summary(section)}</span></h2>'
                     f'{render(section, now)}{_pager(kind, section, query)}</section>')
    counters = [f"<h3>{e(title)}</h3>{generic(snapshot[key])}" for key, title in _COUNTER_TITLES.items()
                if snapshot.get(key)]
    counters += [f"<h3>GNSS receiver {e(key.removeprefix('nmea:'))}</h3>{generic(v)}"
                 for key, v in snapshot.items() if key.startswith("nmea:") and v]
    if counters and not (query.get("kind") or query.get("q")):  # a search shows what it found, nothing else
        parts.append(f'<section id="counters"><details><summary>Counters</summary>{"".join(counters)}'
                     "</details></section>")
    return _doc(f"citygate {viewer.site} devices", "".join(parts), viewer, refresh=True)
