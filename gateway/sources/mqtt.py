"""Sensors and GPS trackers over MQTT, decoded through device profiles into Readings and Positions.

One subscription per profile topic filter (``{device_id}`` -> ``+``). With ``shared_group`` the
filters are subscribed as ``$share/<group>/<filter>``: the broker then hands each message to one of
the gateway replicas of that group, which is how vehicle and sensor ingestion scales out.

Bad input never stops the source: an undecodable payload, a value out of range or a device not in
``known_devices`` is counted (``stats``, ``device_problems``), logged at most once per device per
``log_interval_s``, and kept away from the rules (an out-of-range value is left out of its Reading;
a payload with nothing usable is dropped). An exception in the callback is counted and logged too.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import aiomqtt

from core.model import Position, Reading
from gateway.aio import Backoff, race, wait_or_stop
from gateway.profiles import DeviceProfile, PayloadError
from gateway.sinks.mqtt import make_client
from gateway.sinks.sink_config import MqttConfig

__all__ = ["MqttSource", "Observation"]

log = logging.getLogger(__name__)

Observation = Reading | Position
OnObservation = Callable[[Observation], Awaitable[None] | None]


class _Throttle:
    """Allows one log line per key per interval and counts what it held back."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    MAX_KEYS = 10_000  # device ids come from the network: bound the memory they can take

    def allow(self, key: str) -> tuple[bool, int]:
        now = time.monotonic()
        if len(self._last) >= self.MAX_KEYS and key not in self._last:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            self._held = collections.Counter({k: n for k, n in self._held.items() if k in self._last})
            if len(self._last) >= self.MAX_KEYS:
                key = "(many devices)"
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)


class MqttSource:
    name = "mqtt-source"

    def __init__(
        self,
        mqtt_cfg: MqttConfig,
        profiles: Iterable[DeviceProfile],
        on_observation: OnObservation,
        *,
        shared_group: str | None = None,
        known_devices: set[str] | None = None,
        log_interval_s: float = 60.0,
        max_queued_messages: int = 10_000,
    ) -> None:
        if not mqtt_cfg.enabled:
            raise ValueError("the MQTT source needs mqtt.host (the broker) to be set")
        self.config = mqtt_cfg
        self.profiles = list(profiles)
        if not self.profiles:
            raise ValueError("MqttSource needs at least one device profile")
        self.on_observation = on_observation
        self.shared_group = shared_group
        self.known_devices = known_devices  # None: every device is accepted
        self.max_queued_messages = max_queued_messages
        filters: dict[str, str] = {}
        for p in self.profiles:
            f = p.topic_filter()
            if f in filters:
                log.warning("profiles %r and %r share the topic filter %s; %r decodes those messages",
                            filters[f], p.name, f, filters[f])
            filters.setdefault(f, p.name)
        prefix = f"$share/{shared_group}/" if shared_group else ""
        self.subscriptions = [prefix + f for f in filters]
        self._throttle = _Throttle(log_interval_s)
        self.subscribed = asyncio.Event()  # set while the subscriptions are active
        self.stats: dict[str, int] = {
            "received": 0, "observations": 0, "undecodable": 0, "values_dropped": 0, "unknown_device": 0,
            "unmatched": 0, "callback_errors": 0, "reconnects": 0,
        }
        self.device_problems: collections.Counter[str] = collections.Counter()  # see _problem()

    # -- decoding (no I/O, usable without a broker) ----------------------------------------------
    def decode(self, topic: str, payload: bytes, received: datetime | None = None) -> Observation | None:
        """The observation of one message, or None (counted and logged) when it must not reach the rules."""
        self.stats["received"] += 1
        for profile in self.profiles:
            device = profile.device_id_from_topic(topic)
            if device is not None:
                break
        else:
            self.stats["unmatched"] += 1
            self._log(f"topic:{topic}", "message on %s matches no device profile", topic)
            return None
        if self.known_devices is not None and device not in self.known_devices:
            self.stats["unknown_device"] += 1
            self._problem(device)
            self._log(device, "unknown device %r (profile %s, topic %s): ignored", device, profile.name, topic)
            return None
        try:
            result = profile.decode(topic, payload, received=received or datetime.now(UTC))
        except PayloadError as exc:
            self.stats["undecodable"] += 1
            self._problem(device)
            self._log(device, "undecodable payload: %s", exc)
            return None
        if result.problems:
            self.stats["values_dropped"] += len(result.problems)
            self._problem(device)
            self._log(device, "profile %r, device %r: values left out: %s", profile.name, device,
                      "; ".join(result.problems))
        self.stats["observations"] += 1
        return result.observation

    def _problem(self, device: str) -> None:
        if device not in self.device_problems and len(self.device_problems) >= _Throttle.MAX_KEYS:
            device = "(other devices)"  # bounded: a flood of made-up ids cannot grow this without end
        self.device_problems[device] += 1

    def _log(self, key: str, msg: str, *args: object) -> None:
        allowed, held = self._throttle.allow(key)
        if allowed:
            suffix = f" (+{held} similar since the last report)" if held else ""
            log.warning(msg + suffix, *args)

    async def _deliver(self, obs: Observation) -> None:
        try:
            result = self.on_observation(obs)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.stats["callback_errors"] += 1
            if self._throttle.allow("callback")[0]:
                log.exception("MQTT source: the observation callback failed for device %r", obs.device)

    # -- connection loop -------------------------------------------------------------------------
    async def run(self, stop_event: asyncio.Event) -> None:
        """Subscribe and deliver until stop_event is set; reconnects with backoff."""
        cfg = self.config
        backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        first = True
        while not stop_event.is_set():
            if not first:
                self.stats["reconnects"] += 1
            first = False
            try:
                # bounded incoming queue: when the callback falls behind, aiomqtt drops (and logs) messages
                # a persistent session needs a stable id: the broker keeps the subscription and queues
                # QoS 1 messages for it while the gateway restarts
                client = make_client(cfg, "source", max_queued_incoming_messages=self.max_queued_messages,
                                     clean_session=not (cfg.persistent_session and cfg.client_id))
                async with client:
                    for topic_filter in self.subscriptions:
                        await client.subscribe(topic_filter, qos=cfg.qos)
                    log.info("MQTT source subscribed to %s on %s:%d", ", ".join(self.subscriptions),
                             cfg.host, cfg.port)
                    backoff.reset()
                    self.subscribed.set()
                    try:
                        await self._consume(client, stop_event)
                    finally:
                        self.subscribed.clear()
            except aiomqtt.MqttError as exc:
                delay = backoff.next()
                log.warning("MQTT source: %s (broker %s:%d); reconnecting in %.1f s", exc, cfg.host, cfg.port,
                            delay)
                if await wait_or_stop(stop_event, delay):
                    break

    async def _consume(self, client: aiomqtt.Client, stop_event: asyncio.Event) -> None:
        """Deliver messages until stopped; raises MqttError when the connection is lost."""
        await race(self._pump(client), stop_event.wait())

    async def _pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):  # aiomqtt hands bytes; be safe with str/None
                payload = str(payload or "").encode()
            obs = self.decode(message.topic.value, bytes(payload))
            if obs is not None:
                await self._deliver(obs)
