"""HTML of the status page and the case page: pure functions, data in, one string out.

The box is often offline, so a page carries its own small stylesheet and no script. Every piece
of text that comes from data (site names, camera errors, rule names, facts) goes through
`html.escape`; links are built with `urllib.parse.quote`. The runtime may add sections to its
snapshot at any time: anything this module does not know is rendered generically (a dict as a
table, a dict of dicts as a table with one row per key, a list of dicts as a table).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from gateway.outbox import CaseRecord, DeadLetter

REFRESH_S = 5
MAX_ROWS = 200  # rows of one generic table; the rest is summarised, so a page stays small
MAX_DEPTH = 4  # nesting of generic tables; deeper values are shown as text

# Sections of the snapshot with a place of their own on the page.
_HANDLED = ("site", "started_at", "uptime_s", "outbox", "cameras", "recent_alerts")
_OUTBOX_SHOWN = ("pending", "delivered", "dead", "stored", "fill_ratio")

_CSS = """
body{font:14px/1.4 system-ui,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:0;color:#1d232b;background:#f3f5f7}
header{background:#1f3a5f;color:#fff;padding:10px 16px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header a{color:#fff}
main{padding:8px 16px}section{background:#fff;border:1px solid #d8dde3;border-radius:4px;margin:10px 0;padding:8px 12px}
h2{font-size:15px;margin:2px 0 8px}table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e3e7eb;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.kv th{background:none;color:#5a6570;font-weight:normal}
.ok{color:#17803d}.bad{color:#b42318;font-weight:600}.muted{color:#7a8590}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;color:#fff;background:#7a8590}
.badge.pending{background:#b26a00}.badge.delivered{background:#17803d}.badge.dead{background:#b42318}
.badge.stored{background:#44617d}.badge.critical{background:#b42318}.badge.warning{background:#b26a00}
.badge.open{background:#b42318}.badge.closed{background:#17803d}
.counts{display:flex;gap:20px;flex-wrap:wrap}.counts div{min-width:90px}.counts b{display:block;font-size:22px}
img.thumb{width:96px;height:54px;object-fit:cover;border:1px solid #d8dde3}
img.evidence{max-width:100%;border:1px solid #d8dde3;display:block;margin:6px 0}
pre{background:#f6f8fa;border:1px solid #e3e7eb;padding:6px;white-space:pre-wrap;word-break:break-all;max-height:300px;overflow:auto}
code{background:#eef1f4;padding:1px 4px}
"""


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


def _doc(title: str, header: str, body: str, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>"
        f"<body><header>{header}</header><main>{body}</main></body></html>"
    )


# -- case pieces ----------------------------------------------------------------------------------


def case_url(case_id: str) -> str:
    return "/cases/" + quote(case_id, safe="")


def evidence_url(case_id: str, name: str) -> str:
    return f"/evidence/{quote(case_id, safe='')}/{quote(name, safe='')}"


def evidence_name(item: Mapping[str, Any]) -> str:
    """The name an evidence entry is served under: its `name`, else the file name of its `path`."""
    name = item.get("name") or str(item.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1]
    return str(name)


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
        if str(item.get("media_type", "")).startswith("image/"):
            src = evidence_url(rec.case_id, evidence_name(item))
            return (f'<a href="{e(case_url(rec.case_id))}"><img class="thumb" src="{e(src)}" '
                    f'alt="{e(evidence_name(item))}" loading="lazy"></a>')
    return '<span class="muted">—</span>'


def cases_table(records: list[CaseRecord]) -> str:
    if not records:
        return '<p class="muted">No cases yet.</p>'
    head = ("<tr><th>time</th><th>case</th><th>category</th><th>rule</th><th>subject</th><th>grid / street</th>"
            "<th>status</th><th>recurrences</th><th>evidence</th></tr>")
    rows = []
    for r in records:
        c = r.case
        loc = c.get("location") or {}
        rows.append(
            f"<tr><td>{e(fmt_time(c.get('detected_at')))}</td>"
            f'<td><a href="{e(case_url(r.case_id))}">{e(r.case_id)}</a></td>'
            f"<td>{_category(c.get('category') or {})}</td><td>{e(c.get('rule'))}</td>"
            f"<td>{_subject(c.get('subject') or {})}</td>"
            f"<td>{e(loc.get('grid_code') or '')}<br><span class=\"muted\">{e(loc.get('street') or '')}</span></td>"
            f"<td>{_badge(r.status)}</td><td class=\"num\">{r.recurrences}</td><td>{_thumb(r)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


# -- pages ----------------------------------------------------------------------------------------


def index_page(snapshot: Mapping[str, Any], counts: Mapping[str, int], fill_ratio: float,
               records: list[CaseRecord], snapshot_error: str | None = None) -> str:
    """The status page: header, outbox counts, recent cases, cameras, other sections, recent alerts."""
    site = snapshot.get("site", "citygate")
    header = (f'<h1><a href="/">citygate · {e(site)}</a></h1>'
              f"<span>uptime {e(fmt_duration(snapshot.get('uptime_s', 0)))}</span>"
              f"<span>started {e(fmt_time(snapshot.get('started_at', '')))}</span>"
              '<span><a href="/api/status">/api/status</a> · <a href="/api/cases">/api/cases</a></span>')
    parts = []
    if snapshot_error:
        parts.append(_section("Runtime snapshot unavailable", f'<p class="bad">{e(snapshot_error)}</p>'))

    boxes = "".join(f"<div>{e(k)}<b>{v}</b></div>" for k, v in counts.items())
    ratio_cls = "bad" if fill_ratio >= 0.8 else ""
    boxes += f'<div>fill<b class="{ratio_cls}">{fill_ratio:.1%}</b></div>'
    extra = {k: v for k, v in (snapshot.get("outbox") or {}).items() if k not in _OUTBOX_SHOWN}
    parts.append(_section("Outbox", f'<div class="counts">{boxes}</div>' + (generic(extra) if extra else "")))
    parts.append(_section(f"Recent cases ({len(records)})", cases_table(records), "cases"))
    if snapshot.get("cameras"):
        parts.append(_section("Cameras", generic(snapshot["cameras"]), "cameras"))
    for key, value in snapshot.items():
        if key not in _HANDLED:
            parts.append(_section(key.replace("_", " ").capitalize(), generic(value), key))
    alerts = snapshot.get("recent_alerts") or []
    parts.append(_section("Recent alerts", _alerts(alerts) if alerts else '<p class="muted">No alerts.</p>'))
    return _doc(f"citygate {site}", header, "".join(parts), refresh=True)


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


def case_page(rec: CaseRecord, dead_letters: list[DeadLetter]) -> str:
    """Everything about one case: fields, delivery state, evidence inline, rejections, how to retry."""
    c = rec.case
    cat = c.get("category") or {}
    header = (f'<h1><a href="/">citygate</a> · case {e(rec.case_id)}</h1>'
              f'<span>{_badge(rec.status)}</span>'
              f'<span><a href="/api/cases/{e(quote(rec.case_id, safe=""))}">JSON</a></span>')
    summary = {
        "case_id": rec.case_id,
        "category": f"{cat.get('name', '')} ({cat.get('code') or str(cat.get('major', '')) + str(cat.get('minor', ''))})",
        "rule": c.get("rule"),
        "severity": c.get("severity"),
        "source": c.get("source"),
        "detected_at": fmt_time(c.get("detected_at")),
        "message": c.get("message"),
    }
    # The store keeps UTC; show its times in the case's own zone, as detected_at is shown.
    try:
        tz = datetime.fromisoformat(str(c.get("detected_at"))).tzinfo
    except ValueError:
        tz = None

    def local(t: datetime | None) -> str | None:
        return None if t is None else fmt_time(t.astimezone(tz))

    delivery = {
        "status": rec.status,
        "attempts": rec.attempts,
        "created_at": local(rec.created_at),
        "updated_at": local(rec.updated_at),
        "next_attempt_at": local(rec.next_attempt_at),
        "delivered_at": local(rec.delivered_at),
        "last_error": rec.last_error,
        "recurrences": rec.recurrences,
        "last_recurrence_at": local(rec.last_recurrence_at),
    }
    parts = [
        _section("Case", generic(summary)),
        _section("Category", generic(cat)),
        _section("Location", generic(c.get("location") or {})),
        _section("Subject", generic(c.get("subject") or {})),
        _section("Facts", generic(c.get("facts") or {})),
        _section("Delivery", generic(delivery)),
        _section("Evidence", _evidence(rec.case_id, c.get("evidence") or [])),
    ]
    known = {"case_id", "source", "category", "rule", "severity", "detected_at", "location", "subject",
             "evidence", "facts", "message"}
    others = {k: v for k, v in c.items() if k not in known}
    if others:
        parts.append(_section("Other fields", generic(others)))
    if dead_letters:
        letters = "".join(
            f"<h3>{e(local(d.at))} · HTTP {e(d.status_code)}</h3><pre>{e(d.response_body)}</pre>"
            for d in dead_letters
        )
        parts.append(_section("Rejections by the central platform", letters))
    if rec.status != "delivered":
        parts.append(_section(
            "Retry",
            f"<p>To send this case (again) now, run on the gateway: "
            f"<code>citygate cases retry {e(rec.case_id)}</code></p>",
        ))
    return _doc(f"case {rec.case_id}", header, "".join(parts), refresh=False)


def _evidence(case_id: str, items: list[Mapping[str, Any]]) -> str:
    if not items:
        return '<p class="muted">No evidence.</p>'
    out = []
    for item in items:
        name = evidence_name(item)
        url = e(evidence_url(case_id, name))
        media = str(item.get("media_type", ""))
        meta = (f'{e(media)} · {e(item.get("size", "?"))} bytes · '
                f'<span class="muted">sha256 {e(item.get("sha256", ""))}</span>')
        link = f'<a href="{url}">{e(name)}</a>'
        if media.startswith("image/"):
            out.append(f'<figure>{link} — {meta}<img class="evidence" src="{url}" alt="{e(name)}"></figure>')
        else:
            out.append(f"<p>{link} — {meta}</p>")
    return "".join(out)
