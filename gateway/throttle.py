"""Rate-limited logging: a repeated problem logs once per interval with a count of what was held back.

A stranger can repeat a problem (a connection flood, made-up device ids, a socket accept failing with
"too many open files") thousands of times a second; the log must stay readable and small.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class LogThrottle:
    """Allows one log line per key per interval and counts what it held back."""

    MAX_KEYS = 10_000  # keys may come from the network: bound the memory they can take

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last line for this key)."""
        now = time.monotonic()
        if len(self._last) >= self.MAX_KEYS and key not in self._last:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            self._held = collections.Counter({k: n for k, n in self._held.items() if k in self._last})
            if len(self._last) >= self.MAX_KEYS:
                key = "(many keys)"
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: Any) -> None:
        """Log `msg % args` at `level` unless this key logged within the interval."""
        allowed, held = self.allow(key)
        if allowed:
            if held:
                msg += " (and %d more like it since the last report)"
                args = (*args, held)
            logger.log(level, msg, *args)


_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def throttle_resource_errors(loop: asyncio.AbstractEventLoop, interval_s: float = 60.0) -> None:
    """Make the loop log out-of-resource errors it reports itself (a listening socket's accept()
    failing with "too many open files" while a flood holds every descriptor) once per interval,
    without a traceback; other errors go to the handler that was there. Idempotent per loop."""
    previous = loop.get_exception_handler()
    if getattr(previous, "throttles_resource_errors", False):
        return
    throttle = LogThrottle(interval_s)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRORS:
            message = context.get("message", "event loop error")
            throttle.log(log, logging.ERROR, message, "%s: %s", message, exc)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.throttles_resource_errors = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
