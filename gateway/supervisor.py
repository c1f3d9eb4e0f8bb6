"""Supervised asyncio tasks: a task that crashes is logged with its traceback, counted and
restarted with exponential backoff; it never takes the other tasks down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.aio import Backoff

log = logging.getLogger(__name__)


@dataclass
class TaskState:
    name: str
    restarts: int = 0
    state: str = "starting"  # running | backoff | finished | stopped
    last_error: str = ""
    last_logged: str = ""  # the last error logged with its traceback


class Supervisor:
    def __init__(self, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 healthy_after_s: float = 60.0) -> None:
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s  # a run this long resets the backoff
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, restart: bool = True,
              backoff: tuple[float, float] | None = None) -> asyncio.Task:
        """Run `factory()` as a task; if it raises, restart it (a normal return ends it). `backoff`
        (first, cap) in seconds overrides the supervisor's for this task (e.g. a broker's reconnect)."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        state = self.states[name] = TaskState(name)
        first, cap = backoff or (self.backoff_initial_s, self.backoff_max_s)
        task = asyncio.create_task(self._guard(state, factory, restart, Backoff(first, cap)), name=name)
        self._tasks[name] = task
        return task

    async def _guard(self, state: TaskState, factory: Callable[[], Awaitable[None]], restart: bool,
                     backoff: Backoff) -> None:
        while True:
            started = time.monotonic()
            state.state = "running"
            try:
                await factory()
            except asyncio.CancelledError:
                state.state = "stopped"
                raise
            except Exception as exc:  # noqa: BLE001 - the point of a supervisor: log, count, restart
                state.restarts += 1
                error = state.last_error = f"{type(exc).__name__}: {exc}"
                if not restart:
                    state.state = "failed"
                    log.exception("task %s failed; not restarting", state.name)
                    return
                if time.monotonic() - started >= self.healthy_after_s:
                    backoff.reset()
                delay = backoff.next()
                if error == state.last_logged:  # the same failure again (a broker still down): one line
                    log.warning("task %s failed again: %s (restart %d in %.1fs)", state.name, error,
                                state.restarts, delay)
                else:
                    state.last_logged = error
                    log.exception("task %s crashed (restart %d in %.1fs)", state.name, state.restarts, delay)
                state.state = "backoff"
                await asyncio.sleep(delay)
                continue
            state.state = "finished"
            return

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait for them (at most `timeout` seconds)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def wait(self, names: list[str], timeout: float) -> bool:
        """Wait until the named tasks have ended by themselves; False on timeout."""
        tasks = [self._tasks[n] for n in names if n in self._tasks and not self._tasks[n].done()]
        if not tasks:
            return True
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    def snapshot(self) -> dict[str, dict]:
        return {name: {"state": s.state, "restarts": s.restarts, "last_error": s.last_error}
                for name, s in self.states.items()}
