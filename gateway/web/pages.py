"""HTML of the console: pure functions, data in, one string out.

Pages are rendered on the server; the only script is /static/console.js (the clip player and
confirmation prompts) and the only stylesheet /static/console.css, both served by the gateway
(the box is often offline and the Content-Security-Policy allows nothing else). Every piece of
text that comes from data goes through `html.escape`; links are built with `urllib.parse.quote`.
The runtime may add sections to its snapshot at any time: anything this module does not know
is rendered generically (a dict as a table, a dict of dicts as one row per key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from gateway.outbox import STATUSES, CaseRecord, DeadLetter
from gateway.web.evidence import evidence_name
from gateway.web.queries import SOURCES, CaseQuery

REFRESH_S = 10
MAX_ROWS = 200  # rows of one generic table; the rest is summarised, so a page stays small
MAX_DEPTH = 4  # nesting of generic tables; deeper values are shown as text

# Sections of the snapshot with a place of their own on the overview.
_HANDLED = ("site", "gateway_id", "started_at", "uptime_s", "outbox", "cameras", "recent_alerts", "devices")
_OUTBOX_SHOWN = ("pending", "delivered", "dead", "stored", "held", "rejected", "fill_ratio")


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who the page is for: shown in the header; `csrf` goes into every form."""

    name: str
    role: str
    csrf: str
    site: str = "citygate"
    tz: Any = None  # the site's time zone, for times the store keeps as epoch seconds

    def may(self, needed: str) -> bool:
        from gateway.web.auth import allows

        return allows(self.role, needed)


# -- small formatters ---------------------------------------------------------------------------


def e(value: Any) -> str:
    """Escaped text of any value."""
    return escape("" if value is None else str(value), quote=True)


def fmt_time(value: Any) -> str:
    """An ISO time (or datetime) as 'YYYY-MM-DD HH:MM:SS' in the time zone it carries."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def fmt_duration(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return str(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (f"{days} d " if days else "") + f"{hours:02d}:{minutes:02d}:{s:02d}"


def cell(value: Any, depth: int = 0) -> str:
    """One table cell's inner HTML: booleans coloured, numbers compact, nested data as tables."""
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, bool):
        return '<span class="ok">yes</span>' if value else '<span class="bad">no</span>'
    if isinstance(value, float):
        # up to 6 decimals: a longitude shown as 116.4 instead of 116.3962 is 300 m off on the ground
        return e(f"{value:.3g}" if abs(value) < 1 else f"{value:,.6f}".rstrip("0").rstrip("."))
    if isinstance(value, int):
        return e(value)
    if isinstance(value, Mapping):
        return generic(value, depth + 1) if value else '<span class="muted">—</span>'
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value):
            return generic(list(value), depth + 1)
        return e(", ".join(str(v) for v in value))
    return e(value)


_GOOD_STATES = ("running", "ok", "idle", "connected", "done")


def _num(value: Any, key: Any = None) -> str:
    """Class of a table cell: numbers right-aligned; a set error or a task not running in red."""
    if (key in ("last_error", "error") and value) or (key == "state" and isinstance(value, str)
                                                      and value not in _GOOD_STATES):
        return ' class="bad"'
    return ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


def generic(value: Any, depth: int = 0) -> str:
    """Any JSON-like value as HTML: the fallback for snapshot sections this module does not know."""
    if depth > MAX_DEPTH:
        return f"<code>{e(value)}</code>"
    if isinstance(value, Mapping):
        items = list(value.items())
        if items and all(isinstance(v, Mapping) for _, v in items):
            return _table([{"": k, **v} for k, v in items], depth)
        rows = "".join(f"<tr><th>{e(k)}</th><td{_num(v, k)}>{cell(v, depth)}</td></tr>" for k, v in items[:MAX_ROWS])
        return f'<table class="kv">{rows}</table>{_more(len(items))}'
    if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
        return _table(list(value), depth)
    return cell(value, depth)


