"""Sensors and GPS trackers over MQTT, decoded through device profiles into Readings and Positions.

One subscription per profile topic filter (``{device_id}`` -> ``+``). With ``shared_group`` the
filters are subscribed as ``$share/<group>/<filter>``: the broker then hands each message to one of
the gateway replicas of that group, which is how vehicle and sensor ingestion scales out. Profiles
may share a filter (every ChirpStack device publishes on ``application/+/device/+/event/up``): the
device's configured profile picks the decoder, else the first profile of that filter.

No payload can stop the source: each message is decoded on its own through `Intake` (see there),
which counts and rate-limits every problem (undecodable, oversize, unknown device, wrong profile,
values out of range, a decoder exception) per device; the next message is handled as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import aiomqtt

from gateway.aio import race
from gateway.profiles import DeviceProfile
from gateway.sinks.mqtt import make_client
from gateway.sinks.sink_config import MqttConfig
from gateway.sources.intake import Intake, Observation, OnObservation

__all__ = ["MqttSource", "Observation"]

log = logging.getLogger(__name__)


class MqttSource:
    name = "mqtt-source"

    def __init__(
        self,
        mqtt_cfg: MqttConfig,
        profiles: Iterable[DeviceProfile],
        on_observation: OnObservation,
        *,
        shared_group: str | None = None,
        known_devices: Mapping[str, str | None] | None = None,
        max_devices: int = 100_000,
        max_payload_bytes: int = 65_536,
        log_interval_s: float = 60.0,
        max_queued_messages: int = 10_000,
    ) -> None:
        if not mqtt_cfg.enabled:
            raise ValueError("the MQTT source needs mqtt.host (the broker) to be set")
        self.config = mqtt_cfg
        self.profiles = [p for p in profiles if p.transport == "mqtt"]
        if not self.profiles:
            raise ValueError("MqttSource needs at least one MQTT device profile")
        self.shared_group = shared_group
        self.max_payload_bytes = max_payload_bytes
        self.max_queued_messages = max_queued_messages
        self.intake = Intake(on_observation, known_devices=known_devices, max_devices=max_devices,
                             log_interval_s=log_interval_s, logger=log)
        self.known_devices = known_devices
        filters: dict[str, list[DeviceProfile]] = {}
        for p in self.profiles:
            filters.setdefault(p.topic_filter(), []).append(p)
        for topic_filter, sharing in filters.items():
            if len(sharing) > 1 and known_devices is None:
                log.warning("profiles %s share the topic filter %s and no device list says which device is which: "
                            "%r decodes them all", ", ".join(p.name for p in sharing), topic_filter, sharing[0].name)
        prefix = f"$share/{shared_group}/" if shared_group else ""
        self.subscriptions = [prefix + f for f in filters]
        self.subscribed = asyncio.Event()  # set while the subscriptions are active
        self.counts: dict[str, int] = self.intake.stats  # one set of counters, shared with the intake
        self.counts.update({"unmatched": 0, "oversize": 0, "reconnects": 0})
        self.device_problems = self.intake.device_problems
        self._connects = 0
        self.restart_backoff_s = (mqtt_cfg.reconnect_min_s, mqtt_cfg.reconnect_max_s)

    def stats(self) -> dict:
        """Counters since start (see the module notes), and how many devices had problems."""
        return {**self.counts, "devices_with_problems": len(self.device_problems)}

    # -- decoding (no I/O, usable without a broker) ----------------------------------------------
    def decode(self, topic: str, payload: bytes, received: datetime | None = None) -> list[Observation]:
        """The observations of one message; [] (counted and logged) when nothing must reach the rules."""
        profile, device = self._route(topic)
        if profile is None or device is None:
            self.counts["received"] += 1
            self.counts["unmatched"] += 1
            self.intake.warn(f"topic:{topic[:200]}", "message on %s matches no device profile", topic[:200])
            return []
        if len(payload) > self.max_payload_bytes:
            self.counts["received"] += 1
            self.counts["oversize"] += 1
            self.intake.problem(device)
            self.intake.warn(device, "profile %r, device %r: payload of %d bytes is over the %d byte limit: dropped",
                             profile.name, device, len(payload), self.max_payload_bytes)
            return []
        observations, _ = self.intake.decode(
            profile, lambda: profile.decode_message(payload, device=device, received=received or datetime.now(UTC)),
            device=device)
        return observations

    def _route(self, topic: str) -> tuple[DeviceProfile | None, str | None]:
        """The profile that decodes a topic: the device's own among those whose topic matches, else the first."""
        first: tuple[DeviceProfile | None, str | None] = (None, None)
        for profile in self.profiles:
            device = profile.device_id_from_topic(topic)
            if device is None:
                continue
            if first[0] is None:
                first = (profile, device)
            if self.known_devices is None or self.known_devices.get(device) in (None, profile.name):
                return profile, device
        return first

    # -- connection loop -------------------------------------------------------------------------
    async def run(self, stop_event: asyncio.Event) -> None:
        """Subscribe and deliver until stop_event is set. A lost or refused connection raises: the
        supervisor reconnects after its backoff (`restart_backoff_s`)."""
        cfg = self.config
        if self._connects:
            self.counts["reconnects"] += 1
        self._connects += 1
        try:
            # bounded incoming queue: when the callback falls behind, aiomqtt drops (and logs) messages
            # a persistent session needs a stable id: the broker keeps the subscription and queues
            # QoS 1 messages for it while the gateway restarts
            client = make_client(cfg, "source", max_queued_incoming_messages=self.max_queued_messages,
                                 clean_session=not (cfg.persistent_session and cfg.client_id))
            async with client:
                for topic_filter in self.subscriptions:
                    await client.subscribe(topic_filter, qos=cfg.qos)
                log.info("MQTT source subscribed to %s on %s:%d", ", ".join(self.subscriptions), cfg.host, cfg.port)
                self.subscribed.set()
                try:
                    await self._consume(client, stop_event)
                finally:
                    self.subscribed.clear()
        except aiomqtt.MqttError as exc:
            raise ConnectionError(f"MQTT broker {cfg.host}:{cfg.port}: {exc}") from exc

    async def _consume(self, client: aiomqtt.Client, stop_event: asyncio.Event) -> None:
        """Deliver messages until stopped; raises MqttError when the connection is lost."""
        await race(self._pump(client), stop_event.wait())

    async def _pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):  # aiomqtt hands bytes; be safe with str/None
                payload = str(payload or "").encode()
            for obs in self.decode(message.topic.value, bytes(payload)):
                await self.intake.deliver(obs)
