"""Access control for every request: who is asking (session cookie or Bearer token), may they, and
did a state-changing browser request carry its CSRF token. Also the login and logout routes.

Handlers declare what they need with `@requires("operator")` (default: any logged-in viewer) or
`@public` (only /healthz and the login page). A browser without a session asking for a page is
sent to the login page; anything else without credentials gets 401.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from gateway.web import pages
from gateway.web.auth import Principal, Session, allows
from gateway.web.state import CONSOLE, log

SESSION_COOKIE = "citygate_session"
LOGIN_COOKIE = "citygate_login"  # CSRF token of the login form (double submit): no session exists yet
PRINCIPAL = web.RequestKey("principal", Principal)
SESSION = web.RequestKey("session", Session)
NEXT_URL = web.RequestKey("next_url", str)
_SAFE = ("GET", "HEAD", "OPTIONS")
_API_PREFIXES = ("/api/", "/metrics", "/evidence/", "/cameras/")  # answered 401, not sent to the login page
MAX_PASSWORD = 1024  # characters; Argon2 hashes anything, but an attacker's megabyte costs us time

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(role: str) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.role = role  # type: ignore[attr-defined]
        return handler
    return mark


def public(handler: Handler) -> Handler:
    handler.public = True  # type: ignore[attr-defined]
    return handler


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def viewer(request: web.Request) -> pages.Viewer:
    p: Principal = request[PRINCIPAL]
    session = request.get(SESSION)
    console = request.app[CONSOLE]
    return pages.Viewer(p.name, p.role, session.csrf if session else "", console.site_name(), console.timezone)


def _unauthorised(request: web.Request, message: str) -> web.StreamResponse:
    wants_page = request.method in ("GET", "HEAD") and not request.path.startswith(_API_PREFIXES)
    if wants_page:
        raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe=""))
    return web.json_response({"error": message}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="citygate"'})


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE]
    console.stats["requests"] += 1
    target = request.match_info.handler
    if getattr(target, "public", False) or request.path.startswith("/static/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        found = console.accounts.bearer(token.strip(), metrics=request.path == "/metrics") \
            if scheme.lower() == "bearer" else None
        if found is None or (found.via == "metrics" and request.path != "/metrics"):
            console.stats["unauthorised"] += 1
            return web.json_response({"error": "unknown token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="citygate", error="invalid_token"'})
        request[PRINCIPAL] = found
    else:
        session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            console.stats["unauthorised"] += 1
            return _unauthorised(request, "log in or send 'Authorization: Bearer <token>'")
        request[PRINCIPAL] = Principal(session.user, session.role, "session")
        request[SESSION] = session
        if request.method not in _SAFE:
            sent = request.headers.get("X-CSRF-Token")
            if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                sent = (await request.post()).get("csrf")
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                console.stats["csrf_refused"] += 1
                return web.json_response({"error": "missing or wrong CSRF token"}, status=403)
    needed = getattr(target, "role", "viewer")
    if not allows(request[PRINCIPAL].role, needed):
        console.stats["forbidden"] += 1
        return web.json_response({"error": f"needs the {needed} role; {request[PRINCIPAL].name} is "
                                  f"{request[PRINCIPAL].role}"}, status=403)
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer: no framing, no sniffing, only the gateway's own scripts, styles and images."""
    h = response.headers
    h.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'self'; "
                 "script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Cache-Control", "no-store")
    h["Server"] = "citygate"


def _safe_next(value: object) -> str:
    """Only a path on this site: never '//host' or a full URL (an open redirect)."""
    text = value if isinstance(value, str) else ""
    if not text.startswith("/") or text.startswith("//") or "\\" in text or any(ord(c) < 32 for c in text):
        return "/"
    return text


def _login_form(request: web.Request, error: str | None = None, status: int = 200,
                headers: dict | None = None) -> web.Response:
    console = request.app[CONSOLE]
    csrf = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    next_url = _safe_next(request.query.get("next") if request.method == "GET" else request.get(NEXT_URL))
    response = web.Response(text=pages.login_page(csrf, next_url, error, console.site_name()), status=status,
                            content_type="text/html", headers=headers)
    response.set_cookie(LOGIN_COOKIE, csrf, httponly=True, samesite="Strict", secure=console.secure_cookies,
                        path="/login", max_age=3600)
    return response


@public
async def login_get(request: web.Request) -> web.StreamResponse:
    return _login_form(request)


@public
async def login_post(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    request[NEXT_URL] = str(form.get("next") or "")
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.get("csrf")
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), cookie.encode()):
        console.stats["csrf_refused"] += 1
        return _login_form(request, "The login form expired; please try again.", status=403)
    name = str(form.get("user", ""))[:64]
    password = str(form.get("password", ""))[:MAX_PASSWORD]
    address = f"addr:{request.remote}"
    user_key = f"user:{name.lower()}"
    wait = max(console.by_address.retry_after(address) or 0, console.by_user.retry_after(user_key) or 0)
    if wait:
        console.stats["logins_throttled"] += 1
        return _login_form(request, f"Too many failed logins; try again in {int(wait) + 1} s.", status=429,
                           headers={"Retry-After": str(int(wait) + 1)})
    try:
        console.accounts.reload()
    except Exception as exc:  # a broken users file: users from the config still log in
        log.error("console: %s", exc)
    user = await asyncio.to_thread(console.accounts.check_password, name, password)
    if user is None:
        console.by_address.fail(address)
        console.by_user.fail(user_key)
        console.stats["logins_failed"] += 1
        log.warning("console: failed login for %r from %s", name, request.remote)
        return _login_form(request, "Wrong user or password.", status=401)
    console.by_user.reset(user_key)
    console.stats["logins"] += 1
    session = console.sessions.create(user.name, user.role)
    log.info("console: %s (%s) logged in from %s", user.name, user.role, request.remote)
    response = web.HTTPSeeOther(_safe_next(form.get("next")))
    response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="Strict",
                        secure=console.secure_cookies, path="/", max_age=int(console.sessions.ttl_s))
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[CONSOLE].sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response