def _table(rows: list[Mapping[str, Any]], depth: int) -> str:
    cols = _columns(rows[:MAX_ROWS])
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td{_num(r.get(c), c)}>{cell(r.get(c), depth)}</td>" for c in cols) + "</tr>"
        for r in rows[:MAX_ROWS]
    )
    return f"<table><tr>{head}</tr>{body}</table>{_more(len(rows))}"


def _more(n: int) -> str:
    return f'<p class="muted">… {n - MAX_ROWS} more not shown</p>' if n > MAX_ROWS else ""


def _section(title: str, body: str, anchor: str = "") -> str:
    ident = f' id="{e(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{e(title)}</h2>{body}</section>"


def _doc(title: str, body: str, viewer: Viewer | None, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    if viewer is None:
        nav = ""
    else:
        nav = (f'<h1><a href="/">citygate · {e(viewer.site)}</a></h1>'
               '<nav><a href="/">Overview</a><a href="/cases">Cases</a><a href="/review">To review</a>'
               '<a href="/devices">Devices</a><a href="/map">Map</a>'
               '<a href="/api/openapi.json">API</a></nav>'
               f'<form class="logout" method="post" action="/logout"><input type="hidden" name="csrf" '
               f'value="{e(viewer.csrf)}"><span>{e(viewer.name)} ({e(viewer.role)})</span> '
               '<button type="submit">Log out</button></form>')
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
        f'<title>{e(title)}</title><link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        f"<body><header>{nav}</header><main>{body}</main></body></html>"
    )


def login_page(csrf: str, next_url: str, error: str | None = None, site: str = "citygate") -> str:
    msg = f'<p class="bad" role="alert">{e(error)}</p>' if error else ""
    body = (f'<section class="login"><h2>citygate · {e(site)}</h2>{msg}'
            '<form method="post" action="/login">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="next" value="{e(next_url)}">'
            '<label>User <input name="user" autocomplete="username" required autofocus></label>'
            '<label>Password <input name="password" type="password" autocomplete="current-password" required></label>'
            '<button type="submit">Log in</button></form></section>')
    return _doc("citygate login", body, None)


# -- case pieces ----------------------------------------------------------------------------------


def case_url(case_id: str) -> str:
    return "/cases/" + quote(case_id, safe="")


def evidence_url(case_id: str, name: str) -> str:
    return f"/evidence/{quote(case_id, safe='')}/{quote(name, safe='')}"


def _category(cat: Mapping[str, Any]) -> str:
    code = cat.get("code") or f"{cat.get('major', '')}{cat.get('minor', '')}"
    return f"{e(cat.get('name', ''))} <span class=\"muted\">{e(code)}</span>"


def _subject(subj: Mapping[str, Any]) -> str:
    text = f"{subj.get('kind', '')}:{subj.get('id', '')}"
    if subj.get("place"):
        text += f" @{subj['place']}"
    if subj.get("track_id") is not None:
        text += f" #{subj['track_id']}"
    return e(text)


def _badge(word: Any) -> str:
    return f'<span class="badge {e(word)}">{e(word)}</span>'


def _thumb(rec: CaseRecord) -> str:
    for item in rec.case.get("evidence", ()):
        if isinstance(item, Mapping) and str(item.get("media_type", "")).startswith("image/"):
            src = evidence_url(rec.case_id, evidence_name(item)) + "?size=thumb"
            return (f'<a href="{e(case_url(rec.case_id))}"><img class="thumb" src="{e(src)}" '
                    f'alt="{e(evidence_name(item))}" loading="lazy"></a>')
    return '<span class="muted">—</span>'


