"""Builds a gateway's component graph from a deployment, without starting anything: the stores
(outbox, case desk), the alert bus, the router and every source and sink the config asks for, each
assigned to a shutdown stage (see gateway/component.py). Everything that can fail at start-up
because of the config or its files (a model, a grid, a profile) fails here, before any thread or task.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detectors.sensor.monitor import SensorMonitor
from detectors.vehicle.monitor import FleetMonitor
from gateway.alerts import AlertBus
from gateway.cases import CaseDesk
from gateway.component import STAGES, Component
from gateway.deployment import Deployment
from gateway.outbox import Outbox
from gateway.retention import RetentionJanitor
from gateway.review import ReviewPolicy
from gateway.routing import OutboxAlarm, Router
from gateway.rule_state import RuleStateStore
from gateway.sinks.timeseries import TimeSeriesSink
from gateway.sources.observation_replay import ObservationReplay
from gateway.storage import DiskSpaceMonitor

log = logging.getLogger(__name__)


def auth_code(gateway_id: str, terminal: str, secret: str | None = None) -> str:
    """A terminal's JT/T 808 auth code: stable across restarts (terminals keep it), different per
    gateway, and unguessable when a secret is configured."""
    key = f"{secret or ''}:{gateway_id}".encode()
    return hmac.new(key, terminal.encode(), hashlib.sha256).hexdigest()[:16]


@dataclass
class Graph:
    """What `build_graph` made: the stores, and the components by shutdown stage."""

    deployment: Deployment
    outbox: Outbox
    desk: CaseDesk
    bus: AlertBus
    router: Router
    timeseries: TimeSeriesSink
    stages: dict[str, list[Component]] = field(default_factory=lambda: {s: [] for s in STAGES})
    snapshot: Callable[[], dict[str, Any]] = dict  # the status snapshot, set by the runner

    @property
    def components(self) -> list[Component]:
        return [c for stage in STAGES for c in self.stages[stage]]

    def find(self, name: str) -> Any:
        """The component called `name`, or None."""
        return next((c for c in self.components if c.name == name), None)

    def add(self, stage: str, component: Component) -> Any:
        if self.find(component.name) is not None:
            raise ValueError(f"two components are called {component.name!r}")
        self.stages[stage].append(component)
        return component


def build_graph(deployment: Deployment) -> Graph:
    config = deployment.config
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(data / "cases.sqlite3", max_cases=config.cases.max_outbox, deliver=bool(config.central.url))
    desk = CaseDesk(catalog=deployment.catalog, grid=deployment.grid, outbox=outbox,
                    evidence_dir=config.evidence_path, state_path=data / "case_state.sqlite3",
                    gateway_id=config.id, timezone=config.tz, cooldown_s=config.cases.cooldown_s,
                    review=ReviewPolicy.from_config(config.cases.review))
    bus = AlertBus(desk)
    timeseries = TimeSeriesSink(config.timeseries, data)

    central = mqtt = None
    if config.central.url:
        from gateway.sinks.central import CentralDelivery

        central = CentralDelivery(outbox, config.central)
    if config.mqtt.enabled:
        from gateway.sinks.mqtt import MqttAlertSink

        mqtt = MqttAlertSink(config.mqtt, config.site)

    # keyed by vehicle id: every position's device is resolved to it first (detectors/vehicle/identity.py)
    vehicle_tags = {v.id: {"vehicle": v.id, "type": v.type, "company": v.company, "terminal": v.terminal}
                    for v in config.vehicles.fleet.vehicles}
    graph_ref: list[Graph] = []
    sensors = SensorMonitor(config.sensors)
    rule_state = RuleStateStore(sensors, data / "sensor_rules.sqlite3", interval_s=config.sensors.state_save_s,
                                bus=bus)
    black_trucks = None
    if checkpoints := [c for c in config.video.cameras if c.checkpoint is not None]:
        from detectors.crosscheck.black_trucks import BlackTruckRule  # needs OpenCV: only with checkpoints

        black_trucks = BlackTruckRule(checkpoints, {v.id: v.type for v in config.vehicles.fleet.vehicles},
                                      timezone=config.tz)
    router = Router(fleet=FleetMonitor(config.vehicles.fleet), sensors=sensors, bus=bus,
                    timeseries=timeseries, vehicle_tags=vehicle_tags, tick_s=config.vehicles.tick_s,
                    outbox_alarm=OutboxAlarm(outbox, config.id),
                    publish_health=mqtt.publish_health if mqtt else None,
                    notify_central=central.notify if central else None,
                    publish_alert=mqtt.publish_alert if mqtt else None,
                    health_states=lambda: _health_states(graph_ref[0]), black_trucks=black_trucks)
    graph = Graph(deployment, outbox, desk, bus, router, timeseries)
    graph_ref.append(graph)

    graph.add("alerts", bus)
    graph.add("sinks", timeseries)
    if config.sensors.devices:
        graph.add("sinks", rule_state)  # saves after the bus has drained, at shutdown too
    if central is not None:
        graph.add("sinks", central)
    if mqtt is not None:
        graph.add("sinks", mqtt)
    graph.add("sinks", RetentionJanitor(config.evidence_path, outbox.path, config.evidence))
    graph.add("sources", router)  # the detectors' clock: stops with the sources, before the bus drains
    graph.add("sources", DiskSpaceMonitor(data, bus.submit, gateway_id=config.id,  # raises alerts: a source
                                          alert_free_percent=config.evidence.alert_free_percent,
                                          check_s=config.evidence.disk_check_s))
    _add_video(graph)
    _add_vehicle_sources(graph)
    _add_device_sources(graph, rule_state)
    _add_replays(graph)
    rule_state.load()  # before any reading: episodes, rain windows and counters carry on where they stopped
    rule_state.reconcile(outbox, desk)  # open sensor cases the last save missed are adopted, so they can clear
    if config.web.enabled:
        from gateway.devices import Devices
        from gateway.web.server import ConsoleServer

        web = config.web
        graph.add("web", ConsoleServer(outbox, lambda: graph.snapshot(), evidence_root=config.evidence_path,
                                       host=web.host, port=web.port, web_config=web, timezone=config.tz,
                                       users_file=config.path(web.users_file) if web.users_file else None,
                                       gateway_config=config, commands=graph.find("jt808"),
                                       notify_central=central.notify if central else None,
                                       devices=Devices.from_graph(graph)))
    return graph


def _health_states(graph: Graph):
    """Retained health published every tick: each camera's counters and the gateway's outbox."""
    config = graph.deployment.config
    for component in graph.stages["sources"]:
        if component.name.startswith("camera:"):
            yield "camera", component.name.removeprefix("camera:"), component.stats()
    yield "gateway", config.id, {"outbox": graph.outbox.counts()}


def _add_video(graph: Graph) -> None:
    config = graph.deployment.config
    if not (config.video.cameras or config.video.patrol):
        return
    from detectors.video.backends import load_detector
    from detectors.video.pipeline import CameraPipeline
    from gateway.camera_view import LastFrame
    from gateway.sources.camera import CameraSource
    from gateway.video_worker import CameraChannel, FrameWorker
    from gateway.web.metrics import LatencyHistogram, timed

    detector = load_detector(config.video.detector, config.path(config.video.detector.model))  # ModelError now
    router, bus = graph.router, graph.bus
    for camera in config.video.cameras:
        if "://" not in camera.url:  # a file path in the config is relative to the config file
            camera = camera.model_copy(update={"url": str(config.path(camera.url))})
        pipeline = CameraPipeline(camera, detector, timezone=config.tz)
        last = LastFrame()  # the console's view of the camera: a reference per frame, drawn on request

        def done(frame, name=camera.name, pipeline=pipeline, last=last) -> None:
            last.keep(frame, pipeline.last_detections)
            router.on_frame_analysed(name, frame, pipeline.last_detections)

        latency = LatencyHistogram()  # /metrics: citygate_inference_seconds
        worker = FrameWorker(camera.name, timed(pipeline.process, latency), bus.submit_threadsafe, on_done=done,
                             flush=pipeline.flush, idle_flush_s=camera.evidence.clip_post_s + 5.0)
        source = CameraSource(camera, worker.offer, bus.submit_threadsafe)
        graph.add("sources", CameraChannel(source, worker, pipeline, latency, last))
    if config.video.patrol:
        from gateway.patrol.build import build_patrol

        graph.add("sources", build_patrol(config, graph.deployment.patrol_cameras, detector, bus.submit,
                                          health=router.health.change))


def _add_vehicle_sources(graph: Graph) -> None:
    config = graph.deployment.config
    jt = config.vehicles.jt808
    if jt.enabled:
        from detectors.vehicle.identity import TerminalFacts
        from gateway.sources.jt808_registrations import REGISTRATIONS_FILE
        from gateway.sources.jt808_server import Jt808Server

        vehicles = config.vehicles.fleet.vehicles
        registry = {v.terminal: auth_code(config.id, v.terminal, jt.auth_secret) for v in vehicles}
        # the server logs unknown terminals itself, rate-limited
        graph.add("sources", Jt808Server(
            jt.host, jt.port, registry, graph.router.on_position, vehicles={v.terminal: v.id for v in vehicles},
            terminals={v.terminal: TerminalFacts.of(v) for v in vehicles},
            idle_timeout_s=jt.idle_timeout_s, max_frame_bytes=jt.max_frame_bytes,
            max_garbage_frames=jt.max_garbage_frames, backlog=jt.backlog, accept_unknown=jt.accept_unknown,
            auth_timeout_s=jt.auth_timeout_s, max_auth_failures=jt.max_auth_failures,
            max_connections=jt.max_connections, max_connections_per_address=jt.max_connections_per_address,
            max_pending_packet_bytes=jt.max_pending_packet_bytes, unknown_per_connection=jt.unknown_per_connection,
            unknown_per_address_per_min=jt.unknown_per_address_per_min,
            registrations_per_connection=jt.registrations_per_connection,
            registrations_per_address_per_min=jt.registrations_per_address_per_min, log_interval_s=jt.log_interval_s,
            command_ttl_s=jt.command_ttl_s, command_reply_timeout_s=jt.command_reply_timeout_s,
            max_commands=jt.max_commands, max_queued_commands=jt.max_queued_commands,
            packet_timeout_s=jt.packet_timeout_s, packet_retries=jt.packet_retries,
            state_path=config.data_path / "jt808_commands.json",
            registrations_path=config.data_path / REGISTRATIONS_FILE))
        from gateway.sources.jt808_commands import DriverTexts

        # a vehicle rule with a driver_text that opens sends it to the vehicle's display
        texts = DriverTexts.from_rules(config.vehicles.fleet.rules, graph.find("jt808").command)
        if texts.texts:
            graph.bus.listeners.append(texts.after_alert)
    from gateway.sources.nmea_source import NmeaSource

    for feed in config.vehicles.nmea:
        graph.add("sources", NmeaSource(feed.device, graph.router.on_position, host=feed.host, port=feed.port,
                                        file=config.path(feed.file) if feed.file else None))


def _add_device_sources(graph: Graph, rule_state: RuleStateStore) -> None:
    """Devices over MQTT, Modbus TCP and HTTP push: one intake each, the same profiles and device list;
    each intake's counter tracker is saved with the rules' state."""
    config, profiles = graph.deployment.config, graph.deployment.profiles
    sensors = config.sensors
    # the devices the config names, with their profile (None: any); others are refused and counted
    known: dict[str, str | None] = {d.id: d.profile for d in sensors.devices}
    known |= {v.terminal: None for v in config.vehicles.fleet.vehicles}
    on_observation = graph.router.on_observation
    if config.mqtt_source.profiles:
        from gateway.sources.mqtt import MqttSource

        mqtt = config.mqtt
        if mqtt.persistent_session and not mqtt.client_id:  # a persistent session needs a stable id
            mqtt = mqtt.model_copy(update={"client_id": f"citygate-{config.id}"})
        source = graph.add("sources", MqttSource(
            mqtt, [profiles[n] for n in config.mqtt_source.profiles], on_observation,
            shared_group=config.mqtt_source.shared_group, known_devices=known, high_water=config.mqtt_source.max_held,
            partition=(part.index, part.count) if (part := config.mqtt_source.partition) else None))
        rule_state.trackers[source.name] = source.intake.counters
    if sensors.modbus:
        from gateway.sources.modbus import ModbusSource  # needs pymodbus

        source = graph.add("sources", ModbusSource(sensors.modbus, profiles, on_observation, known_devices=known))
        rule_state.trackers[source.name] = source.intake.counters
    if sensors.http_ingest.enabled:
        from gateway.sources.http_ingest import INTAKE, HttpIngestServer, build_ingest_app

        h = sensors.http_ingest
        app = build_ingest_app(profiles, on_observation, token=h.token or "", max_body_bytes=h.max_body_bytes,
                               known_devices=known)
        source = graph.add("sources", HttpIngestServer(app, h.host, h.port))
        rule_state.trackers[source.name] = app[INTAKE].counters


def _add_replays(graph: Graph) -> None:
    config = graph.deployment.config
    from gateway.protocols.readings_csv import parse_readings_csv
    from gateway.protocols.tracks_csv import parse_positions_csv

    feeds = [("vehicles", f, parse_positions_csv) for f in config.vehicles.replay]
    feeds += [("sensors", f, lambda text, _where: parse_readings_csv(text)) for f in config.sensors.replay]
    for kind, feed, parse in feeds:
        path = config.path(feed.file)
        observations = parse(path.read_text(encoding="utf-8"), str(path))
        graph.add("sources", ObservationReplay(f"replay:{kind}:{path.name}", observations, graph.router.on_replayed,
                                               speed=feed.speed, loop=feed.loop, shift_to_now=feed.shift_to_now))
