"""Where everything goes once it exists: observations to the detectors, the time series and device
health; detector output to the alert bus (verdicts) or the health table (typed health changes);
committed outcomes to the live sinks. The router also runs the detectors' clock (its `run` loop
ticks the time-based rules), so it is a component like the sources and sinks around it.

Time: live observations and replays shifted to now are judged on the wall clock. A replay that keeps
its recorded times (`shift_to_now: false`) runs its devices on the recording's clock instead: each of
their observations advances it, their time-based rules (offline, shift end, rain windows) tick on
it, and the wall-clock tick leaves them out, so an old recording never looks offline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from core.model import Alert, DetectorOutput, Frame, HealthChange, Position, Reading
from detectors.sensor.monitor import SensorMonitor
from detectors.vehicle.filters import HISTORY, LIVE
from detectors.vehicle.monitor import FleetMonitor
from gateway.aio import wait_or_stop
from gateway.alerts import AlertBus
from gateway.cases import CaseOutcome
from gateway.device_index import DeviceIndex
from gateway.health import DeviceHealth
from gateway.outbox import Outbox
from gateway.sinks.timeseries import TimeSeriesSink, detection_points, position_point, reading_point
from gateway.throttle import LogThrottle

if TYPE_CHECKING:  # the rule needs the video extra (OpenCV): imported by wiring only when a camera is a checkpoint
    from detectors.crosscheck.black_trucks import BlackTruckRule

log = logging.getLogger(__name__)

Publish = Callable[[str, str, dict], None]  # kind, device, state: retained MQTT health


class OutboxAlarm:
    """An `outbox_near_full` alert that opens at 80 % of `cases.max_outbox` pending and closes below."""

    def __init__(self, outbox: Outbox, gateway_id: str, threshold: float = 0.8) -> None:
        self.outbox, self.gateway_id, self.threshold = outbox, gateway_id, threshold
        self._open = False

    def check(self, now: datetime) -> list[Alert]:
        ratio = self.outbox.fill_ratio()
        near = ratio >= self.threshold
        if near == self._open:
            return []
        self._open = near
        return [Alert(rule="outbox_near_full", subject_kind="gateway", subject_id=self.gateway_id,
                      state="open" if near else "closed", time=now, source="system", severity="critical",
                      message=f"outbox {ratio:.0%} full: is the central platform reachable?",
                      facts={"fill_ratio": round(ratio, 3)})]


class Router:
    name = "rules"

    def __init__(self, *, fleet: FleetMonitor, sensors: SensorMonitor, bus: AlertBus, timeseries: TimeSeriesSink,
                 vehicle_tags: dict[str, dict[str, str]], tick_s: float, outbox_alarm: OutboxAlarm,
                 publish_health: Publish | None = None, notify_central: Callable[[], None] | None = None,
                 publish_alert: Callable[[Alert, str | None], None] | None = None,
                 health_states: Callable[[], Iterable[tuple[str, str, dict]]] = tuple,
                 black_trucks: BlackTruckRule | None = None) -> None:
        self.fleet, self.sensors, self.bus, self.timeseries = fleet, sensors, bus, timeseries
        self.vehicle_tags = vehicle_tags  # keyed by vehicle id: positions are resolved to it first
        self.tick_s = tick_s
        self.outbox_alarm = outbox_alarm
        self.health = DeviceHealth(publish_health or (lambda *_: None))
        self._publish_health = publish_health
        self._health_states = health_states  # counters published every tick (cameras, the gateway)
        self._notify_central = notify_central
        self._publish_alert = publish_alert
        self.black_trucks = black_trucks  # checkpoint cameras' trucks against fleet fixes; loop thread only
        self._checkpoint_log = LogThrottle(60.0)
        self._recorded: dict[str, datetime] = {}  # device on a recording's clock -> its last tick
        self._loop: asyncio.AbstractEventLoop | None = None  # set by run(), for the cameras' threads
        self.counters = {"positions": 0, "readings": 0, "ticks": 0}
        self.devices = DeviceIndex()  # last observation per device and open alerts per subject: the console
        bus.listeners.append(self.after_alert)
        bus.listeners.append(self.devices.after_alert)

    def stats(self) -> dict[str, Any]:
        stats = {**self.counters, "recorded_clock_devices": len(self._recorded),
                 "vehicles": {"filter_verdicts": dict(self.fleet.filter.counts), "rules": dict(self.fleet.counts)},
                 "sensors": dict(self.sensors.stats), "device_index": self.devices.stats()}
        if self.black_trucks is not None:
            stats["black_trucks"] = {**self.black_trucks.stats, "pending": self.black_trucks.pending}
        return stats

    # -- observations --------------------------------------------------------------------------

    def on_position(self, position: Position) -> None:
        """A live fix: its receive time bounds the filter for fixes dated in the future (bad clocks)."""
        self._position(position, datetime.now(UTC))

    def on_reading(self, reading: Reading) -> None:
        self.counters["readings"] += 1
        self.health.seen("sensor", reading.device, reading.time)
        self.devices.observed(reading)
        self.timeseries.write(reading_point(reading))
        self.emit(self.sensors.process(reading))

    def on_observation(self, observation: Position | Reading) -> None:
        if isinstance(observation, Position):
            self.on_position(observation)
        else:
            self.on_reading(observation)

    def on_replayed(self, observation: Position | Reading, *, recorded_clock: bool) -> None:
        """A recorded observation: there is no receive time to compare with (replay time is virtual)."""
        if isinstance(observation, Position):
            self._position(observation, None)
        else:
            self.on_reading(observation)
        if recorded_clock:
            self._tick_recorded(observation.device, observation.time)

    def on_frame_analysed(self, camera: str, frame: Frame, detections: list) -> None:
        """From a camera's analysis thread: detection counts go to the time series, and a checkpoint's
        new trucks to the black-truck rule, both on the loop's thread."""
        if detections and self._loop is not None:
            points = detection_points(camera, detections, frame.time)
            self._loop.call_soon_threadsafe(self.timeseries.write_many, points)
            watch = self.black_trucks.watches.get(camera) if self.black_trucks is not None else None
            if watch is not None:  # the watch is this camera's: used on this thread only
                try:
                    sightings = watch.sightings(detections, frame)
                except Exception:  # noqa: BLE001 - a checkpoint's failure must not end the camera's analysis
                    allowed, held = self._checkpoint_log.allow(camera)
                    if allowed:
                        log.exception("camera %s: checkpoint sightings failed (%d more since the last line)",
                                      camera, held)
                    return
                if sightings:
                    self._loop.call_soon_threadsafe(self.black_trucks.on_sightings, sightings)  # type: ignore[union-attr]

    def _position(self, position: Position, received_at: datetime | None) -> None:
        self.counters["positions"] += 1
        device = self.fleet.terminals.canonical(position.device)  # replays, NMEA, MQTT carry terminal numbers
        if device != position.device:
            position = position._replace(device=device)
        tags = self.vehicle_tags.get(device)
        self.devices.observed(position)
        self.timeseries.write(position_point(position, tags))
        if tags is not None:
            self.health.seen("vehicle", tags["vehicle"], position.time)
        if self.black_trucks is None or tags is None:
            self.emit(self.fleet.process(position, received_at=received_at))
            return
        before = self._accepted_fixes()
        self.emit(self.fleet.process(position, received_at=received_at))
        if self._accepted_fixes() != before:  # the filters passed it (live or a blind-area supplement)
            self.black_trucks.on_fix(device, position.lon, position.lat, position.time)

    def _accepted_fixes(self) -> int:
        counts = self.fleet.filter.counts
        return counts.get(LIVE, 0) + counts.get(HISTORY, 0)

    # -- detector output -----------------------------------------------------------------------

    def emit(self, outputs: Iterable[DetectorOutput]) -> None:
        for output in outputs:
            if isinstance(output, HealthChange):
                self.health.change(output)
            else:
                self.bus.submit(output)

    def after_alert(self, alert: Alert, outcome: CaseOutcome | None) -> None:
        """Called by the bus once the case desk has handled (and committed) an alert."""
        if outcome is not None and outcome.committed and self._notify_central is not None:
            self._notify_central()  # a new case or a new event of one: deliver it now, not at the next poll
        if self._publish_alert is not None:  # a refused case has no case id to name
            self._publish_alert(alert, (outcome.case_id or None) if outcome is not None else None)

    # -- clock ---------------------------------------------------------------------------------

    def tick(self, now: datetime) -> None:
        """The wall-clock tick: time-based rules of every device not on a recording's clock."""
        self.counters["ticks"] += 1
        recorded = self._recorded.keys()
        self.emit(self.fleet.tick(now, exclude=recorded))
        self.emit(self.sensors.tick(now, exclude=recorded))
        self.emit(self.outbox_alarm.check(now))
        if self.black_trucks is not None:
            self.emit(self.black_trucks.tick(now))
        if self._publish_health is not None:
            for kind, device, state in self._health_states():
                self._publish_health(kind, device, state)

    def _tick_recorded(self, device: str, when: datetime) -> None:
        last = self._recorded.get(device)
        if last is not None and when - last < timedelta(seconds=self.tick_s):
            return
        self._recorded[device] = when
        self.emit(self.fleet.tick(when, only=(device,)))
        self.emit(self.sensors.tick(when, only=(device,)))

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            self.tick(datetime.now(UTC))
            await wait_or_stop(stop, self.tick_s)