def cases_table(records: list[CaseRecord]) -> str:
    if not records:
        return '<p class="muted">No cases.</p>'
    head = ("<tr><th>evidence</th><th>time</th><th>case</th><th>category</th><th>rule</th><th>subject</th>"
            "<th>grid / street</th><th>status</th><th>recurrences</th></tr>")
    rows = []
    for r in records:
        c = r.case
        loc = c.get("location") or {}
        rows.append(
            f'<tr class="case"><td>{_thumb(r)}</td><td>{e(fmt_time(c.get("detected_at")))}</td>'
            f'<td><a href="{e(case_url(r.case_id))}">{e(r.case_id)}</a><br>'
            f'<span class="muted">{e(c.get("message") or "")}</span></td>'
            f"<td>{_category(c.get('category') or {})}</td><td>{e(c.get('rule'))}</td>"
            f"<td>{_subject(c.get('subject') or {})}</td>"
            f"<td>{e(loc.get('grid_code') or '')}<br><span class=\"muted\">{e(loc.get('street') or '')}</span></td>"
            f"<td>{_badge(r.status)}</td><td class=\"num\">{r.recurrences}</td></tr>"
        )
    return f"<table class=\"cases\">{head}{''.join(rows)}</table>"


def _options(name: str, values: Iterable[str], chosen: str | None) -> str:
    opts = [f'<option value="">{e(name)}: all</option>']
    opts += [f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(v)}</option>' for v in values]
    return f'<select name="{e(name)}">{"".join(opts)}</select>'


