"""Prometheus `/metrics`: built at scrape time from the runtime's snapshot and the case store.

Nothing is counted twice: the runtime's parts keep their own counters (their `stats`), and a
scrape turns the current values into metric families (a custom collector), so the exposition
can never drift from what the status page shows. `LatencyHistogram` is the one piece of state
kept here: a fixed-bucket histogram the runtime may wrap around a camera's analysis call
(`timed`) and publish in the camera's snapshot as `analysis_latency`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Counts of durations per bucket (seconds), thread-safe; `snapshot()` is JSON for the status page."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        return {"buckets": list(self.buckets), "counts": counts, "sum": round(total, 6), "count": sum(counts)}


def timed(fn: Callable, histogram: LatencyHistogram) -> Callable:
    """`fn` that records how long each call took in `histogram`."""
    def call(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - t0)
    return call


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def _section(snapshot: Mapping, key: str) -> Mapping:
    value = snapshot.get(key)
    return value if isinstance(value, Mapping) else {}


class GatewayCollector:
    """Metric families of one scrape; `snapshot` and `store` were read before (on the loop / in a thread)."""

    def __init__(self, snapshot: Mapping[str, Any], store: Mapping[str, Any]) -> None:
        self.snapshot = snapshot
        self.store = store

    def collect(self) -> Iterable[Metric]:
        snap, store = self.snapshot, self.store
        cameras = _section(snap, "cameras")
        messages = CounterMetricFamily("citygate_messages", "Messages received, per source.", labels=["source"])
        decode = CounterMetricFamily("citygate_decode_errors", "Messages or frames that could not be decoded, "
                                     "per source.", labels=["source"])
        reconnects = CounterMetricFamily("citygate_reconnects", "Reconnections, per source or sink.",
                                         labels=["source"])
        frames = CounterMetricFamily("citygate_frames", "Video frames, per camera and stage.",
                                     labels=["camera", "stage"])
        online = GaugeMetricFamily("citygate_camera_online", "1 when the camera's stream is up.", labels=["camera"])
        fps = GaugeMetricFamily("citygate_camera_decoded_fps", "Decoded frames per second.", labels=["camera"])
        latency = HistogramMetricFamily("citygate_inference_seconds", "Time to analyse one frame (detector and "
                                        "rules), per camera.", labels=["camera"])
        for name, cam in cameras.items():
            if not isinstance(cam, Mapping):
                continue
            for stage, key in (("decoded", "frames_decoded"), ("dropped", "frames_dropped"),
                               ("analysed", "frames_analysed"), ("inferred", "inferences"),
                               ("skipped_by_motion", "skipped_by_motion")):
                if _num(cam.get(key)) is not None:
                    frames.add_metric([name, stage], _num(cam[key]))
            if _num(cam.get("online")) is not None:
                online.add_metric([name], _num(cam["online"]))
            if _num(cam.get("decoded_fps")) is not None:
                fps.add_metric([name], _num(cam["decoded_fps"]))
            if _num(cam.get("reconnects")) is not None:
                reconnects.add_metric([f"camera:{name}"], _num(cam["reconnects"]))
            if _num(cam.get("analysis_errors")) is not None:
                decode.add_metric([f"camera:{name}"], _num(cam["analysis_errors"]))
            hist = cam.get("analysis_latency")
            if isinstance(hist, Mapping) and hist.get("buckets"):
                cumulative, buckets = 0, []
                for bound, count in zip([*hist["buckets"], float("inf")], hist["counts"], strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
                latency.add_metric([name], buckets, float(hist.get("sum", 0.0)))
        jt, mq = _section(snap, "jt808"), _section(snap, "mqtt-source")
        sources = [("jt808", jt.get("frames"), jt.get("decode_errors"), None),
                   ("mqtt", mq.get("received"), mq.get("undecodable"), mq.get("reconnects"))]
        for name in ("modbus", "http-ingest"):
            intake = _section(snap, name)
            sources.append((name, intake.get("received"), intake.get("undecodable"), None))
        for name, stats in snap.items():
            if name.startswith("nmea:") and isinstance(stats, Mapping):
                sources.append((name, stats.get("lines"), stats.get("decode_errors"), None))
        rules = _section(snap, "rules")
        sources.append(("positions", rules.get("positions"), None, None))
        sources.append(("readings", rules.get("readings"), None, None))
        for source, received, errors, again in sources:
            if _num(received) is not None:
                messages.add_metric([source], _num(received))
            if _num(errors) is not None:
                decode.add_metric([source], _num(errors))
            if _num(again) is not None:
                reconnects.add_metric([source], _num(again))
        mqtt_sink = _section(snap, "mqtt-alerts")
        if _num(mqtt_sink.get("reconnects")) is not None:
            reconnects.add_metric(["mqtt-alerts"], _num(mqtt_sink["reconnects"]))
        yield from (messages, decode, reconnects, frames, online, fps, latency)

        queues = GaugeMetricFamily("citygate_queue_depth", "Items waiting in a queue.", labels=["queue"])
        for queue, value in (("mqtt_alerts", mqtt_sink.get("queued")),
                             ("timeseries", _section(snap, "timeseries").get("buffered")),
                             ("alerts", _section(snap, "alerts").get("pending")),
                             ("outbox", store.get("by_status", {}).get("pending"))):
            if _num(value) is not None:
                queues.add_metric([queue], _num(value))
        yield queues

        outbox = GaugeMetricFamily("citygate_outbox_cases", "Cases in the local store, per status.",
                                   labels=["status"])
        for status, n in store.get("by_status", {}).items():
            outbox.add_metric([status], n)
        yield outbox
        yield GaugeMetricFamily("citygate_outbox_oldest_pending_age_seconds", "Age of the oldest undelivered "
                                "case (0 when none).", value=float(store.get("oldest_pending_age_s", 0.0)))
        ratio = _num(_section(snap, "outbox").get("fill_ratio"))
        if ratio is not None:
            yield GaugeMetricFamily("citygate_outbox_fill_ratio", "Pending cases / cases.max_outbox.", value=ratio)

        errors = CounterMetricFamily("citygate_delivery_errors", "Failed deliveries to the central platform, "
                                     "per HTTP status ('retry' = retried failures of any kind).",
                                     labels=["status"])
        for code, n in store.get("rejected_by_status", {}).items():
            errors.add_metric([code], n)
        central = _section(snap, "central")
        if _num(central.get("failed_attempts")) is not None:
            errors.add_metric(["retry"], _num(central["failed_attempts"]))
        yield errors
        if _num(central.get("delivered")) is not None:
            yield CounterMetricFamily("citygate_cases_delivered", "Cases acknowledged by the central platform "
                                      "since start.", value=_num(central["delivered"]))

        by_rule = GaugeMetricFamily("citygate_cases_by_rule", "Cases in the local store, per rule.",
                                    labels=["rule"])
        for rule, n in store.get("by_rule", {}).items():
            by_rule.add_metric([rule], n)
        yield by_rule
        desk = _section(_section(snap, "alerts"), "desk")
        desk_metric = CounterMetricFamily("citygate_case_desk", "Case desk outcomes since start.",
                                          labels=["outcome"])
        for key, value in desk.items():
            if _num(value) is not None:
                desk_metric.add_metric([key], _num(value))
        yield desk_metric

        restarts = CounterMetricFamily("citygate_task_restarts", "Restarts of supervised tasks.", labels=["task"])
        for task, state in _section(snap, "tasks").items():
            if isinstance(state, Mapping) and _num(state.get("restarts")) is not None:
                restarts.add_metric([task], _num(state["restarts"]))
        yield restarts
        if _num(snap.get("uptime_s")) is not None:
            yield GaugeMetricFamily("citygate_uptime_seconds", "Seconds since the gateway started.",
                                    value=_num(snap["uptime_s"]))


def exposition(snapshot: Mapping[str, Any], store: Mapping[str, Any]) -> bytes:
    """The Prometheus text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(snapshot, store))
    return generate_latest(registry)
