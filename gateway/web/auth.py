"""Who may use the console: password hashes, the users file, sessions, API tokens, login rate limits.

Passwords are kept only as Argon2id hashes (argon2-cffi: salted, memory-hard). A login creates a
server-side session (a random id in an HttpOnly, SameSite=Strict cookie) carrying its own CSRF
token; sessions live in memory, so a restart asks users to log in again. Machines use Bearer
tokens from the config and need no CSRF token (a browser never sends them by itself).

The users file holds one `name:role:hash` line per user (`citygate user add` writes it); it is
re-read when it changes, so a user added while the gateway runs can log in at once.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.config import ROLES, WebConfig, WebUser

log = logging.getLogger(__name__)
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile defaults
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Verified when the user is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

MAX_SESSIONS = 1000  # the oldest session is dropped beyond this
MAX_TRACKED = 10_000  # addresses / names the rate limiter remembers


class UsersFileError(Exception):
    """A users file that cannot be read; the message names the file and line."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def allows(role: str, needed: str) -> bool:
    """True when `role` may do what `needed` may (viewer < operator < admin)."""
    return ROLES.index(role) >= ROLES.index(needed)


# -- the users file ------------------------------------------------------------------------------

def read_users_file(path: Path) -> list[WebUser]:
    """The users in `path` (missing file: none); UsersFileError names a bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read: {exc.strerror}") from exc
    users = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not _NAME.fullmatch(parts[0]) or parts[1] not in ROLES or not parts[2].startswith("$argon2"):
            raise UsersFileError(f"{path}:{n}: expected 'name:role:argon2-hash' with role one of {', '.join(ROLES)}")
        users.append(WebUser(name=parts[0], role=parts[1], password_hash=parts[2]))
    return users


def user_line(name: str, role: str, password_hash: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return f"{name}:{role}:{password_hash}"


def write_user(path: Path, name: str, role: str, password_hash: str) -> bool:
    """Add or replace `name` in the users file (atomically, mode 0600); True if it was added."""
    line = user_line(name, role, password_hash)
    existing = read_users_file(path)
    kept = [user_line(u.name, u.role, u.password_hash) for u in existing if u.name != name]
    added = len(kept) == len(existing)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# citygate console users: name:role:argon2-hash (written by `citygate user add`)\n")
            f.write("\n".join([*kept, line]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return added


# -- who is asking --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    via: str  # "session" | "token" | "metrics"


@dataclass(slots=True)
class Session:
    id: str
    user: str
    role: str
    csrf: str
    expires: float


class Accounts:
    """Users (config + users file) and tokens; `check_password` is slow on purpose (run it in a thread)."""

    def __init__(self, web: WebConfig, users_file: Path | None = None, *, loopback: bool = True) -> None:
        self.web = web
        self.users_file = users_file
        self._file_users: dict[str, WebUser] = {}
        self._file_mtime: float | None = None
        self._tokens = [(t.token.encode(), Principal(t.name, t.role, "token")) for t in web.tokens]
        self._metrics = web.metrics_token.encode() if web.metrics_token else None
        self.generated_password: str | None = None
        self._config_users = {u.name: u for u in web.users}
        try:
            self.reload()
        except UsersFileError as exc:  # users from the config and tokens still work; the log says why
            log.error("console: %s; its users cannot log in until it is fixed", exc)
        if loopback and not self._config_users and not self._file_users and not self._tokens:
            # Nobody configured on a loopback-only console: a login for this run only.
            self.generated_password = secrets.token_urlsafe(12)
            self._config_users["admin"] = WebUser(name="admin", role="admin",
                                                  password_hash=hash_password(self.generated_password))

    def reload(self) -> None:
        """Re-read the users file if it changed (raises UsersFileError)."""
        if self.users_file is None:
            return
        try:
            mtime = self.users_file.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._file_mtime or mtime is None:
            self._file_users = {u.name: u for u in read_users_file(self.users_file)}
            self._file_mtime = mtime

    def user(self, name: str) -> WebUser | None:
        return self._config_users.get(name) or self._file_users.get(name)

    def names(self) -> list[tuple[str, str, str]]:
        """(name, role, where) of every user and token, for the admin."""
        out = [(u.name, u.role, "config") for u in self._config_users.values()]
        out += [(u.name, u.role, "users file") for n, u in self._file_users.items() if n not in self._config_users]
        out += [(p.name, p.role, "token") for _, p in self._tokens]
        return out

    def check_password(self, name: str, password: str) -> WebUser | None:
        user = self.user(name)
        ok = verify_password(user.password_hash if user else _DUMMY_HASH, password)
        return user if ok and user is not None else None

    def bearer(self, token: str, metrics: bool = False) -> Principal | None:
        raw = token.encode()
        found = None
        for secret, principal in self._tokens:  # compare with every token: no early exit to time
            if hmac.compare_digest(secret, raw):
                found = principal
        if found is None and metrics and self._metrics is not None and hmac.compare_digest(self._metrics, raw):
            found = Principal("metrics", "viewer", "metrics")
        return found


class Sessions:
    """Logged-in browsers: id -> Session, bounded, expiring."""

    def __init__(self, ttl_s: float, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, role: str) -> Session:
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), self.clock() + self.ttl_s)
        self._sessions[s.id] = s
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return s

    def get(self, session_id: str | None) -> Session | None:
        s = self._sessions.get(session_id) if session_id else None
        if s is not None and s.expires <= self.clock():
            del self._sessions[s.id]
            return None
        return s

    def drop(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass(slots=True)
class RateLimiter:
    """At most `limit` failures per key within `window_s`; bounded memory (oldest keys forgotten)."""

    limit: int
    window_s: float
    clock: object = time.monotonic
    _failures: OrderedDict[str, deque] = field(default_factory=OrderedDict)

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None when it may now."""
        q = self._failures.get(key)
        if not q:
            return None
        now = self.clock()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) < self.limit:
            return None
        return max(1.0, q[0] + self.window_s - now)

    def fail(self, key: str) -> None:
        q = self._failures.pop(key, None) or deque(maxlen=self.limit)
        q.append(self.clock())
        self._failures[key] = q  # most recent last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)
