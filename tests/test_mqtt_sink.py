"""MQTT alert sink against the real Mosquitto from conftest: topics, QoS, retained health, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from core.model import Alert, Evidence
from gateway.sinks.mqtt import MqttAlertSink, topic_level
from gateway.sinks.sink_config import MqttConfig
from gateway.supervisor import Supervisor

SITE = "test-site"
T0 = datetime(2026, 11, 23, 1, 41, 7, tzinfo=UTC)
WAIT = 20.0  # generous upper bound for anything to arrive; tests normally finish in milliseconds


async def until(predicate, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def make_alert(rule: str = "no-parking-east-gate", n: int = 0, **kw) -> Alert:
    base = dict(
        rule=rule, subject_kind="camera", subject_id="cam-012", state="open", time=T0 + timedelta(seconds=n),
        source="video", severity="warning", message=f"car parked 312 s #{n}", category="illegal_parking",
        place="east-gate", lon=116.37, lat=39.91, track_id=57, facts={"dwell_s": 312, "n": n},
        evidence=(Evidence("snapshot.jpg", "image/jpeg", b"\xff\xd8" + b"x" * 100),),
    )
    base.update(kw)
    return Alert(**base)


@contextlib.asynccontextmanager
async def subscribed(port: int, topic: str):
    """A real subscriber (QoS 1); yields a queue of received aiomqtt messages."""
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        await client.subscribe(topic, qos=1)
        queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()

        async def pump():
            async for message in client.messages:
                await queue.put(message)

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(sink: MqttAlertSink):
    """As the gateway runs it: under a supervisor, which reconnects with the sink's backoff."""
    stop = asyncio.Event()
    supervisor = Supervisor()
    task = supervisor.spawn(sink.name, lambda: sink.run(stop), backoff=sink.restart_backoff_s)
    try:
        yield task
    finally:
        stop.set()
        assert await supervisor.wait([sink.name], WAIT)


def sink_for(port: int, site: str = SITE, **kw) -> MqttAlertSink:
    cfg = MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.05, reconnect_max_s=0.5, **kw)
    return MqttAlertSink(cfg, site)


