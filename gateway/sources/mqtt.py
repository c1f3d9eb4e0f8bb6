"""Sensors and GPS trackers over MQTT, decoded through device profiles into Readings and Positions.

One subscription per profile topic filter (``{device_id}`` -> ``+``). Profiles may share a filter
(every ChirpStack device publishes on ``application/+/device/+/event/up``): the device's configured
profile picks the decoder, else the first profile of that filter.

Scale-out keeps each device on one replica, because its rule state (episodes, rolling windows,
spike and offline checks) lives in that replica's memory:

- ``partition=(index, count)``: this replica takes the devices whose stable hash of the id falls in
  its share. Listed devices are subscribed one concrete topic each (the broker sends nothing else);
  a profile whose topic has no ``{device_id}`` level (or whose id is in the payload), and any
  subscription a persistent session kept from an earlier device list, is filtered on receipt
  (``other_partition``). No coordinator: every replica computes the same split.
- ``shared_group``: ``$share/<group>/<filter>``; the broker hands each message to one member. Only
  per-device if the broker hashes (EMQX ``shared_subscription_strategy = hash_topic``); Mosquitto's
  round robin sends consecutive readings of one device to different replicas.

No payload can stop the source: each message is decoded on its own through `Intake` (see there),
which counts and rate-limits every problem (undecodable, oversize, unknown device, wrong profile,
values out of range, a decoder exception) per device; the next message is handled as usual.

Nothing the broker kept is lost here (`FlowClient`, gateway/sources/mqtt_flow.py): a QoS 1 message
is acknowledged only once it has been handed to the rules, or refused for good (undecodable,
unknown device, ... : counted, acknowledged, never redelivered for ever). What the gateway has not
handled stays in the broker's session, so a backlog of any size drains at the pipeline's pace and a
crash redelivers what was in hand (at least once: the rules drop a reading whose device and time they
have seen). The source subscribes at QoS 1 at most: QoS 2 would need the receiver to keep its half of
the handshake across a crash to avoid a loss, which at-least-once with duplicate-proof rules does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import aiomqtt

from gateway.aio import race
from gateway.patrol.inventory import shard_of
from gateway.profiles import DeviceProfile
from gateway.sinks.mqtt import make_client
from gateway.sinks.sink_config import MqttConfig
from gateway.sources.intake import Intake, Observation, OnObservation
from gateway.sources.mqtt_flow import FlowClient

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
        high_water: int = 1_000,
        partition: tuple[int, int] | None = None,
    ) -> None:
        if not mqtt_cfg.enabled:
            raise ValueError("the MQTT source needs mqtt.host (the broker) to be set")
        self.config = mqtt_cfg
        self.profiles = [p for p in profiles if p.transport == "mqtt"]
        if not self.profiles:
            raise ValueError("MqttSource needs at least one MQTT device profile")
        self.shared_group = shared_group
        self.max_payload_bytes = max_payload_bytes
        self.high_water = high_water  # messages received and not yet handled at most (see FlowClient)
        self.qos = min(mqtt_cfg.qos, 1)
        if self.qos == 0:
            log.warning("mqtt.qos is 0: the broker keeps no device message for the gateway while it is away, "
                        "and a message the gateway has not handled is lost when it stops")
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
        if partition is not None and not 0 <= partition[0] < partition[1]:
            raise ValueError(f"partition index {partition[0]} must be in 0 .. {partition[1] - 1}")
        if partition is not None and shared_group:
            raise ValueError("use partition or shared_group, not both")
        self.partition = partition
        if partition is not None:
            self.subscriptions = self._partition_subscriptions(filters)
        else:
            prefix = f"$share/{shared_group}/" if shared_group else ""
            self.subscriptions = [prefix + f for f in filters]
        self.subscribed = asyncio.Event()  # set while the subscriptions are active
        self.counts: dict[str, int] = self.intake.stats  # one set of counters, shared with the intake
        self.counts.update({"unmatched": 0, "oversize": 0, "reconnects": 0, "other_partition": 0,
                            "handling_errors": 0, "pauses": 0, "most_held": 0})
        self.device_problems = self.intake.device_problems
        self._routes: dict[str, tuple[DeviceProfile | None, str | None]] = {}  # see _route
        self._connects = 0
        self.restart_backoff_s = (mqtt_cfg.reconnect_min_s, mqtt_cfg.reconnect_max_s)

    def mine(self, device: str) -> bool:
        """Whether this replica handles `device` (always, without a partition)."""
        return self.partition is None or shard_of(device, self.partition[1]) == self.partition[0]

    def _partition_subscriptions(self, filters: Mapping[str, list[DeviceProfile]]) -> list[str]:
        """One concrete topic per listed device of this share; whole filters where that cannot be."""
        topics: list[str] = []
        for topic_filter, sharing in filters.items():
            per_device = self.known_devices is not None and all(
                "{device_id}" in (p.topic or "") and not p.device_id_in_payload for p in sharing)
            if not per_device:
                topics.append(topic_filter)  # filtered on receipt
                continue
            for device, wanted in (self.known_devices or {}).items():
                if not self.mine(device):
                    continue
                if not device or any(c in device for c in "+#/\0"):
                    log.warning("device id %r cannot be an MQTT topic level: not subscribed", device[:100])
                    continue
                for p in sharing:
                    if wanted in (None, p.name):
                        topics.append(_device_topic(p, device))
        return list(dict.fromkeys(topics))  # profiles sharing a filter give the same topic

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
        if self.partition is not None and not profile.device_id_in_payload and not self.mine(device):
            self.counts["other_partition"] += 1
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
        if self.partition is not None and profile.device_id_in_payload:
            mine = [o for o in observations if self.mine(o.device)]
            self.counts["other_partition"] += len(observations) - len(mine)
            return mine
        return observations

    def _route(self, topic: str) -> tuple[DeviceProfile | None, str | None]:
        """`_find_route`, remembered per topic (a device's topic does not change; bounded by max_devices)."""
        route = self._routes.get(topic)
        if route is None:
            if len(self._routes) >= self.intake.max_devices:
                self._routes.clear()
            route = self._routes[topic] = self._find_route(topic)
        return route

    def _find_route(self, topic: str) -> tuple[DeviceProfile | None, str | None]:
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
            # a persistent session needs a stable id: the broker keeps the subscription and queues
            # QoS 1 messages for it while the gateway restarts (or drains a backlog at its own pace)
            client = make_client(cfg, "source", client_type=FlowClient, high_water=self.high_water,
                                 stats=self.counts, clean_session=not (cfg.persistent_session and cfg.client_id))
            async with client:
                try:
                    # a resumed session's backlog flows at once, before the SUBACKs: handled meanwhile
                    # (a paused reader would never read the SUBACK otherwise)
                    await race(self._pump(client), self._subscribe(client, stop_event))
                finally:
                    self.subscribed.clear()
                    client.send_acks()  # what was handled before a stop: written before the DISCONNECT
        except aiomqtt.MqttError as exc:
            raise ConnectionError(f"MQTT broker {cfg.host}:{cfg.port}: {exc}") from exc

    async def _subscribe(self, client: FlowClient, stop_event: asyncio.Event) -> None:
        """Subscribe, then wait until stopped (while `_pump` delivers)."""
        cfg = self.config
        # a partition may name thousands of topics: several per SUBSCRIBE packet
        for i in range(0, len(self.subscriptions), 500):
            await client.subscribe([(t, self.qos) for t in self.subscriptions[i:i + 500]])
        shown = ", ".join(self.subscriptions[:5]) + (", ..." if len(self.subscriptions) > 5 else "")
        share = f" (partition {self.partition[0]} of {self.partition[1]})" if self.partition else ""
        log.info("MQTT source subscribed to %d topic filters%s on %s:%d: %s", len(self.subscriptions),
                 share, cfg.host, cfg.port, shown)
        self.subscribed.set()
        await stop_event.wait()

    async def _pump(self, client: FlowClient) -> None:
        """Hand each message on, then acknowledge it; raises MqttError when the connection is lost."""
        async for batch in client.batches():
            for message in batch:
                await self._hand_on(message)
                client.handled(message)
            client.send_acks()

    async def _hand_on(self, message: aiomqtt.Message) -> None:
        try:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):  # aiomqtt hands bytes; be safe with str/None
                payload = str(payload or "").encode()
            for obs in self.decode(message.topic.value, bytes(payload)):
                await self.intake.deliver(obs)
        except Exception:  # noqa: BLE001 - acknowledged all the same: redelivering it would fail again
            self.counts["handling_errors"] += 1
            if self.intake.throttle.allow("handling")[0]:
                log.exception("a message on %s could not be handled: dropped", str(message.topic)[:200])


def _device_topic(profile: DeviceProfile, device: str) -> str:
    """The topic filter of one device: its profile's filter with the device id in its level."""
    levels = (profile.topic or "").split("/")
    return "/".join(device if level == "{device_id}" else level for level in levels)
