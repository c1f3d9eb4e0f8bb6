"""Which fleet terminals have registered, and the auth code each was given, kept across restarts.

A JT/T 808 terminal registers once (0x0100), is handed an auth code (0x8100) and authenticates with it
on every connection after. A terminal number is no secret (it is on paperwork, and often on the truck),
so the code is handed out once: a fleet terminal is in one of these states (`entry` is its record):

    never registered  no entry. A registration matching the fleet config gets a new random code. The
                      code configured for it (derived from vehicles.jt808.auth_secret) authenticates
                      it too - terminals set up by hand, or registered before this store existed - and
                      its first such authentication records it as registered with that code.
    registered        entry with a code: only that code authenticates; a registration is answered
                      "terminal already registered" (0x8100 result 3), with no code.
    reset             entry without a code, until `reset_until`: no code authenticates, and a
                      registration matching the config gets a new code. After `reset_until` the
                      terminal stays locked out until the next reset.

An operator resets a terminal with `citygate jt808 reset` (a replaced terminal, a lost or leaked code);
a terminal resets itself by deregistering (0x0003) on an authenticated connection. The running gateway
owns the registrations file, so the CLI leaves a request file in `jt808_resets/` beside it, which the
server takes when that terminal next registers or authenticates (whether it is running now or starts
later). The file keeps a SHA-256 of each code, not the code: reading it does not let anyone authenticate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.storage import JsonSaver, write_durably

log = logging.getLogger(__name__)

REGISTRATIONS_FILE = "jt808_registrations.json"  # in the data directory
RESETS_DIR = "jt808_resets"  # beside it
_KEY = re.compile(r"^[0-9A-Za-z_-]{1,40}$")  # a terminal key that can name a request file
_FIELDS = ("maker", "model", "terminal_id", "plate_color", "plate")  # of the 0x0100 body, kept for the operator


def digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def new_code() -> str:
    return secrets.token_hex(8)


def resets_dir(path: Path) -> Path:
    return path.parent / RESETS_DIR


def can_reset(key: str) -> bool:
    """Whether a terminal key (detectors.vehicle.identity.terminal_key) can have a reset request."""
    return bool(_KEY.match(key))


def request_reset(path: Path, key: str, vehicle: str, by: str, valid_s: float, now: float) -> Path:
    """Leave a reset request for the server that keeps `path` (the CLI's side)."""
    if not can_reset(key):
        raise ValueError(f"terminal {key!r} is not a JT/T 808 terminal number")
    folder = resets_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    request = folder / f"{key}.json"
    write_durably(request, json.dumps({"terminal": key, "vehicle": vehicle, "by": by, "requested_at": now,
                                       "reset_until": now + valid_s}, ensure_ascii=False).encode())
    return request


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The saved registrations (the CLI's read-only view; empty when there is no file yet)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["terminals"]


def pending_resets(path: Path) -> dict[str, dict[str, Any]]:
    folder = resets_dir(path)
    out: dict[str, dict[str, Any]] = {}
    if folder.is_dir():
        for f in sorted(folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out[f.stem] = json.loads(f.read_text(encoding="utf-8"))
    return out


class Registrations:
    """Terminal key -> {code_sha256, vehicle, registered_at, peer, fields, how, reset_until, reset_by, reset_at}."""

    def __init__(self, path: Path | None, on_save_error: Callable[[OSError], None]) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.resets = 0  # codes revoked (reset) since the start
        self.saver = JsonSaver(path, lambda: {"terminals": self.entries}, lambda: self.version, on_save_error)

    def load(self) -> None:
        """Take back the registrations of the last run. An unreadable file is moved aside (`.bad`) and
        logged as an error: the terminals it held must register again."""
        path = self.path
        if path is None or not path.exists():
            return
        try:
            entries = read_entries(path)
            if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
                raise ValueError("'terminals' is not a mapping of terminal to registration")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad = path.with_name(path.name + ".bad")
            log.error("JT/T 808 registrations %s unreadable (%s); moved to %s: its terminals must register "
                      "again", path, exc, bad)
            with contextlib.suppress(OSError):
                path.replace(bad)
            return
        self.entries = entries
        log.info("JT/T 808: %d terminal registration(s) restored from %s", len(entries), path)

    def _changed(self) -> None:
        self.version += 1
        self.saver.soon()

    def entry(self, key: str, now: float) -> dict[str, Any] | None:
        """The terminal's record, after taking an operator's reset request for it, if one is waiting."""
        if self.path is not None and can_reset(key):
            request = resets_dir(self.path) / f"{key}.json"
            if request.exists():  # a stat: registrations and authentications only, never per position
                self._take_reset(key, request, now)
        return self.entries.get(key)

    def _take_reset(self, key: str, request: Path, now: float) -> None:
        try:
            data = json.loads(request.read_text(encoding="utf-8"))
            until, by = float(data["reset_until"]), str(data.get("by", "operator"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("JT/T 808 reset request %s unreadable (%s); ignored", request, exc)
            until, by = None, ""
        with contextlib.suppress(OSError):
            os.unlink(request)
        if until is not None:
            self.reset(key, until, by, now)
            log.warning("JT/T 808 terminal %s reset by %s: it may register again until %s", key, by,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until)))

    def reset(self, key: str, until: float, by: str, now: float) -> None:
        """Revoke the terminal's code; a registration matching the config is accepted until `until`."""
        entry = self.entries.setdefault(key, {})
        entry.update(code_sha256=None, reset_until=until, reset_by=by, reset_at=now)
        self.resets += 1
        self._changed()

    def register(self, key: str, vehicle: str, code: str, peer: str, fields: Mapping[str, Any], now: float) -> None:
        self.entries[key] = {"code_sha256": digest(code), "vehicle": vehicle, "registered_at": now, "peer": peer,
                             "how": "registered",
                             "fields": {k: fields[k] for k in _FIELDS if k in fields}}
        self._changed()

    def authenticated(self, key: str, vehicle: str, code: str, peer: str, now: float) -> None:
        """A terminal without a record authenticated with its configured code: it is registered now."""
        self.entries[key] = {"code_sha256": digest(code), "vehicle": vehicle, "registered_at": now, "peer": peer,
                             "how": "configured code"}
        self._changed()

    def registered(self) -> int:
        return sum(1 for e in self.entries.values() if e.get("code_sha256"))