class Gate:
    """A TCP relay in front of the broker that the test can close, to hold a client away from it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Gate:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        self.server.close()
        await self.server.wait_closed()

    def close(self) -> None:
        """Refuse new connections and cut the current ones."""
        self.open = False
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_alert_arrives_on_documented_topic_with_qos1_and_json(broker):
    sink = sink_for(broker.port)
    async with subscribed(broker.port, f"citygate/{SITE}/alerts/#") as inbox, running(sink):
        await asyncio.wait_for(sink.connected.wait(), WAIT)
        sink.publish_alert(make_alert())
        message = await asyncio.wait_for(inbox.get(), WAIT)

    assert message.topic.value == f"citygate/{SITE}/alerts/warning/no-parking-east-gate"
    assert message.qos == 1
    assert message.retain is False
    doc = json.loads(message.payload)
    assert doc["rule"] == "no-parking-east-gate"
    assert doc["state"] == "open"
    assert doc["subject"] == {"kind": "camera", "id": "cam-012"}
    assert doc["place"] == "east-gate"
    assert datetime.fromisoformat(doc["time"]) == T0
    assert doc["severity"] == "warning" and doc["category"] == "illegal_parking" and doc["source"] == "video"
    assert doc["facts"] == {"dwell_s": 312, "n": 0}
    assert (doc["lon"], doc["lat"], doc["track_id"]) == (116.37, 39.91, 57)
    assert doc["evidence"] == [{"name": "snapshot.jpg", "media_type": "image/jpeg", "bytes": 102}]
    assert "xxxx" not in message.payload.decode()  # evidence bytes never go over MQTT
    assert sink.stats()["published"] == 1 and sink.stats()["dropped"] == 0


async def test_closing_alert_and_odd_rule_names_stay_one_topic_level(broker):
    sink = sink_for(broker.port, topic_prefix="city1")
    alert = make_alert(rule="speed/limit+#1", state="closed", severity="critical")
    async with subscribed(broker.port, "city1/#") as inbox, running(sink):
        await asyncio.wait_for(sink.connected.wait(), WAIT)
        sink.publish_alert(alert)
        message = await asyncio.wait_for(inbox.get(), WAIT)
        while "/alerts/" not in message.topic.value:  # skip the retained status message
            message = await asyncio.wait_for(inbox.get(), WAIT)
    assert message.topic.value == f"city1/{SITE}/alerts/critical/speed_limit__1"
    assert json.loads(message.payload)["state"] == "closed"
    assert topic_level("") == "_"


async def test_health_state_is_retained_for_late_subscribers(broker):
    sink = sink_for(broker.port)
    async with running(sink):
        await asyncio.wait_for(sink.connected.wait(), WAIT)
        sink.publish_health("sensor", "WL-0042", {"state": "offline", "since": T0.isoformat()})
        await until(lambda: sink.stats()["health_published"] >= 1, what="health publish")
        # subscribe only now: the broker must hand over the retained state
        async with subscribed(broker.port, f"citygate/{SITE}/health/#") as inbox:
            message = await asyncio.wait_for(inbox.get(), WAIT)
    assert message.topic.value == f"citygate/{SITE}/health/sensor/WL-0042"
    assert message.retain is True
    assert json.loads(message.payload) == {"kind": "sensor", "device": "WL-0042", "state": "offline",
                                           "since": T0.isoformat()}


async def test_the_first_states_of_a_fleet_are_all_retained_each_device_its_latest(broker):
    """Health states go out many at once (a start with thousands of devices): none is lost, and a state
    changed while the first was on its way ends as the retained one."""
    sink = sink_for(broker.port, site="fleet-site")
    async with running(sink):
        await asyncio.wait_for(sink.connected.wait(), WAIT)
        for i in range(250):
            sink.publish_health("sensor", f"WL-{i:04d}", {"state": "online"})
        await asyncio.sleep(0)
        sink.publish_health("sensor", "WL-0007", {"state": "offline"})
        await until(lambda: not sink._health_pending, what="every health state sent")
        async with subscribed(broker.port, "citygate/fleet-site/health/#") as inbox:
            retained = {}
            while len(retained) < 250:
                message = await asyncio.wait_for(inbox.get(), WAIT)
                retained[message.topic.value.rsplit("/", 1)[1]] = json.loads(message.payload)["state"]
    assert sink.stats()["health_published"] >= 250
    assert retained["WL-0007"] == "offline" and retained["WL-0249"] == "online"
    assert list(retained.values()).count("online") == 249


async def test_status_topic_is_online_then_offline_on_stop(broker):
    sink = sink_for(broker.port, site="status-site")
    async with running(sink):
        await asyncio.wait_for(sink.connected.wait(), WAIT)
        async with subscribed(broker.port, sink.status_topic) as inbox:
            online = await asyncio.wait_for(inbox.get(), WAIT)
    async with subscribed(broker.port, sink.status_topic) as inbox:
        offline = await asyncio.wait_for(inbox.get(), WAIT)
    assert sink.status_topic == "citygate/status-site/status"
    assert online.retain and json.loads(online.payload) == {"state": "online"}
    assert offline.retain and json.loads(offline.payload) == {"state": "offline"}


async def test_reconnects_after_broker_restart(broker):
    sink = sink_for(broker.port)
    async with running(sink):
        await asyncio.wait_for(sink.connected.wait(), WAIT)
        sink.publish_health("vehicle", "013300001111", {"state": "online"})
        await until(lambda: sink.stats()["health_published"] >= 1, what="health publish")

        await asyncio.to_thread(broker.restart)  # the broker forgets everything (persistence off)
        await until(lambda: sink.stats()["reconnects"] >= 1 and sink.connected.is_set(), what="reconnect")

        # the retained health state was re-published after the reconnect
        async with subscribed(broker.port, f"citygate/{SITE}/health/#") as inbox:
            health = await asyncio.wait_for(inbox.get(), WAIT)
        assert health.topic.value.endswith("/health/vehicle/013300001111") and health.retain

        async with subscribed(broker.port, f"citygate/{SITE}/alerts/#") as inbox:
            sink.publish_alert(make_alert(n=1))
            message = await asyncio.wait_for(inbox.get(), WAIT)
    assert json.loads(message.payload)["facts"]["n"] == 1


async def test_alerts_queued_while_away_are_sent_after_reconnect_oldest_dropped(broker):
    async with Gate(broker.port) as gate:
        sink = sink_for(gate.port, queue_size=3)
        async with subscribed(broker.port, f"citygate/{SITE}/alerts/#") as inbox, running(sink):
            await asyncio.wait_for(sink.connected.wait(), WAIT)
            gate.close()
            await until(lambda: not sink.connected.is_set(), what="the sink to notice the lost connection")
            for n in range(5):  # 5 alerts into a queue of 3: the two oldest are dropped
                sink.publish_alert(make_alert(n=n))
            assert sink.stats()["dropped"] == 2
            gate.open = True
            got = [json.loads((await asyncio.wait_for(inbox.get(), WAIT)).payload)["facts"]["n"]
                   for _ in range(3)]
            # a subscriber may see the last message before the broker's PUBACK reaches the sink
            await until(lambda: sink.stats()["queued"] == 0, what="the last alert acknowledged")
    assert got == [2, 3, 4]
    assert sink.stats()["reconnects"] >= 1
    assert sink.stats()["queued"] == 0


async def test_disabled_sink_returns_at_once_and_source_refuses():
    assert not MqttConfig().enabled
    await asyncio.wait_for(MqttAlertSink(MqttConfig(), SITE).run(asyncio.Event()), WAIT)
    from gateway.sources.mqtt import MqttSource

    with pytest.raises(ValueError, match=r"mqtt\.host"):
        MqttSource(MqttConfig(), [], print)
    with pytest.raises(ValueError, match="host"):
        from gateway.sinks.mqtt import make_client

        make_client(MqttConfig(), "alerts")
