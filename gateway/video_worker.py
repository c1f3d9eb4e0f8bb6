"""Runs one camera's analysis pipeline in its own thread, fed through a one-frame mailbox, and
`CameraChannel`, one camera (reader, analysis worker, pipeline) as a gateway component.

Queue policy: the mailbox holds one frame; a newer frame replaces an unprocessed older one (counted
as `frames_skipped`), so a slow model makes the camera analyse fewer frames, never older ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from core.model import Alert, Frame
from gateway.camera_view import LastFrame
from gateway.sources.camera import STREAM_TIMEOUT_S

log = logging.getLogger(__name__)


class FrameWorker:
    def __init__(self, name: str, process: Callable[[Frame], list[Alert]],
                 on_alert: Callable[[Alert], None], on_done: Callable[[Frame], None] | None = None, *,
                 flush: Callable[[], list[Alert]] | None = None, idle_flush_s: float = 10.0) -> None:
        self.name = name
        self._process = process
        # alerts the analysis holds back (a clip's post-roll) come out when frames stop arriving
        self._flush = flush
        self._idle_flush_s = idle_flush_s
        self._on_alert = on_alert
        self._on_done = on_done
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"analyse-{name}", daemon=True)
        self.counters = {"frames_analysed": 0, "frames_skipped": 0, "analysis_errors": 0, "analysis_last_error": ""}

    def start(self) -> None:
        self._thread.start()

    def offer(self, frame: Frame) -> None:
        with self._cond:
            if self._slot is not None:
                self.counters["frames_skipped"] += 1
            self._slot = frame
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the frame in hand (its alerts still count), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    if not self._cond.wait(self._idle_flush_s):
                        self._emit(self._flushed())  # the stream went quiet
                if self._slot is None:
                    self._emit(self._flushed())  # stopping: nothing held may be lost
                    return
                frame, self._slot = self._slot, None
            try:
                alerts = self._process(frame)
            except Exception as exc:  # noqa: BLE001 - a bad frame must not end the camera's analysis
                self.counters["analysis_errors"] += 1
                self.counters["analysis_last_error"] = f"{type(exc).__name__}: {exc}"
                log.exception("camera %s: analysis failed on frame %d", self.name, frame.index)
                continue
            self.counters["frames_analysed"] += 1
            self._emit(alerts)
            if self._on_done is not None:
                self._on_done(frame)

    def _flushed(self) -> list[Alert]:
        if self._flush is None:
            return []
        try:
            return self._flush()
        except Exception:  # noqa: BLE001 - logged; the worker must go on
            self.counters["analysis_errors"] += 1
            log.exception("camera %s: flushing held alerts failed", self.name)
            return []

    def _emit(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self._on_alert(alert)


class CameraChannel:
    """One camera as a component: its reader threads (`source`: CameraSource) feed `worker`, which runs
    `pipeline`. Stopping ends the reader first, then lets the worker finish its frame and release the
    alerts it held back (a clip's post-roll), so nothing in hand is lost."""

    def __init__(self, source: Any, worker: FrameWorker, pipeline: Any, latency: Any = None,
                 last: LastFrame | None = None) -> None:
        self.name = f"camera:{source.name}"
        self.source, self.worker, self.pipeline = source, worker, pipeline
        self.latency = latency  # gateway.web.metrics.LatencyHistogram around the worker's analysis call
        self.last = last or LastFrame()  # the newest analysed frame, for the console (kept by the caller's on_done)

    def stats(self) -> dict[str, Any]:
        stats = {**self.source.stats(), **getattr(self.pipeline, "stats", {}), **self.worker.counters,
                 "analysed_fps": round(self.last.fps(), 2)}
        if self.latency is not None:
            stats["analysis_latency"] = self.latency.snapshot()
        return stats

    async def run(self, stop: asyncio.Event) -> None:
        self.worker.start()
        self.source.start()
        try:
            await stop.wait()
        finally:
            # a read blocked on a silent stream ends within its timeout (STREAM_TIMEOUT_S)
            await asyncio.to_thread(self.source.stop, STREAM_TIMEOUT_S + 1.0)
            await asyncio.to_thread(self.worker.stop)
