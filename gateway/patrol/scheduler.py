"""The patrol: visits each camera of this box's share at its group's interval, one picture per visit.

A visit fetches one picture (bounded: `concurrency` fetches in flight, and new visits start only while
fewer than `prefetch` pictures wait for the model or are being fetched quickly, so pictures do not
go stale in a queue), then waits its turn in the one inference queue, shared round-robin by the
groups and served by `inference_workers` threads (one per core): decode, detect, rules across visits.
A camera that times out, refuses or answers 401 costs only its own fetch slot until its timeout;
it is retried at its next slot, counted, and after `offline_after` failed visits in a row a
`camera_offline` alert opens, closed by its next good visit (as the continuous source does).
Beside the alert, a typed `HealthChange` goes to `health` (the router's device-health table): online
at a camera's first good visit and when it comes back, offline when the alert opens.

Component interface: `name`, `async run(stop)`, `stats()`. Alerts go to `submit` on the event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import cv2

from core.model import Alert, HealthChange
from detectors.video.backends import ObjectDetector
from detectors.video.config import CameraConfig, ZoneConfig
from detectors.video.patrol_rules import PatrolRules, PictureBudget
from detectors.video.rules import schedule_active
from gateway.camera_view import KeptPicture, LastPictures, Outline, outlines
from gateway.patrol.config import PatrolConfig, PatrolPreset
from gateway.patrol.fair_queue import FairQueue
from gateway.patrol.inventory import PatrolCamera, shard_of
from gateway.patrol.picture import NotAPicture, decode_for_model, to_picture_pixels
from gateway.patrol.snapshot import Picture, SnapshotClient, VisitFailed

log = logging.getLogger(__name__)

OFFLINE_RULE = "camera_offline"  # the continuous source's rule name, so both kinds of camera read alike
SLOW_FETCH_MIN_S = 0.5  # a fetch running longer than this and 4x the usual fetch time no longer holds
#                         back new visits: a dead camera must not
OUT_OF_HOURS_RECHECK_S = 60.0
RECENT = 2000  # visit durations kept per group for the percentiles


def camera_config(cam: PatrolCamera, preset: PatrolPreset, size: tuple[int, int]) -> CameraConfig:
    """The camera as the video rules know it: the preset's zones in this picture's pixels."""
    w, h = size
    zones = preset.zones
    if preset.coordinates == "relative":
        zones = [ZoneConfig(name=z.name, mask=z.mask, polygon=[(x * w, y * h) for x, y in z.polygon]) for z in zones]
    return CameraConfig(name=cam.id, url=cam.url, lon=cam.lon, lat=cam.lat, address=cam.address, zones=zones,
                        rules=preset.rules, evidence=preset.evidence)


@dataclass(eq=False)
class _Camera:
    cam: PatrolCamera
    interval_s: float
    due: float
    failures: int = 0  # consecutive
    offline: bool = False
    reported_online: bool = False  # a HealthChange(online) went out since the last offline one
    rules: PatrolRules | None = None
    size: tuple[int, int] | None = None
    last_visit: float | None = None
    last_error: str = ""
    phase: str = "scheduled"  # scheduled | fetching | queued (for inference) | analysing | out_of_hours


@dataclass(eq=False)
class _Group:
    cameras: int = 0
    visits: int = 0
    failures: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    done_at: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))  # for visits per minute
    visit_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    revisit_s: float | None = None  # moving average of the time between two visits of one camera
    late_s: float = 0.0  # moving average of how late visits start against their schedule


@dataclass(slots=True)
class _Job:
    camera: _Camera
    picture: Picture
    when: datetime
    done: asyncio.Future[list[Alert]]


class PatrolScheduler:
    name = "patrol"

    def __init__(self, cameras: list[PatrolCamera], config: PatrolConfig, detector: ObjectDetector,
                 submit: Callable[[Alert], None], *, clock: Callable[[], float] = time.time,
                 timezone: tzinfo = UTC, client: SnapshotClient | None = None,
                 health: Callable[[HealthChange], None] | None = None) -> None:
        self.config = config
        self.detector = detector
        self.submit = submit
        self.health = health
        self.clock = clock
        self.timezone = timezone
        self.workers = config.inference_workers or os.cpu_count() or 1
        self.input_size = int(getattr(detector, "size", 640))
        self.client = client or SnapshotClient(timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s,
                                               max_bytes=config.max_picture_bytes, concurrency=config.concurrency,
                                               verify_tls=config.verify_tls)
        self.budget = PictureBudget(config.evidence_memory_mb * 1024 * 1024)
        self.pictures = LastPictures()  # each camera's newest picture for the console, bounded in bytes
        self.groups = {name: _Group() for name in config.groups}
        self.cameras: list[_Camera] = []
        now = clock()
        for cam in cameras:
            interval = config.groups[cam.group].interval_s
            # first visits spread over the interval (stable per id), so a restart is no thundering herd
            phase = shard_of(cam.id, 10_000) / 10_000
            self.cameras.append(_Camera(cam, interval, due=now + phase * interval))
            self.groups[cam.group].cameras += 1
        self._by_id = {c.cam.id: c for c in self.cameras}
        self._heap = [(c.due, i, c) for i, c in enumerate(self.cameras)]
        heapq.heapify(self._heap)
        self._seq = len(self.cameras)
        self._queue: FairQueue[_Job] = FairQueue()
        self._fetching: dict[int, float] = {}  # id(camera) -> fetch start (perf counter)
        self._waiting = 0  # pictures fetched, not yet analysed
        self._fetch_s = 0.1  # moving average of a good fetch's duration
        self._infer_s = 0.2  # moving average of one picture's analysis (decode, detect, rules)
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="patrol-infer")
        await self.client.start()
        workers = [asyncio.create_task(self._worker(pool)) for _ in range(self.workers)]
        try:
            await self._dispatch(stop)
        finally:
            for task in list(self._tasks) + workers:
                task.cancel()
            await asyncio.gather(*self._tasks, *workers, return_exceptions=True)
            await self.client.close()
            pool.shutdown(wait=True, cancel_futures=True)  # an inference in hand finishes; queued ones are dropped
            for c in self.cameras:
                if c.rules is not None:
                    c.rules.release()

    def _may_start(self) -> bool:
        if len(self._fetching) >= self.config.concurrency:
            return False
        prefetch = self.prefetch
        if self._waiting >= prefetch:
            return False
        now = time.perf_counter()
        slow = min(self.config.timeout_s, max(SLOW_FETCH_MIN_S, 4 * self._fetch_s))
        quick = sum(1 for t in self._fetching.values() if now - t < slow)
        return self._waiting + quick < prefetch

    @property
    def prefetch(self) -> int:
        """Pictures in the pipe ahead of the model: configured, or enough to cover one fetch time at the
        model's rate (Little's law) plus one waiting per worker, so the model never idles and pictures
        do not queue up for seconds."""
        if self.config.prefetch is not None:
            return self.config.prefetch
        rate = self.workers / max(self._infer_s, 1e-3)
        return self.workers + max(1, math.ceil(rate * self._fetch_s * 1.5))

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self.clock()
            while self._heap and self._heap[0][0] <= now and self._may_start():
                due, _, c = heapq.heappop(self._heap)
                group = self.config.groups[c.cam.group]
                if group.schedule is not None and not schedule_active(group.schedule, datetime.fromtimestamp(now, UTC)):
                    self._reschedule(c, now + OUT_OF_HOURS_RECHECK_S)
                    c.phase = "out_of_hours"
                    continue
                c.phase = "fetching"
                self.groups[c.cam.group].late_s += 0.05 * (now - due - self.groups[c.cam.group].late_s)
                self._fetching[id(c)] = time.perf_counter()  # now, not when the task first runs: the gate counts it
                task = asyncio.create_task(self._visit(c, due))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._heap and self._heap[0][0] <= now:
                wait = 0.05  # due work is held back by the limits: look again when a fetch turns slow
            else:
                wait = min(self._heap[0][0] - now, 1.0) if self._heap else 1.0
            self._changed.clear()
            stopper = asyncio.ensure_future(stop.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait({stopper, changed}, timeout=max(wait, 0.001), return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            changed.cancel()

    def _reschedule(self, c: _Camera, due: float) -> None:
        c.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, c))

    async def _visit(self, c: _Camera, due: float) -> None:
        key = id(c)
        started = self._fetching[key]
        group = self.groups[c.cam.group]
        try:
            try:
                picture = await self.client.fetch(c.cam)
                self._fetch_s += 0.1 * (time.perf_counter() - started - self._fetch_s)
            finally:
                del self._fetching[key]
                self._changed.set()
            job = _Job(c, picture, datetime.fromtimestamp(self.clock(), UTC), asyncio.get_running_loop().create_future())
            self._waiting += 1
            c.phase = "queued"
            self._queue.put(c.cam.group, job)
            try:
                alerts = await job.done
            finally:
                self._waiting -= 1
                self._changed.set()
        except VisitFailed as exc:
            self._failed(c, exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - one camera's bad picture or bug must not end the patrol
            detail = f"{type(exc).__name__}: {exc}"
            if c.last_error != f"error: {detail}":  # once per camera and kind of error, not every visit
                log.exception("patrol camera %s: visit failed", c.cam.id)
            self._failed(c, "error", detail)
        else:
            self._succeeded(c, alerts)
        finally:
            end = self.clock()
            group.visits += 1
            group.done_at.append(end)
            group.visit_ms.append((time.perf_counter() - started) * 1000)
            if c.last_visit is not None:
                gap = end - c.last_visit
                group.revisit_s = gap if group.revisit_s is None else group.revisit_s + 0.05 * (gap - group.revisit_s)
            c.last_visit = end
            c.phase = "scheduled"
            self._reschedule(c, max(due + c.interval_s, end))

    async def _worker(self, pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.done.done():
                continue
            began = time.perf_counter()
            job.camera.phase = "analysing"
            try:
                alerts = await loop.run_in_executor(pool, self._analyse, job)
            except Exception as exc:  # noqa: BLE001 - handed to the visit, which counts it
                if not job.done.done():
                    job.done.set_exception(exc)
            else:
                if not job.done.done():
                    job.done.set_result(alerts)
            self._infer_s += 0.1 * (time.perf_counter() - began - self._infer_s)

    # ------------------------------------------------------------------ analysis (worker threads)

    def _analyse(self, job: _Job) -> list[Alert]:
        c, picture = job.camera, job.picture
        if picture.jpeg is not None:
            try:
                image, size = decode_for_model(picture.jpeg, self.input_size)
            except NotAPicture as exc:
                raise VisitFailed("not_a_picture", str(exc)) from exc
            jpeg = picture.jpeg
        else:  # an RTSP keyframe: kept as JPEG only for evidence
            image = picture.image
            size = (image.shape[1], image.shape[0])
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise VisitFailed("not_a_picture", "the keyframe does not encode as JPEG")
            jpeg = buf.tobytes()
        detections = to_picture_pixels(self.detector.detect(image), (image.shape[1], image.shape[0]), size)
        if c.rules is None or c.size != size:
            if c.rules is not None:  # the camera's resolution changed: zones are rescaled, timers restart
                log.warning("patrol camera %s: picture size %s -> %s", c.cam.id, c.size, size)
                c.rules.release()
            revisit = self.config.clear_after_visits * c.interval_s
            preset = self.config.presets[c.cam.preset]
            c.rules = PatrolRules(camera_config(c.cam, preset, size), revisit, budget=self.budget,
                                  timezone=self.timezone)
            c.size = size
        self.pictures.keep(c.cam.id, KeptPicture(jpeg, size, tuple(detections), job.when))  # a reference
        return c.rules.visit(detections, job.when, size, jpeg)

    # ------------------------------------------------------------------ outcomes (event loop)

    def _succeeded(self, c: _Camera, alerts: list[Alert]) -> None:
        c.failures = 0
        self.counters["alerts"] += len(alerts)
        for alert in alerts:
            self.submit(alert)
        if c.offline:
            c.offline = False
            self._offline_alert(c, "closed", f"camera {c.cam.id} back online")
        if not c.reported_online:
            c.reported_online = True
            self._health(c, online=True)

    def _failed(self, c: _Camera, reason: str, detail: str) -> None:
        group = self.groups[c.cam.group]
        group.failures += 1
        group.reasons[reason] += 1
        c.failures += 1
        c.last_error = f"{reason}: {detail}"
        if c.rules is not None:  # time passes for the rules too: a case whose object is long unseen closes
            for alert in c.rules.tick(datetime.fromtimestamp(self.clock(), UTC)):
                self.submit(alert)
        if c.failures >= self.config.offline_after and not c.offline:
            c.offline = True
            c.reported_online = False
            self._offline_alert(c, "open", f"camera {c.cam.id} offline: {c.failures} failed visits ({c.last_error})")
            self._health(c, online=False)

    def _health(self, c: _Camera, *, online: bool) -> None:
        if self.health is not None:
            self.health(HealthChange("camera", c.cam.id, online, datetime.fromtimestamp(self.clock(), UTC)))

    def _offline_alert(self, c: _Camera, state: str, message: str) -> None:
        if state == "open":
            log.warning("patrol: %s", message)  # once per outage, not per visit
        self.submit(Alert(rule=OFFLINE_RULE, subject_kind="camera", subject_id=c.cam.id, state=state,  # type: ignore[arg-type]
                          time=datetime.fromtimestamp(self.clock(), UTC), source="video", severity="warning",
                          message=message, lon=c.cam.lon, lat=c.cam.lat,
                          facts={"failed_visits": c.failures, "last_error": c.last_error, "group": c.cam.group}))

    # ------------------------------------------------------------------ the console

    def camera_states(self) -> list[dict[str, Any]]:
        """Each camera's patrol state, for the console's devices view (call on the event loop)."""
        return [{"id": c.cam.id, "name": c.cam.name, "address": c.cam.address, "group": c.cam.group,
                 "preset": c.cam.preset, "interval_s": c.interval_s, "phase": c.phase,
                 "online": None if c.last_visit is None and not c.offline else not c.offline,
                 "failures": c.failures, "last_error": c.last_error, "last_visit": c.last_visit,
                 "next_visit": c.due, "picture": c.cam.id in self.pictures}
                for c in self.cameras]

    def camera(self, camera_id: str) -> PatrolCamera | None:
        c = self._by_id.get(camera_id)
        return c.cam if c is not None else None

    def camera_outlines(self, camera_id: str, size: tuple[int, int]) -> list[Outline]:
        """The zones of a camera's preset in the pixels of a picture of `size`."""
        c = self._by_id.get(camera_id)
        if c is None:
            return []
        return outlines(camera_config(c.cam, self.config.presets[c.cam.preset], size))

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        groups: dict[str, Any] = {}
        for name, g in self.groups.items():
            while g.done_at and now - g.done_at[0] > 60:
                g.done_at.popleft()
            ms = sorted(g.visit_ms)
            offline = [c.cam.id for c in self.cameras if c.cam.group == name and c.offline]
            groups[name] = {
                "cameras": g.cameras, "interval_s": self.config.groups[name].interval_s,
                # the time one round over every camera of the group takes at the last minute's rate
                "cycle_s": round(g.cameras * 60 / len(g.done_at), 1) if g.done_at else None,
                # visits further apart than objects are remembered: no dwell or presence case can open
                "behind_schedule": bool(g.done_at) and g.cameras * 60 / len(g.done_at)
                > self.config.clear_after_visits * self.config.groups[name].interval_s,
                "revisit_s": round(g.revisit_s, 1) if g.revisit_s is not None else None,
                "visits_per_min": len(g.done_at), "visits": g.visits, "failures": g.failures,
                "failure_reasons": dict(g.reasons), "offline": len(offline), "offline_cameras": offline[:50],
                "late_s": round(g.late_s, 2),
                "visit_ms_p50": round(statistics.median(ms), 1) if ms else None,
                "visit_ms_p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
            }
        return {"cameras": len(self.cameras), "groups": groups, "fetching": len(self._fetching),
                "waiting_for_inference": self._waiting, "prefetch": self.prefetch,
                "fetch_ms": round(self._fetch_s * 1000, 1), "analysis_ms": round(self._infer_s * 1000, 1), "inference_workers": self.workers,
                "alerts": self.counters["alerts"], "evidence_bytes_kept": self.budget.used,
                "evidence_pictures_refused": self.budget.refused,
                "console_pictures": len(self.pictures), "console_picture_bytes": self.pictures.bytes}
