"""Live alerts and device health over MQTT (aiomqtt), best effort.

Topic layout (``<prefix>`` is ``MqttConfig.topic_prefix``, default ``citygate``):

    <prefix>/<site>/alerts/<severity>/<rule>       one message per Alert, QoS 1 (configurable), not retained
    <prefix>/<site>/health/<kind>/<device_id>      device-health state, retained: a late subscriber sees it
    <prefix>/<site>/status                         {"state": "online"|"offline"}, retained; "offline" is the
                                                   connection's last will, so it also appears on a crash

Topic levels taken from names (site, rule, kind, device id) have ``/ + # $`` replaced by ``_`` and an
empty level becomes ``_``, so a name can never change the layout or act as a wildcard.

Alert payload (JSON, UTF-8; evidence is listed but its bytes are never sent; they go to the case store):

    {"rule", "state": "open"|"closed", "time": ISO 8601, "source", "severity", "category",
     "subject": {"kind", "id"}, "place", "message", "lon", "lat", "track_id", "facts": {...},
     "evidence": [{"name", "media_type", "bytes"}], "site",
     "case_id": the case this alert opened or recurred, or null}

Delivery policy: alerts are also kept in the case store, so MQTT is a live notification channel,
not the record. Alerts wait in a bounded queue (``queue_size``) while the broker is away and are sent
after the reconnect; when the queue is full the *oldest* alert is dropped and counted in
``stats["dropped"]``. An alert leaves the queue only after the broker acknowledged it (QoS >= 1), so
a disconnect in the middle of a publish resends it: at-least-once while the process lives.
Health states are coalesced (latest per device) and re-published after every reconnect, because a
broker without persistence forgets retained messages when it restarts.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import re
import ssl
from collections.abc import Mapping
from typing import Any

import aiomqtt

from core.model import Alert
from gateway.aio import race
from gateway.sinks.sink_config import MqttConfig

__all__ = ["MqttAlertSink", "MqttConfig", "alert_payload", "make_client", "topic_level"]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[/+#$\x00]")
HEALTH_WINDOW = 20  # health states published at once: paho's default window of unacknowledged messages


def topic_level(name: str) -> str:
    """A name made safe to use as exactly one topic level."""
    return _UNSAFE.sub("_", str(name)) or "_"


def make_client(cfg: MqttConfig, role: str, will: aiomqtt.Will | None = None, *,
                client_type: type[aiomqtt.Client] = aiomqtt.Client, **kwargs: Any) -> aiomqtt.Client:
    """An aiomqtt client (or `client_type`, a subclass) for `cfg`. `role` suffixes a configured client id,
    so that the alert sink and the source of one gateway never share an id (the broker would keep
    kicking one of them off)."""
    if not cfg.host:
        raise ValueError("mqtt.host is not set: MQTT is disabled in this config")
    return client_type(
        cfg.host,
        cfg.port,
        username=cfg.username,
        password=cfg.password,
        identifier=f"{cfg.client_id}-{role}" if cfg.client_id else None,
        keepalive=cfg.keepalive,
        timeout=cfg.timeout_s,
        will=will,
        tls_context=ssl.create_default_context() if cfg.tls else None,
        **kwargs,
    )


def alert_payload(alert: Alert, site: str = "", case_id: str | None = None) -> dict[str, Any]:
    """The JSON document published for one alert (see the module doc); `case_id` names the case it
    opened or recurred, so a command-centre screen can link the alert to the case."""
    return {
        "site": site,
        "case_id": case_id,
        "rule": alert.rule,
        "state": alert.state,
        "time": alert.time.isoformat(),
        "source": alert.source,
        "severity": alert.severity,
        "category": alert.category,
        "subject": {"kind": alert.subject_kind, "id": alert.subject_id},
        "place": alert.place,
        "message": alert.message,
        "lon": alert.lon,
        "lat": alert.lat,
        "track_id": alert.track_id,
        "facts": dict(alert.facts),
        "evidence": [{"name": e.name, "media_type": e.media_type, "bytes": len(e.data)} for e in alert.evidence],
    }


def _dumps(doc: Any) -> bytes:
    # default=str: a fact that is not JSON (a datetime, a Path) is sent as text rather than losing the alert
    return json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":")).encode()


class MqttAlertSink:
    """Publishes alerts and retained device-health states; `run()` keeps the connection alive.

    `publish_alert` and `publish_health` never block and must be called from the event loop's thread.
    """

    name = "mqtt-alerts"

    def __init__(self, config: MqttConfig, site: str) -> None:
        self.config = config
        self.site = site
        base = f"{topic_level(config.topic_prefix)}/{topic_level(site)}"
        self._alerts_base = f"{base}/alerts"
        self._health_base = f"{base}/health"
        self.status_topic = f"{base}/status"
        self._alerts: collections.deque[tuple[str, bytes]] = collections.deque()
        self._health: dict[str, bytes] = {}  # latest state per topic, kept to re-publish after reconnects
        self._health_pending: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self.counters: dict[str, int] = {
            "published": 0, "dropped": 0, "queued": 0, "health_published": 0, "reconnects": 0, "errors": 0,
        }
        self._connects = 0
        self.restart_backoff_s = (config.reconnect_min_s, config.reconnect_max_s)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "connected": self.connected.is_set()}

    # -- topics ---------------------------------------------------------------------------------
    def alert_topic(self, alert: Alert) -> str:
        return f"{self._alerts_base}/{topic_level(alert.severity)}/{topic_level(alert.rule)}"

    def health_topic(self, kind: str, device_id: str) -> str:
        return f"{self._health_base}/{topic_level(kind)}/{topic_level(device_id)}"

    # -- producer side --------------------------------------------------------------------------
    def publish_alert(self, alert: Alert, case_id: str | None = None) -> None:
        """Queue an alert for publishing; drops (and counts) the oldest queued one when full."""
        if len(self._alerts) >= self.config.queue_size:
            self._alerts.popleft()
            self.counters["dropped"] += 1
            if self.counters["dropped"] == 1 or self.counters["dropped"] % 100 == 0:
                log.warning("MQTT alert queue full (%d): dropped the oldest alert, %d dropped so far",
                            self.config.queue_size, self.counters["dropped"])
        self._alerts.append((self.alert_topic(alert), _dumps(alert_payload(alert, self.site, case_id))))
        self.counters["queued"] = len(self._alerts)
        self._wake.set()

    def publish_health(self, kind: str, device_id: str, state: Mapping[str, Any]) -> None:
        """Set the retained health state of one device (only the latest state is sent)."""
        topic = self.health_topic(kind, device_id)
        payload = _dumps({"kind": kind, "device": device_id, **state})
        self._health[topic] = payload
        self._health_pending[topic] = payload
        self._wake.set()

    # -- connection ---------------------------------------------------------------------------
    async def run(self, stop_event: asyncio.Event) -> None:
        """Connect and publish what is queued until stop_event is set. A lost or refused connection
        raises: the supervisor reconnects after its backoff (`restart_backoff_s`), and the queue,
        kept in this object, is sent after the reconnect."""
        cfg = self.config
        if not cfg.enabled:
            log.info("MQTT alert sink: no mqtt.host configured, alerts go to the case store only")
            return
        if self._connects:
            self.counters["reconnects"] += 1
        self._connects += 1
        will = aiomqtt.Will(self.status_topic, _dumps({"state": "offline"}), qos=1, retain=True)
        try:
            async with make_client(cfg, "alerts", will=will) as client:
                client.pending_calls_threshold = HEALTH_WINDOW  # aiomqtt warns of a window beyond 10
                log.info("MQTT alert sink connected to %s:%d", cfg.host, cfg.port)
                self._health_pending.update(self._health)  # the broker may have lost retained states
                await client.publish(self.status_topic, _dumps({"state": "online"}), qos=1, retain=True)
                self.connected.set()
                try:
                    await self._serve(client, stop_event)
                finally:
                    self.connected.clear()
                await client.publish(self.status_topic, _dumps({"state": "offline"}), qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            self.counters["errors"] += 1
            raise ConnectionError(f"MQTT broker {cfg.host}:{cfg.port}: {exc}; {len(self._alerts)} alert(s) "
                                  "queued") from exc

    async def _serve(self, client: aiomqtt.Client, stop_event: asyncio.Event) -> None:
        """Send until stopped or disconnected (the message iterator is what notices a dead connection)."""
        await race(self._send(client), self._watch(client), stop_event.wait())  # raises on a lost connection

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        async for _ in client.messages:  # nothing is subscribed; raises MqttError on disconnect
            pass

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if self._health_pending:
                await self._send_health(client)
            elif self._alerts:
                item = self._alerts[0]
                if await self._publish(client, item[0], item[1], retain=False):
                    self.counters["published"] += 1
                if self._alerts and self._alerts[0] is item:  # it may have been dropped as the oldest meanwhile
                    self._alerts.popleft()
                self.counters["queued"] = len(self._alerts)
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _send_health(self, client: aiomqtt.Client) -> None:
        """Up to HEALTH_WINDOW pending health states at once: a gateway starting with thousands of devices
        sends their first states in one go, and waiting for each acknowledgement in turn cost ~180 us of
        the loop's time a message (measured with 10,000 sensors)."""
        batch = list(itertools.islice(self._health_pending.items(), HEALTH_WINDOW))
        results = await asyncio.gather(*(self._publish(client, topic, payload, retain=True) for topic, payload in batch),
                                       return_exceptions=True)
        for (topic, payload), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                continue  # not sent: stays pending for the next connection
            self.counters["health_published"] += result  # False: refused by paho and dropped
            if self._health_pending.get(topic) is payload:  # unless a newer state arrived meanwhile
                del self._health_pending[topic]
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes, retain: bool) -> bool:
        """Publish one message; False when paho refuses the message itself (it is then dropped, so one bad
        message cannot block the queue). Connection errors propagate: the message stays queued."""
        try:
            await client.publish(topic, payload, qos=self.config.qos, retain=retain)
        except ValueError as exc:
            self.counters["errors"] += 1
            log.error("MQTT alert sink: message to %s refused and dropped: %s", topic, exc)
            return False
        return True
