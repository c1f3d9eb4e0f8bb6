"""Builds sources → detectors → sinks from a config and supervises them.

Everything that can fail at start-up (model files, grid, catalog, device profiles, ports) fails in
`Gateway.__init__`/`start`, before the first frame or position. At run time a crashed task is
restarted by the supervisor, a camera lives in its own threads, and a bad device or frame is
counted and logged, never fatal. SIGTERM/Ctrl-C: stop the sources, let the detectors' alerts
drain into cases, flush the sinks within `shutdown_deadline_s`, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from core.model import Alert, Frame, Position, Reading
from detectors.sensor.monitor import SensorMonitor
from detectors.vehicle.monitor import FleetMonitor
from gateway.alerts import AlertBus
from gateway.cases import CaseDesk, CaseOutcome
from gateway.catalog import Catalog
from gateway.config import GatewayConfig, NmeaFeed, ReplayFeed
from gateway.geo import GridIndex
from gateway.health import DeviceHealth
from gateway.outbox import Outbox
from gateway.sinks.timeseries import TimeSeriesSink, detection_points, position_point, reading_point
from gateway.sources.observation_replay import replay
from gateway.supervisor import Supervisor

log = logging.getLogger(__name__)


def demo_grid_path() -> Path:
    return Path(str(resources.files("gateway").joinpath("data/demo_grid.geojson")))


def auth_code(gateway_id: str, terminal: str, secret: str | None = None) -> str:
    """A terminal's JT/T 808 auth code: stable across restarts (terminals keep it), different per
    gateway, and unguessable when a secret is configured."""
    key = f"{secret or ''}:{gateway_id}".encode()
    return hmac.new(key, terminal.encode(), hashlib.sha256).hexdigest()[:16]


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.started_at = datetime.now(UTC)
        data = config.data_path
        data.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog.load([config.path(f) for f in config.cases.catalog_files])
        self.grid = GridIndex.load(config.path(config.cases.grid) if config.cases.grid else demo_grid_path())
        self.outbox = Outbox(data / "cases.sqlite3", max_cases=config.cases.max_outbox,
                             deliver=bool(config.central.url))
        self.desk = CaseDesk(catalog=self.catalog, grid=self.grid, outbox=self.outbox,
                             evidence_dir=data / config.cases.evidence_dir, state_path=data / "case_state.sqlite3",
                             gateway_id=config.id, timezone=config.tz, cooldown_s=config.cases.cooldown_s)
        self.bus = AlertBus(self.desk)
        self.bus.listeners.append(self._after_alert)
        self.supervisor = Supervisor()
        self.timeseries = TimeSeriesSink(config.timeseries, data)

        self.central = None
        if config.central.url:
            from gateway.sinks.central import CentralDelivery

            self.central = CentralDelivery(self.outbox, config.central)
        self.mqtt = None
        if config.mqtt.enabled:
            from gateway.sinks.mqtt import MqttAlertSink

            self.mqtt = MqttAlertSink(config.mqtt, config.site)

        self.fleet = FleetMonitor(config.vehicles.fleet)
        # keyed by vehicle id: every position's device is resolved to it first (detectors/vehicle/identity.py)
        self._vehicle_tags = {v.id: {"vehicle": v.id, "type": v.type, "company": v.company, "terminal": v.terminal}
                              for v in config.vehicles.fleet.vehicles}
        self.sensors = SensorMonitor(config.sensors)
        self._positions = 0
        self._readings = 0
        self.health = DeviceHealth(self._publish_device_health, self._is_offline_alert)

        self.cameras: dict[str, Any] = {}
        self.workers: dict[str, Any] = {}
        self.pipelines: dict[str, Any] = {}
        if config.video.cameras:
            self._build_video()

        self.jt808 = None
        self.mqtt_source = None
        self.nmea_sources: list = []
        self.web = None
        self._outbox_alert_open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sinks_stop = asyncio.Event()
        self._drain_stop = asyncio.Event()

    # -- building ------------------------------------------------------------------------------

    def _build_video(self) -> None:
        from detectors.video.backends import load_detector
        from detectors.video.pipeline import CameraPipeline
        from gateway.sources.camera import CameraSource
        from gateway.video_worker import FrameWorker

        detector_cfg = self.config.video.detector
        detector = load_detector(detector_cfg, self.config.path(detector_cfg.model))  # ModelError now, not later
        for camera in self.config.video.cameras:
            if "://" not in camera.url:  # a file path in the config is relative to the config file
                camera = camera.model_copy(update={"url": str(self.config.path(camera.url))})
            pipeline = CameraPipeline(camera, detector, timezone=self.config.tz)
            worker = FrameWorker(camera.name, pipeline.process, self.bus.submit_threadsafe,
                                 on_done=self._frame_done(camera.name, pipeline), flush=pipeline.flush,
                                 idle_flush_s=camera.evidence.clip_post_s + 5.0)
            self.pipelines[camera.name] = pipeline
            self.workers[camera.name] = worker
            self.cameras[camera.name] = CameraSource(camera, worker.offer, self.bus.submit_threadsafe)

    def _frame_done(self, name: str, pipeline: Any):
        def done(frame: Frame) -> None:
            detections = getattr(pipeline, "last_detections", None)
            if detections and self._loop is not None:
                points = detection_points(name, detections, frame.time)
                self._loop.call_soon_threadsafe(self.timeseries.write_many, points)
        return done

    # -- observations --------------------------------------------------------------------------

    def on_position(self, position: Position) -> None:
        """A live fix: its receive time bounds the filter for fixes dated in the future (bad clocks)."""
        self._position(position, datetime.now(UTC))

    def on_replayed_position(self, position: Position) -> None:
        """A recorded fix: replay time is virtual, so there is no receive time to compare with."""
        self._position(position, None)

    def _position(self, position: Position, received_at: datetime | None) -> None:
        self._positions += 1
        device = self.fleet.terminals.canonical(position.device)  # replays, NMEA, MQTT carry terminal numbers
        if device != position.device:
            position = position._replace(device=device)
        tags = self._vehicle_tags.get(device)
        self.timeseries.write(position_point(position, tags))
        if tags is not None:
            self.health.seen("vehicle", tags["vehicle"], position.time)
        for alert in self.fleet.process(position, received_at=received_at):
            self.bus.submit(alert)

    def on_reading(self, reading: Reading) -> None:
        self._readings += 1
        self.health.seen("sensor", reading.device, reading.time)
        self.timeseries.write(reading_point(reading))
        for alert in self.sensors.process(reading):
            self.bus.submit(alert)

    def on_observation(self, observation: Position | Reading) -> None:
        if isinstance(observation, Position):
            self.on_position(observation)
        else:
            self.on_reading(observation)

    def _after_alert(self, alert: Alert, outcome: CaseOutcome | None) -> None:
        if outcome is not None and outcome.kind == "new" and self.central is not None:
            self.central.notify()
        if self.mqtt is not None:
            self.mqtt.publish_alert(alert, outcome.case_id if outcome is not None else None)
        self.health.on_alert(alert)

    def _is_offline_alert(self, alert: Alert) -> bool:
        """Vehicles and sensors; cameras publish their whole counters (with `online`) every tick."""
        kind = alert.subject_kind
        return ((kind == "vehicle" and alert.rule == self.config.vehicles.fleet.rules.offline.name)
                or (kind == "sensor" and alert.rule == self.config.sensors.health.name and alert.place == "offline"))

    def _publish_device_health(self, kind: str, device: str, state: dict) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_health(kind, device, state)

    # -- running -------------------------------------------------------------------------------

    async def start(self, stop: asyncio.Event) -> None:
        """Start every part; raises (port in use, broker config, ...) before anything runs half-way."""
        self._loop = asyncio.get_running_loop()
        self.bus.bind(self._loop)
        cfg = self.config
        sup = self.supervisor
        sup.spawn("alerts", lambda: self.bus.run(self._drain_stop))
        sup.spawn("timeseries", lambda: self.timeseries.run(self._sinks_stop))
        if self.central is not None:
            sup.spawn("central", lambda: self.central.run(self._sinks_stop))
        if self.mqtt is not None:
            sup.spawn("mqtt-alerts", lambda: self.mqtt.run(self._sinks_stop))
        if cfg.vehicles.jt808.enabled:
            await self._start_jt808()
        if cfg.mqtt_source.profiles:
            self._start_mqtt_source(stop)
        for i, feed in enumerate(cfg.vehicles.nmea):
            sup.spawn(f"nmea-{feed.device}-{i}", self._nmea_task(feed))
        for i, feed in enumerate(cfg.vehicles.replay):
            sup.spawn(f"replay-vehicles-{i}", self._replay_task(feed, "positions", stop))
        for i, feed in enumerate(cfg.sensors.replay):
            sup.spawn(f"replay-sensors-{i}", self._replay_task(feed, "readings", stop))
        sup.spawn("ticks", lambda: self._tick_loop(stop))
        if cfg.web.enabled:
            from gateway.web.server import StatusServer

            self.web = StatusServer(self.outbox, self.snapshot, evidence_root=cfg.data_path,
                                    host=cfg.web.host, port=cfg.web.port)
            await self.web.start()
        for name, camera in self.cameras.items():
            self.workers[name].start()
            camera.start()
        log.info("citygate %s running: %d camera(s), %d vehicle(s), %d sensor(s); cases in %s",
                 cfg.site, len(self.cameras), len(cfg.vehicles.fleet.vehicles), len(cfg.sensors.devices),
                 self.outbox.path)

    async def _start_jt808(self) -> None:
        from gateway.sources.jt808_server import Jt808Server

        jt = self.config.vehicles.jt808
        registry = {v.terminal: auth_code(self.config.id, v.terminal, jt.auth_secret)
                    for v in self.config.vehicles.fleet.vehicles}

        # the server logs unknown terminals itself, rate-limited
        self.jt808 = Jt808Server(jt.host, jt.port, registry, self.on_position,
                                 vehicles={v.terminal: v.id for v in self.config.vehicles.fleet.vehicles},
                                 idle_timeout_s=jt.idle_timeout_s, max_frame_bytes=jt.max_frame_bytes,
                                 max_garbage_frames=jt.max_garbage_frames, backlog=jt.backlog,
                                 accept_unknown=jt.accept_unknown, auth_timeout_s=jt.auth_timeout_s,
                                 max_auth_failures=jt.max_auth_failures, max_connections=jt.max_connections,
                                 max_connections_per_address=jt.max_connections_per_address,
                                 max_pending_packet_bytes=jt.max_pending_packet_bytes,
                                 unknown_per_connection=jt.unknown_per_connection,
                                 unknown_per_address_per_min=jt.unknown_per_address_per_min,
                                 log_interval_s=jt.log_interval_s)
        await self.jt808.start()

    def _start_mqtt_source(self, stop: asyncio.Event) -> None:
        from gateway.profiles import load_profiles
        from gateway.sources.mqtt import MqttSource

        profiles = load_profiles(self.config.profiles_path)
        chosen = [profiles[name] for name in self.config.mqtt_source.profiles]
        mqtt = self.config.mqtt
        if mqtt.persistent_session and not mqtt.client_id:  # a persistent session needs a stable id
            mqtt = mqtt.model_copy(update={"client_id": f"citygate-{self.config.id}"})
        self.mqtt_source = MqttSource(mqtt, chosen, self.on_observation,
                                      shared_group=self.config.mqtt_source.shared_group)
        self.supervisor.spawn("mqtt-source", lambda: self.mqtt_source.run(stop))

    def _nmea_task(self, feed: NmeaFeed):
        from gateway.sources.nmea_source import NmeaSource

        source = NmeaSource(feed.device, self.on_position)
        self.nmea_sources.append(source)

        async def run() -> None:
            if feed.file:
                await source.read_file(self.config.path(feed.file))
                return
            await source.read_tcp(feed.host, feed.port)
            # the receiver closed the stream: a lost connection, which the supervisor retries with backoff
            raise ConnectionError(f"NMEA receiver {feed.host}:{feed.port} closed the connection")
        return run

    def _replay_task(self, feed: ReplayFeed, kind: str, stop: asyncio.Event):
        path = self.config.path(feed.file)
        text = path.read_text(encoding="utf-8")
        if kind == "positions":
            from gateway.protocols.tracks_csv import parse_positions_csv

            observations: list = parse_positions_csv(text, str(path))
            emit = self.on_replayed_position
        else:
            from gateway.protocols.readings_csv import parse_readings_csv

            observations = parse_readings_csv(text)
            emit = self.on_reading

        async def run() -> None:
            count = await replay(observations, emit, stop, speed=feed.speed, loop=feed.loop,
                                 shift_to_now=feed.shift_to_now)
            log.info("replay of %s finished: %d %s", path.name, count, kind)
        return run

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        period = self.config.vehicles.tick_s
        while not stop.is_set():
            now = datetime.now(UTC)
            for alert in self.fleet.tick(now):
                self.bus.submit(alert)
            for alert in self.sensors.tick(now):
                self.bus.submit(alert)
            self._check_outbox(now)
            self._publish_health()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)

    def _check_outbox(self, now: datetime) -> None:
        near = self.outbox.is_near_full(0.8)
        if near != self._outbox_alert_open:
            self._outbox_alert_open = near
            ratio = self.outbox.fill_ratio()
            self.bus.submit(Alert(rule="outbox_near_full", subject_kind="gateway", subject_id=self.config.id,
                                  state="open" if near else "closed", time=now, source="system",
                                  severity="critical", message=f"outbox {ratio:.0%} full: is the central "
                                  "platform reachable?", facts={"fill_ratio": round(ratio, 3)}))

    def _publish_health(self) -> None:
        if self.mqtt is None:
            return
        for name, camera in self.cameras.items():  # cameras: their counters too, every tick
            self.mqtt.publish_health("camera", name, camera.stats)
        self.mqtt.publish_health("gateway", self.config.id, {"outbox": self.outbox.counts(),
                                                            "uptime_s": round(self._uptime())})

    def _uptime(self) -> float:
        return (datetime.now(UTC) - self.started_at).total_seconds()

    async def run(self, stop: asyncio.Event) -> int:
        await self.start(stop)
        await stop.wait()
        return await self.shutdown()

    async def shutdown(self) -> int:
        """Stop sources, drain alerts into cases, flush sinks; all within the deadline."""
        deadline = time.monotonic() + self.config.shutdown_deadline_s
        log.info("stopping: sources first")
        await asyncio.gather(*(asyncio.to_thread(c.stop) for c in self.cameras.values()))
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers.values()))
        if self.jt808 is not None:
            await self.jt808.stop()
        self._drain_stop.set()
        drained = await self.supervisor.wait(["alerts"], timeout=max(0.1, deadline - time.monotonic()))
        if not drained:
            log.error("%d alert(s) not processed before the shutdown deadline", self.bus.pending)
        try:
            await asyncio.wait_for(self.timeseries.flush(), timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.error("time series not flushed before the shutdown deadline")
        self._sinks_stop.set()
        names = [n for n in ("timeseries", "central", "mqtt-alerts") if n in self.supervisor.states]
        await self.supervisor.wait(names, timeout=max(0.1, deadline - time.monotonic()))
        if self.web is not None:
            await self.web.stop()
        await self.supervisor.stop(timeout=2.0)
        self.bus.close()
        self.timeseries.close()
        self.desk.close()
        self.outbox.close()
        log.info("stopped")
        return 0

    # -- status --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        cameras = {}
        for name, camera in self.cameras.items():
            stats = dict(camera.stats)
            stats.update(getattr(self.pipelines[name], "stats", {}))
            stats.update(self.workers[name].stats)
            cameras[name] = stats
        recent = [{"rule": a.rule, "state": a.state, "subject_kind": a.subject_kind, "subject_id": a.subject_id,
                   "place": a.place, "severity": a.severity, "time": a.time.isoformat(), "message": a.message,
                   "category": a.category} for a in list(self.bus.recent)[:50]]
        return {
            "site": self.config.site,
            "gateway_id": self.config.id,
            "started_at": self.started_at.isoformat(),
            "uptime_s": round(self._uptime()),
            "cameras": cameras,
            "vehicles": {"positions": self._positions, "rejected_by_filter": dict(self.fleet.filter.counts),
                         "rules": dict(self.fleet.counts), "jt808": dict(self.jt808.stats) if self.jt808 else None},
            "sensors": {"readings": self._readings, **_stats_of(self.sensors)},
            "devices": self.health.snapshot(),
            "mqtt_source": dict(self.mqtt_source.stats) if self.mqtt_source else None,
            "nmea": {s.device: dict(s.stats) for s in self.nmea_sources} or None,
            "outbox": {**self.outbox.counts(), "fill_ratio": round(self.outbox.fill_ratio(), 4)},
            "cases": dict(self.desk.stats),
            "alerts": dict(self.bus.stats),
            "central": dict(self.central.stats) if self.central else None,
            "mqtt": dict(self.mqtt.stats) if self.mqtt else None,
            "timeseries": dict(self.timeseries.stats),
            "tasks": self.supervisor.snapshot(),
            "recent_alerts": recent,
        }


def _stats_of(obj: Any) -> dict[str, Any]:
    stats = getattr(obj, "stats", None)
    return {"stats": dict(stats)} if stats else {}