def _local_input(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%dT%H:%M")


def cases_page(viewer: Viewer, q: CaseQuery, total: int, records: list[CaseRecord],
               facets: Mapping[str, list[str]], error: str | None = None) -> str:
    """Newest first, with filters, text search and pages."""
    form = (
        '<form class="filters" method="get" action="/cases">'
        f'<input type="search" name="q" placeholder="search: id, message, place, facts" value="{e(q.text or "")}">'
        + _options("status", STATUSES, q.status)
        + _options("source", sorted(set(SOURCES) | set(facets.get("source", []))), q.source)
        + _options("category", facets.get("category", []), q.category)
        + _options("rule", facets.get("rule", []), q.rule)
        + f'<input name="grid" placeholder="grid code" value="{e(q.grid or "")}">'
        + f'<input name="street" placeholder="street" list="streets" value="{e(q.street or "")}">'
        + '<datalist id="streets">' + "".join(f'<option value="{e(s)}">' for s in facets.get("street", []))
        + "</datalist>"
        + f'<label>from <input type="datetime-local" name="since" value="{_local_input(q.since)}"></label>'
        + f'<label>to <input type="datetime-local" name="until" value="{_local_input(q.until)}"></label>'
        + '<button type="submit">Filter</button> <a href="/cases">clear</a></form>'
    )
    msg = f'<p class="bad" role="alert">{e(error)}</p>' if error else ""
    params = {k: v for k, v in (("q", q.text), ("status", q.status), ("source", q.source),
                                ("category", q.category), ("rule", q.rule), ("grid", q.grid),
                                ("street", q.street), ("since", _local_input(q.since)),
                                ("until", _local_input(q.until)), ("limit", str(q.limit))) if v}
    pager = []
    if q.offset > 0:
        pager.append(f'<a href="/cases?{e(urlencode({**params, "offset": max(0, q.offset - q.limit)}))}">« newer</a>')
    if q.offset + len(records) < total:
        pager.append(f'<a href="/cases?{e(urlencode({**params, "offset": q.offset + q.limit}))}">older »</a>')
    shown = f"{q.offset + 1}–{q.offset + len(records)} of {total}" if records else f"0 of {total}"
    body = (_section("Cases", form + msg + f'<p class="muted">{shown}</p>' + cases_table(records)
                     + f'<p class="pager">{" ".join(pager)}</p>'))
    return _doc("citygate cases", body, viewer)


# -- overview and devices ---------------------------------------------------------------------------


def overview_page(viewer: Viewer, snapshot: Mapping[str, Any], counts: Mapping[str, int], fill_ratio: float,
                  records: list[CaseRecord], snapshot_error: str | None = None) -> str:
    """Outbox counts, the newest cases, cameras, other sections of the snapshot, recent alerts."""
    parts = [f'<p class="muted">uptime {e(fmt_duration(snapshot.get("uptime_s", 0)))} · started '
             f'{e(fmt_time(snapshot.get("started_at", "")))} · gateway {e(snapshot.get("gateway_id", ""))}</p>']
    if snapshot_error:
        parts.append(_section("Runtime snapshot unavailable", f'<p class="bad">{e(snapshot_error)}</p>'))
    boxes = "".join(f'<div>{e(k)}<b><a href="/cases?status={e(k)}">{v}</a></b></div>' for k, v in counts.items())
    ratio_cls = "bad" if fill_ratio >= 0.8 else ""
    boxes += f'<div>fill<b class="{ratio_cls}">{fill_ratio:.1%}</b></div>'
    extra = {k: v for k, v in (snapshot.get("outbox") or {}).items() if k not in _OUTBOX_SHOWN}
    parts.append(_section("Outbox", f'<div class="counts">{boxes}</div>' + (generic(extra) if extra else "")))
    parts.append(_section(f"Newest cases ({len(records)})", cases_table(records)
                          + '<p><a href="/cases">all cases, filters and search »</a></p>', "cases"))
    if snapshot.get("cameras"):
        parts.append(_section("Cameras", generic(snapshot["cameras"]), "cameras"))
    for key, value in snapshot.items():
        if key not in _HANDLED:
            parts.append(_section(key.replace("_", " ").capitalize(), generic(value), key))
    alerts = snapshot.get("recent_alerts") or []
    parts.append(_section("Recent alerts", _alerts(alerts) if alerts else '<p class="muted">No alerts.</p>'))
    return _doc(f"citygate {viewer.site}", "".join(parts), viewer, refresh=True)


def _alerts(alerts: list[Mapping[str, Any]]) -> str:
    rows = []
    for a in alerts[:MAX_ROWS]:
        if not isinstance(a, Mapping):
            rows.append(f"<tr><td colspan=\"6\">{e(a)}</td></tr>")
            continue
        rows.append(
            f"<tr><td>{e(fmt_time(a.get('time')))}</td><td>{_badge(a.get('state', ''))}</td>"
            f"<td>{_badge(a.get('severity', ''))}</td><td>{e(a.get('rule'))}</td>"
            f"<td>{e(a.get('subject_kind'))}:{e(a.get('subject_id'))}"
            f"{' @' + e(a['place']) if a.get('place') else ''}</td><td>{e(a.get('message'))}</td></tr>"
        )
    head = "<tr><th>time</th><th>state</th><th>severity</th><th>rule</th><th>subject</th><th>message</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>{_more(len(alerts))}"


def map_page(viewer: Viewer) -> str:
    """The map: Leaflet (vendored) draws /api/map; no tile is fetched unless web.map_tiles names a server."""
    body = ('<div class="maplegend" id="legend"></div>'
            '<div id="map" data-api="/api/map" aria-label="map of cases, devices and layers"></div>'
            '<script src="/static/vendor/leaflet/leaflet.js" defer></script>'
            '<script src="/static/console-map.js" defer></script>')
    return _doc(f"citygate {viewer.site} map", body, viewer).replace(
        '<link rel="stylesheet" href="/static/console.css">',
        '<link rel="stylesheet" href="/static/vendor/leaflet/leaflet.css"><link rel="stylesheet" href="/static/console.css">')


# -- one case -------------------------------------------------------------------------------------


def case_page(viewer: Viewer, rec: CaseRecord, dead_letters: list[DeadLetter],
              clips: Mapping[str, tuple[int, float]] | None = None, notice: str | None = None) -> str:
    """Everything about one case: evidence, facts, place, delivery state, the platform's rejections."""
    c = rec.case
    cat = c.get("category") or {}
    try:  # the store keeps UTC; show its times in the case's own zone, as detected_at is shown
        tz = datetime.fromisoformat(str(c.get("detected_at"))).tzinfo
    except ValueError:
        tz = None

    def local(t: datetime | None) -> str | None:
        return None if t is None else fmt_time(t.astimezone(tz))

    summary = {
        "case_id": rec.case_id, "category": f"{cat.get('name', '')} ({cat.get('code', '')})",
        "rule": c.get("rule"), "severity": c.get("severity"), "source": c.get("source"),
        "detected_at": fmt_time(c.get("detected_at")), "message": c.get("message"),
    }
    delivery = {
        "status": rec.status, "attempts": rec.attempts, "created_at": local(rec.created_at),
        "updated_at": local(rec.updated_at), "next_attempt_at": local(rec.next_attempt_at),
        "delivered_at": local(rec.delivered_at), "last_error": rec.last_error,
        "recurrences": rec.recurrences, "last_recurrence_at": local(rec.last_recurrence_at),
    }
    title = (f'<h2>{_category(cat)} · {_badge(rec.status)}</h2><p><code>{e(rec.case_id)}</code> · '
             f'<a href="/api/cases/{e(quote(rec.case_id, safe=""))}">JSON</a></p>')
    parts = [title]
    if notice:
        parts.append(f'<p class="notice" role="status">{e(notice)}</p>')
    review = _section("Review", _review(viewer, rec), "review")
    if rec.status == "held":  # the decision the operator came for, above the evidence
        parts.append(review)
    parts += [
        _section("Evidence", _evidence(rec.case_id, c.get("evidence") or [], clips or {})),
        _section("Case", generic(summary)),
        _section("Facts", generic(c.get("facts") or {})),
        _section("Location", generic(c.get("location") or {})),
        _section("Subject", generic(c.get("subject") or {})),
        _section("Delivery", generic(delivery) + _retry_form(viewer, rec)),
    ]
    if rec.status != "held":
        parts.append(review)
    known = {"case_id", "source", "category", "rule", "severity", "detected_at", "location", "subject",
             "evidence", "facts", "message"}
    others = {k: v for k, v in c.items() if k not in known}
    if others:
        parts.append(_section("Other fields", generic(others)))
    if dead_letters:
        letters = "".join(f"<h3>{e(local(d.at))} · HTTP {e(d.status_code)}</h3><pre>{e(d.response_body)}</pre>"
                          for d in dead_letters)
        parts.append(_section("Replies of the central platform (rejections)", letters))
    return _doc(f"case {rec.case_id}", "".join(parts), viewer)


def _review(viewer: Viewer, rec: CaseRecord) -> str:
    """The operator's decision, and the forms to make it: confirm (a held case is sent) and reject
    with a reason (a held case is never sent; one already sent is withdrawn)."""
    parts = []
    if rec.status == "held":
        parts.append('<p class="notice">Held for review: the central platform hears of this case only once '
                     "an operator confirms it.</p>")
    if rec.review:
        r = rec.review
        parts.append(f'<p>{_badge(r.get("decision"))} by {e(r.get("by"))} at {e(fmt_time(r.get("at")))}'
                     + (f" · {e(r.get('reason'))}" if r.get("reason") else "") + "</p>")
    decision = (rec.review or {}).get("decision")
    if decision == "rejected":
        return "".join(parts)
    if not viewer.may("operator"):
        parts.append('<p class="muted">An operator can confirm or reject this case.</p>')
        return "".join(parts)
    url = e(case_url(rec.case_id))
    csrf = f'<input type="hidden" name="csrf" value="{e(viewer.csrf)}">'
    if decision is None:
        send = "Confirm and send" if rec.status == "held" else "Confirm"
        parts.append(f'<form class="review" method="post" action="{url}/confirm">{csrf}'
                     '<input name="reason" placeholder="note (optional)" maxlength="500">'
                     f'<button type="submit" name="confirm">{e(send)}</button></form>')
    what = "never sent" if rec.status == "held" else "withdrawn from the central platform"
    parts.append(f'<form class="review" method="post" action="{url}/reject" data-confirm="Reject this case? '
                 f'It will be {e(what)}.">{csrf}'
                 '<input name="reason" placeholder="why it is not a case" required maxlength="500">'
                 '<button type="submit" name="reject">Reject</button></form>')
    return "".join(parts)


def review_page(viewer: Viewer, total: int, held: list[CaseRecord],
                table: Mapping[str, Mapping[int, Any]], windows: Iterable[int]) -> str:
    """Cases held for review, then each rule's precision (confirmed / reviewed) per window."""
    windows = list(windows)
    more = f'<p><a href="/cases?status=held">all {total} held cases »</a></p>' if total > len(held) else ""
    parts = [_section(f"To review ({total})", cases_table(held) + more, "held")]
    if table:
        head = "<tr><th>rule</th>" + "".join(f"<th>{d} days: confirmed / reviewed</th><th>precision</th>"
                                             for d in windows) + "</tr>"
        rows = []
        for rule, per in table.items():
            cells = ""
            for d in windows:
                p = per.get(d)
                value = None if p is None else p.precision
                shown = '<span class="muted">—</span>' if value is None else f"{value:.0%}"
                cells += (f'<td class="num">{0 if p is None else p.confirmed} / {0 if p is None else p.reviewed}</td>'
                          f'<td class="num">{shown}</td>')
            rows.append(f'<tr><td><a href="/cases?{e(urlencode({"rule": rule}))}">{e(rule)}</a></td>{cells}</tr>')
        body = f'<table class="precision">{head}{"".join(rows)}</table>'
    else:
        body = '<p class="muted">No case has been reviewed yet.</p>'
    parts.append(_section("Rule precision", body, "precision"))
    return _doc(f"citygate {viewer.site} review", "".join(parts), viewer)


def _retry_form(viewer: Viewer, rec: CaseRecord) -> str:
    if rec.status in ("delivered", "held", "rejected"):
        return ""
    if not viewer.may("operator"):
        return '<p class="muted">An operator can send this case again.</p>'
    return (f'<form method="post" action="{e(case_url(rec.case_id))}/retry" data-confirm="Send this case again now?">'
            f'<input type="hidden" name="csrf" value="{e(viewer.csrf)}">'
            '<button type="submit">Send again now</button></form>')


def _evidence(case_id: str, items: list[Mapping[str, Any]], clips: Mapping[str, tuple[int, float]]) -> str:
    if not items:
        return '<p class="muted">No evidence.</p>'
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        name = evidence_name(item)
        url = e(evidence_url(case_id, name))
        media = str(item.get("media_type", ""))
        meta = (f'<a href="{url}" download>{e(name)}</a> · {e(media)} · {e(item.get("size", "?"))} bytes · '
                f'<span class="muted">sha256 {e(str(item.get("sha256", ""))[:16])}…</span>')
        if media.startswith("image/"):
            out.append(f'<figure><img class="evidence" src="{url}" alt="{e(name)}"><figcaption>{meta}'
                       "</figcaption></figure>")
        elif name in clips:
            count, fps = clips[name]
            out.append(
                f'<figure class="clip" data-frames="{url}/frames/" data-count="{count}" data-fps="{fps:.2f}">'
                f'<img class="evidence" src="{url}/frames/0.jpg" alt="{e(name)} frame 1">'
                '<div class="controls"><button type="button" class="play">▶ play</button>'
                f'<input type="range" min="0" max="{count - 1}" value="0" aria-label="frame">'
                f'<span class="frame">1 / {count}</span></div>'
                f"<figcaption>{meta} · {count} frames at {fps:.1f} fps (shown frame by frame; "
                "download the AVI for a video player)</figcaption></figure>")
        else:
            out.append(f"<p>{meta}</p>")
    return "".join(out)
