"""Time-series sink: InfluxDB write API against real VictoriaMetrics, and the embedded SQLite table."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from services import free_port

from core.model import Detection, Position, Reading
from gateway.sinks.timeseries import (
    Point,
    TimeSeriesConfig,
    TimeSeriesSink,
    detection_points,
    position_point,
    reading_point,
)

# an hour ago: inside VictoriaMetrics' retention, and export does not return samples from the future
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
WAIT = 30.0


def export_until(vm, match: str, count: int) -> list[dict]:
    """VictoriaMetrics makes fresh series searchable shortly after ingestion: poll until they show up."""
    deadline = time.monotonic() + WAIT
    while True:
        series = vm.export(match)
        if len(series) >= count or time.monotonic() > deadline:
            return series
        time.sleep(0.1)


def by_labels(series: list[dict], **labels) -> dict:
    hits = [s for s in series if all(s["metric"].get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, f"expected one series with {labels}, got {[s['metric'] for s in hits]}"
    return hits[0]


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def influx_sink(vm, **kw) -> TimeSeriesSink:
    return TimeSeriesSink(TimeSeriesConfig(backend="influxdb", url=vm.url, token="t", org="o", bucket="b", **kw))


async def test_positions_written_through_influxdb_client_are_read_back_from_victoria_metrics(vm):
    sink = influx_sink(vm)
    sweeper = {"vehicle": "京A·S0001", "type": "sweeper", "company": "Huanwei Co"}
    truck = {"vehicle": "京B·M0002", "type": "muck_truck", "company": "Tufang Ltd"}
    fixes = [
        (position_point(Position(39.90, 116.30, NOW, speed_kmh=12.5, course=90, device="013300000001",
                                 extras={"mileage_km": 120.5}), sweeper)),
        (position_point(Position(39.91, 116.31, NOW + timedelta(seconds=10), speed_kmh=14.0, course=91,
                                 device="013300000001"), sweeper)),
        (position_point(Position(39.80, 116.20, NOW, speed_kmh=55.0, course=180, device="013300000002",
                                 valid=False, history=True), truck)),
    ]
    for p in fixes:
        sink.write(p)
    assert await sink.flush() is True
    sink.close()
    assert sink.stats()["written"] == 3 and sink.stats()["buffered"] == 0

    series = export_until(vm, '{__name__=~"vehicle_position_.*", company=~"Huanwei Co|Tufang Ltd"}', 15)
    names = {s["metric"]["__name__"] for s in series}
    assert {"vehicle_position_lat", "vehicle_position_lon", "vehicle_position_speed_kmh", "vehicle_position_course",
            "vehicle_position_altitude_m", "vehicle_position_valid", "vehicle_position_history",
            "vehicle_position_mileage_km"} <= names

    speed = by_labels(series, __name__="vehicle_position_speed_kmh", vehicle="京A·S0001")
    assert speed["metric"] == {"__name__": "vehicle_position_speed_kmh", "vehicle": "京A·S0001", "type": "sweeper",
                               "company": "Huanwei Co", "terminal": "013300000001"}
    assert speed["values"] == [12.5, 14.0]
    assert speed["timestamps"] == [ms(NOW), ms(NOW + timedelta(seconds=10))]
    assert by_labels(series, __name__="vehicle_position_lat", vehicle="京B·M0002")["values"] == [39.80]
    assert by_labels(series, __name__="vehicle_position_valid", vehicle="京B·M0002")["values"] == [0]
    assert by_labels(series, __name__="vehicle_position_history", vehicle="京B·M0002")["values"] == [1]
    assert by_labels(series, __name__="vehicle_position_mileage_km", vehicle="京A·S0001")["values"] == [120.5]


async def test_readings_and_detection_counts_in_batches_through_run(vm):
    sink = influx_sink(vm, batch_size=4, flush_interval_ms=50)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    times = [NOW + timedelta(minutes=i) for i in range(10)]
    for i, t in enumerate(times):
        sink.write(reading_point(Reading("WL-vm-1", t, {"level_cm": 100.0 + i, "battery_v": 3.6},
                                         profile="generic-water-level-json")))
    dets = [Detection("car", 2, 0.9, (0, 0, 10, 10)), Detection("car", 2, 0.8, (20, 0, 30, 10)),
            Detection("person", 0, 0.7, (5, 5, 9, 9))]
    sink.write_many(detection_points("cam-vm-1", dets, NOW))
    deadline = time.monotonic() + WAIT
    while sink.stats()["written"] < 12 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, WAIT)
    assert sink.stats()["written"] == 12

    levels = export_until(vm, '{__name__="sensor_reading_level_cm", device="WL-vm-1"}', 1)
    assert levels[0]["metric"]["profile"] == "generic-water-level-json"
    assert levels[0]["values"] == [100.0 + i for i in range(10)]
    assert levels[0]["timestamps"] == [ms(t) for t in times]
    counts = export_until(vm, '{__name__="video_detections_count", camera="cam-vm-1"}', 2)
    assert {s["metric"]["label"]: s["values"] for s in counts} == {"car": [2], "person": [1]}


async def test_unreachable_influxdb_keeps_points_buffered_and_bounded():
    sink = TimeSeriesSink(TimeSeriesConfig(backend="influxdb", url=f"http://127.0.0.1:{free_port()}",
                                           batch_size=2, buffer_size=3, timeout_ms=2000))
    for i in range(3):
        sink.write(reading_point(Reading("WL-x", NOW + timedelta(seconds=i), {"level_cm": float(i)})))
    assert await sink.flush() is False
    assert sink.stats()["errors"] == 1 and sink.stats()["buffered"] == 3 and sink.stats()["written"] == 0
    sink.write(reading_point(Reading("WL-x", NOW + timedelta(seconds=9), {"level_cm": 9.0})))
    assert sink.stats()["dropped"] == 1 and sink.stats()["buffered"] == 3  # the oldest went, the newest stays
    assert [p.fields["level_cm"] for p in sink._buffer] == [1.0, 2.0, 9.0]
    sink.close()


async def test_sqlite_round_trip_with_query_and_retention(tmp_path):
    cfg = TimeSeriesConfig(sqlite_path="ts/points.sqlite3", retention_days=7)
    sink = TimeSeriesSink(cfg, data_dir=tmp_path)
    old = reading_point(Reading("RG-1", NOW - timedelta(days=30), {"rain_mm": 1.0}, profile="rain"))
    fixes = [position_point(Position(39.9 + i / 1000, 116.3, NOW + timedelta(seconds=i), speed_kmh=10.0 + i,
                                     device="T1"), {"vehicle": "京A1", "type": "sprinkler", "company": "C"})
             for i in range(3)]
    sink.write(old)
    sink.write_many(fixes)
    sink.write(reading_point(Reading("RG-1", NOW, {"rain_mm": 0.6, "rain_total_mm": 41.6}, profile="rain")))
    stop = asyncio.Event()
    stop.set()
    await sink.run(stop)  # a stopped run() still writes what is buffered, then closes
    assert (tmp_path / "ts" / "points.sqlite3").exists()

    reopened = TimeSeriesSink(cfg, data_dir=tmp_path)
    positions = reopened.query("vehicle_position")
    assert [p.fields["speed_kmh"] for p in positions] == [10.0, 11.0, 12.0]
    assert positions[0].tags == {"vehicle": "京A1", "type": "sprinkler", "company": "C", "terminal": "T1"}
    assert positions[0].time == NOW and positions[0].fields["valid"] is True
    assert [p.time for p in reopened.query("vehicle_position", since=NOW + timedelta(seconds=1))] == \
        [NOW + timedelta(seconds=1), NOW + timedelta(seconds=2)]
    assert len(reopened.query("vehicle_position", limit=1)) == 1
    rain = reopened.query("sensor_reading", tags={"device": "RG-1"})
    assert [p.fields for p in rain] == [{"rain_mm": 0.6, "rain_total_mm": 41.6}]  # the 30-day-old point is gone
    assert reopened.query("sensor_reading", tags={"device": "other"}) == []
    reopened.close()


def test_detection_points_count_per_label_and_points_are_checked():
    dets = [Detection("car", 2, 0.9, (0, 0, 1, 1))] * 3 + [Detection("truck", 7, 0.5, (0, 0, 1, 1))]
    points = detection_points("cam-1", dets, NOW)
    assert [(p.tags["label"], p.fields["count"]) for p in points] == [("car", 3), ("truck", 1)]
    assert detection_points("cam-1", [], NOW) == []
    with pytest.raises(ValueError, match="no fields"):
        Point("x", {}, {}, NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        Point("x", {}, {"v": 1}, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="'v': nan is not finite"):
        Point("x", {}, {"v": float("nan")}, NOW)
    with pytest.raises(ValueError, match="'v': list is not"):
        Point("x", {}, {"v": [1]}, NOW)
    # a NaN reading value means "no value": left out rather than poisoning a batch
    assert reading_point(Reading("D", NOW, {"a": float("nan"), "b": 2.0})).fields == {"b": 2.0}


def test_config_is_strict_and_checked():
    with pytest.raises(ValidationError, match="bucket_name"):
        TimeSeriesConfig(bucket_name="x")
    with pytest.raises(ValidationError, match="buffer_size"):
        TimeSeriesConfig(batch_size=10, buffer_size=5)


async def test_sqlite_store_is_bounded_by_max_points_across_a_restart(tmp_path):
    cfg = TimeSeriesConfig(sqlite_path="points.sqlite3", max_points=1000, batch_size=500)
    sink = TimeSeriesSink(cfg, data_dir=tmp_path)
    for i in range(2500):
        sink.write(reading_point(Reading("WL-1", NOW + timedelta(seconds=i), {"level_cm": float(i)})))
    assert await sink.flush()
    sink.close()  # 2,500 written within a minute: the bound is applied by the next prune

    restarted = TimeSeriesSink(cfg, data_dir=tmp_path)
    restarted.write(reading_point(Reading("WL-1", NOW + timedelta(seconds=2500), {"level_cm": 2500.0})))
    assert await restarted.flush()
    kept = restarted.query("sensor_reading")
    assert len(kept) == 1000 and restarted.stats()["pruned"] == 1501
    assert [p.fields["level_cm"] for p in kept[:2]] == [1501.0, 1502.0]  # the newest stay
    assert kept[-1].fields["level_cm"] == 2500.0
    restarted.close()


async def test_sqlite_keeps_a_redelivered_reading_once(tmp_path):
    """MQTT delivers at least once: the same reading twice (in one batch or two) is one point, the
    later copy kept, as VictoriaMetrics' deduplication does; other devices at the same time stay."""
    cfg = TimeSeriesConfig(sqlite_path="points.sqlite3")
    sink = TimeSeriesSink(cfg, data_dir=tmp_path)
    reading = Reading("WL-7", NOW, {"level_cm": 31.0}, profile="generic-water-level-json")
    sink.write_many([reading_point(reading), reading_point(reading)])
    sink.write(reading_point(Reading("WL-8", NOW, {"level_cm": 12.0}, profile="generic-water-level-json")))
    assert await sink.flush()
    sink.write(reading_point(Reading("WL-7", NOW, {"level_cm": 32.0}, profile="generic-water-level-json")))
    sink.write(reading_point(Reading("WL-7", NOW + timedelta(minutes=1), {"level_cm": 33.0},
                                     profile="generic-water-level-json")))
    assert await sink.flush()
    points = sink.query("sensor_reading")
    assert [(p.tags["device"], p.time, p.fields["level_cm"]) for p in points if p.tags["device"] == "WL-7"] == \
        [("WL-7", NOW, 32.0), ("WL-7", NOW + timedelta(minutes=1), 33.0)]
    assert len(points) == 3
    sink.close()


def test_an_sqlite_store_from_before_the_key_loses_its_repeats_once(tmp_path):
    import sqlite3

    path = tmp_path / "points.sqlite3"
    with sqlite3.connect(path) as db:  # the table as gateways before the key made it, a reading stored twice
        db.execute("CREATE TABLE points (measurement TEXT NOT NULL, time REAL NOT NULL, tags TEXT NOT NULL, "
                   "fields TEXT NOT NULL)")
        db.execute("CREATE INDEX points_measurement_time ON points (measurement, time)")
        row = ("sensor_reading", NOW.timestamp(), '{"device": "WL-7"}', '{"level_cm": 31.0}')
        db.executemany("INSERT INTO points VALUES (?, ?, ?, ?)", [row, row, (*row[:2], '{"device": "WL-8"}', row[3])])
    db.close()
    sink = TimeSeriesSink(TimeSeriesConfig(sqlite_path="points.sqlite3"), data_dir=tmp_path)
    assert sorted(p.tags["device"] for p in sink.query("sensor_reading")) == ["WL-7", "WL-8"]
    sink.close()
    with sqlite3.connect(path) as db:
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert indexes == {"points_key"}
