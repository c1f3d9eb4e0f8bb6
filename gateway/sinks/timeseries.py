"""Every Position, Reading and detection count as a time-series point: InfluxDB API or local SQLite.

Measurements (tag values are strings; empty tags are left out):

    vehicle_position   tags: vehicle, type, company, terminal
                       fields: lat, lon, speed_kmh, course, altitude_m (float), valid, history (bool),
                               plus numeric Position.extras (mileage_km, fuel_l, ...) under their own names
    sensor_reading     tags: device, profile
                       fields: the reading's values (level_cm, rain_mm, battery_v, ...; floats)
    video_detections   tags: camera, label
                       fields: count (int): objects of that label in one analysed frame

VictoriaMetrics stores an InfluxDB point as series named ``<measurement>_<field>`` (e.g.
``vehicle_position_speed_kmh``) with the tags as labels; booleans become 1/0.

Backends:
- ``influxdb``: influxdb-client's synchronous write API, one request per batch, run in a thread so the
  event loop never blocks. Network errors and 5xx/429 answers are retried with exponential backoff
  while the points stay buffered; a 4xx answer (malformed data) drops that batch and counts it.
- ``sqlite`` (default, embedded, no service): one table ``points(measurement, time, tags, fields)``
  with tags/fields as JSON text, time as UNIX seconds, an index on (measurement, time); points older
  than ``retention_days`` are deleted, and beyond ``max_points`` the oldest written, at most once a
  minute. Both deletes walk an index (per measurement by time; by rowid, which grows with every insert),
  so a prune costs what it deletes, not the table size; the freed pages are reused, so the file stops
  growing. ``query()`` reads them back for the status page and tests.

The buffer is bounded (``buffer_size``): when the backend is away for long, the oldest points are
dropped and counted in ``stats["dropped"]``; the gateway keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import math
import sqlite3
import threading
import time as _time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from core.model import Detection, Position, Reading, require_aware
from gateway.aio import Backoff, wait_or_stop
from gateway.sinks.sink_config import TimeSeriesConfig

__all__ = ["Point", "TimeSeriesConfig", "TimeSeriesSink", "WriteRejected", "detection_points",
           "position_point", "reading_point"]

log = logging.getLogger(__name__)

FieldValue = float | int | bool | str


class _PointFields(NamedTuple):
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time: datetime


class Point(_PointFields):
    """One point, checked when made (not at write time: one bad value would otherwise get a whole batch
    rejected): an aware time and at least one field, each a number, bool or string, and finite.

    Immutable. A NamedTuple like core.model.Position, for the same reason: every reading and position
    makes one. `_of_observation` skips the checks for the points made here from an observation.
    """

    __slots__ = ()

    def __new__(cls, measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue],
                time: datetime) -> Point:
        require_aware(time, "Point.time")
        if not fields:
            raise ValueError(f"Point {measurement!r} at {time.isoformat()} has no fields")
        for key, value in fields.items():
            if not isinstance(value, bool | int | float | str):
                raise ValueError(f"Point {measurement!r} field {key!r}: {type(value).__name__} is not a "
                                 "number, bool or string")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Point {measurement!r} field {key!r}: {value} is not finite")
        return tuple.__new__(cls, (measurement, tags, fields, time))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Point:  # _replace goes through here: keep the checks
        return cls(*iterable)

    @classmethod
    def _of_observation(cls, measurement: str, tags: dict[str, str], fields: dict[str, FieldValue],
                        time: datetime) -> Point:
        """Unchecked: for fields that are finite floats (and bools) made from a Reading or Position,
        whose time is aware by construction. Still refuses a point without fields."""
        if not fields:
            raise ValueError(f"Point {measurement!r} at {time.isoformat()} has no fields")
        return tuple.__new__(cls, (measurement, tags, fields, time))


def _finite(fields: dict[str, FieldValue]) -> dict[str, FieldValue]:
    """NaN/inf mean 'no value': leave them out (time-series stores reject them)."""
    return {k: v for k, v in fields.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _tags(**tags: Any) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items() if v is not None and str(v) != ""}


def position_point(pos: Position, vehicle_tags: Mapping[str, str] | None = None) -> Point:
    """`vehicle_tags` comes from the vehicle registry: vehicle (plate/name), type, company."""
    vt = dict(vehicle_tags or {})
    fields: dict[str, FieldValue] = {
        "lat": float(pos.lat), "lon": float(pos.lon), "speed_kmh": float(pos.speed_kmh),
        "course": float(pos.course), "altitude_m": float(pos.altitude_m),
        "valid": bool(pos.valid), "history": bool(pos.history),
    }
    for key, value in pos.extras.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in fields:
            fields[key] = float(value)
    tags = _tags(vehicle=vt.get("vehicle") or pos.device, type=vt.get("type"), company=vt.get("company"),
                 terminal=vt.get("terminal") or pos.device)
    return Point._of_observation("vehicle_position", tags, _finite(fields), pos.time)


def reading_point(reading: Reading) -> Point:
    fields: dict[str, FieldValue] = {}
    for key, value in reading.values.items():
        value = float(value)
        if math.isfinite(value):  # NaN/inf mean 'no value' (see _finite)
            fields[key] = value
    return Point._of_observation("sensor_reading", _tags(device=reading.device, profile=reading.profile), fields,
                                 reading.time)


def detection_points(camera: str, detections: Iterable[Detection], t: datetime) -> list[Point]:
    """One point per label present in the frame (counts, not boxes: boxes would flood the store)."""
    counts = collections.Counter(d.label for d in detections)
    return [Point("video_detections", _tags(camera=camera, label=label), {"count": n}, t)
            for label, n in sorted(counts.items())]


class WriteRejected(Exception):
    """The backend refused a batch as malformed: retrying it would never succeed."""


_json_text = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(x, ensure_ascii=False), one encoder for all


class _SqliteBackend:
    PRUNE_EVERY_S = 60.0
    PRUNE_BATCH = 50_000  # rows one prune deletes at most, so a catch-up never holds the store for seconds
    ROWS_PER_INSERT = 200  # one INSERT of many rows: a batch runs a few statements, not one per point
    MAX_TAG_TEXTS = 100_000  # the JSON of the tag sets seen (one per device): encoded once, forgotten when full

    def __init__(self, path: Path, retention_days: float, max_points: int) -> None:
        self.path = path
        self.retention_s = retention_days * 86400.0
        self.max_points = max_points
        self.pruned = 0
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # writes come from a worker thread, queries from anywhere
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS points (measurement TEXT NOT NULL, time REAL NOT NULL, "
                         "tags TEXT NOT NULL, fields TEXT NOT NULL)")
        self._key_points()
        self._last_prune = 0.0
        self._tag_texts: dict[tuple[tuple[str, str], ...], str] = {}  # used by row(), on the loop's thread

    def _key_points(self) -> None:
        """One row per measurement, tag set and time: a reading delivered twice (MQTT is at least once) is
        stored once, the later copy kept, as VictoriaMetrics' deduplication does. The key's index also
        serves queries by measurement and time. A store from before the key loses its repeats once."""
        indexes = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'points'")}
        if "points_key" in indexes:
            return
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM points WHERE rowid NOT IN "
                             "(SELECT MAX(rowid) FROM points GROUP BY measurement, time, tags)")
            self._db.execute("CREATE UNIQUE INDEX points_key ON points (measurement, time, tags)")
            self._db.execute("DROP INDEX IF EXISTS points_measurement_time")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def row(self, p: Point) -> tuple[str, float, str, str]:
        """The point as the table's row, made when it is buffered. Strings and a float: the garbage
        collector stops tracking the row, where a buffer of Points (and their dicts) waiting for the next
        flush would be promoted to its oldest generation and bring on full collections."""
        tags = tuple(p.tags.items())
        tags_text = self._tag_texts.get(tags)
        if tags_text is None:
            if len(self._tag_texts) >= self.MAX_TAG_TEXTS:
                self._tag_texts.clear()
            tags_text = self._tag_texts[tags] = _json_text(dict(p.tags))
        return p.measurement, p.time.timestamp(), tags_text, _json_text(dict(p.fields))

    def write(self, rows: Sequence[tuple[str, float, str, str]]) -> None:
        values = [value for row in rows for value in row]  # one after the other, for the multi-row INSERTs
        with self._lock:
            self._db.execute("BEGIN")
            try:
                step = 4 * self.ROWS_PER_INSERT
                for i in range(0, len(values), step):
                    chunk = values[i:i + step]
                    self._db.execute(_insert_rows(len(chunk) // 4), chunk)
                now = _time.time()
                if now - self._last_prune > self.PRUNE_EVERY_S and not self._prune(now):
                    self._last_prune = now  # caught up; otherwise the next write goes on pruning
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _prune(self, now: float) -> bool:
        """Delete points older than the retention, then the oldest beyond `max_points` (in the
        caller's transaction), at most PRUNE_BATCH rows each; True when there is more to delete.
        Rowids only grow (the newest row is never deleted), so max - min + 1 bounds the row count
        without counting."""
        deleted, more = 0, False
        measurements = [m for (m,) in self._db.execute(
            "WITH RECURSIVE m(name) AS (SELECT MIN(measurement) FROM points UNION ALL SELECT "
            "(SELECT MIN(measurement) FROM points WHERE measurement > m.name) FROM m WHERE m.name IS NOT NULL) "
            "SELECT name FROM m WHERE name IS NOT NULL")]  # distinct values by index skips, not a scan
        for measurement in measurements:
            n = self._db.execute("DELETE FROM points WHERE rowid IN (SELECT rowid FROM points WHERE measurement = ?"
                                 " AND time < ? LIMIT ?)",
                                 (measurement, now - self.retention_s, self.PRUNE_BATCH)).rowcount
            deleted += n
            more |= n == self.PRUNE_BATCH
        # two queries: SQLite answers a lone MIN or MAX of the rowid from the b-tree's ends, both at once by a scan
        low = self._db.execute("SELECT MIN(rowid) FROM points").fetchone()[0]
        high = self._db.execute("SELECT MAX(rowid) FROM points").fetchone()[0]
        if high is not None and high - low + 1 > self.max_points:
            upto = min(high - self.max_points, low + self.PRUNE_BATCH - 1)
            deleted += self._db.execute("DELETE FROM points WHERE rowid <= ?", (upto,)).rowcount
            more |= upto < high - self.max_points
        self.pruned += deleted
        return more

    def query(self, measurement: str, since: datetime | None, tags: Mapping[str, str] | None,
              limit: int) -> list[Point]:
        start = since.timestamp() if since else float("-inf")
        with self._lock:
            rows = self._db.execute(
                "SELECT time, tags, fields FROM points WHERE measurement = ? AND time >= ? ORDER BY time",
                (measurement, start)).fetchall()
        out = []
        for t, tags_json, fields_json in rows:
            point_tags = json.loads(tags_json)
            if tags and any(point_tags.get(k) != v for k, v in tags.items()):
                continue
            out.append(Point(measurement, point_tags, json.loads(fields_json), datetime.fromtimestamp(t, UTC)))
        return out[-limit:] if limit else out

    def close(self) -> None:
        with self._lock:
            self._db.close()


@functools.lru_cache(maxsize=8)
def _insert_rows(n: int) -> str:
    return "INSERT OR REPLACE INTO points VALUES " + ", ".join(["(?, ?, ?, ?)"] * n)


class _InfluxBackend:
    def __init__(self, cfg: TimeSeriesConfig) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.cfg = cfg
        # retries=False: our own loop retries, with the points still in the bounded buffer
        self._client = InfluxDBClient(url=cfg.url, token=cfg.token, org=cfg.org, timeout=cfg.timeout_ms,
                                      retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @staticmethod
    def row(p: Point) -> Point:
        return p

    def write(self, points: Sequence[Point]) -> None:
        from influxdb_client import Point as InfluxPoint
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        records = []
        for p in points:
            rec = InfluxPoint(p.measurement).time(p.time, WritePrecision.MS)
            for k, v in p.tags.items():
                rec.tag(k, v)
            for k, v in p.fields.items():
                rec.field(k, v)
            records.append(rec)
        try:
            self._write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=records,
                                  write_precision=WritePrecision.MS)
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429):
                raise WriteRejected(f"HTTP {exc.status}: {(exc.body or exc.reason or '')[:300]}") from exc
            raise

    def close(self) -> None:
        self._write_api.close()
        self._client.close()


class TimeSeriesSink:
    """Buffers points and writes them in batches; `run()` flushes every `flush_interval_ms`."""

    name = "timeseries"

    def __init__(self, config: TimeSeriesConfig, data_dir: str | Path = ".") -> None:
        self.config = config
        if config.backend == "sqlite":
            path = Path(config.sqlite_path)
            if str(path) != ":memory:" and not path.is_absolute():
                path = Path(data_dir) / path
            self._backend: _SqliteBackend | _InfluxBackend = _SqliteBackend(path, config.retention_days,
                                                                             config.max_points)
            self.where = f"sqlite {path}"
        else:
            self._backend = _InfluxBackend(config)
            self.where = f"influxdb {config.url} bucket {config.bucket}"
        self._buffer: collections.deque[Any] = collections.deque()  # the backend's rows of the points
        self._buffer_size, self._batch_size = config.buffer_size, config.batch_size  # read per point: plain copies
        self._flush_lock = asyncio.Lock()
        self._full = asyncio.Event()
        self._backoff = Backoff(config.retry_min_s, config.retry_max_s)
        self._retry_at = 0.0  # monotonic time before which run() does not retry a failed backend
        self.counters: dict[str, int] = {"written": 0, "buffered": 0, "dropped": 0, "rejected": 0, "errors": 0,
                                      "pruned": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def write(self, point: Point) -> None:
        """Buffer one point (never blocks); the oldest point is dropped when the buffer is full."""
        if len(self._buffer) >= self._buffer_size:
            self._buffer.popleft()
            self.counters["dropped"] += 1
            if self.counters["dropped"] == 1 or self.counters["dropped"] % 10_000 == 0:
                log.warning("time-series buffer full (%d points, %s): dropping the oldest, %d dropped so far",
                            self._buffer_size, self.where, self.counters["dropped"])
        self._buffer.append(self._backend.row(point))
        self.counters["buffered"] = len(self._buffer)
        if len(self._buffer) >= self._batch_size:
            self._full.set()

    def write_many(self, points: Iterable[Point]) -> None:
        for p in points:
            self.write(p)

    async def flush(self) -> bool:
        """Write everything buffered now. False when the backend failed (the points stay buffered)."""
        async with self._flush_lock:
            while self._buffer:
                n = min(len(self._buffer), self.config.batch_size)
                batch = [self._buffer.popleft() for _ in range(n)]
                try:
                    await asyncio.to_thread(self._backend.write, batch)
                except WriteRejected as exc:
                    self.counters["rejected"] += len(batch)
                    log.error("time series (%s) rejected a batch of %d points, dropped: %s", self.where, n, exc)
                except Exception as exc:  # network, HTTP 5xx, disk: keep the points and retry later
                    self._requeue(batch)
                    self.counters["errors"] += 1
                    delay = self._backoff.next()
                    self._retry_at = _time.monotonic() + delay
                    log.warning("time series (%s) write of %d points failed: %s; retrying in %.1f s",
                                self.where, n, exc, delay)
                    return False
                else:
                    self.counters["written"] += n
                    self.counters["pruned"] = getattr(self._backend, "pruned", 0)
                    self._backoff.reset()
                finally:
                    self.counters["buffered"] = len(self._buffer)
            return True

    def _requeue(self, batch: list[Any]) -> None:
        self._buffer.extendleft(reversed(batch))
        while len(self._buffer) > self.config.buffer_size:
            self._buffer.popleft()
            self.counters["dropped"] += 1

    async def run(self, stop_event: asyncio.Event) -> None:
        """Flush on every interval or full batch until stopped, then a last flush and close."""
        interval = self.config.flush_interval_ms / 1000.0
        try:
            while not stop_event.is_set():
                full_wait = asyncio.create_task(self._full.wait())
                stop_wait = asyncio.create_task(stop_event.wait())
                await asyncio.wait({full_wait, stop_wait}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                full_wait.cancel()
                stop_wait.cancel()
                self._full.clear()
                pause = self._retry_at - _time.monotonic()
                if pause > 0 and await wait_or_stop(stop_event, pause):
                    break
                await self.flush()
            if self._buffer and not await self.flush():
                log.error("time series (%s): %d points not written at shutdown", self.where, len(self._buffer))
        finally:
            self.close()

    def query(self, measurement: str, since: datetime | None = None, *, tags: Mapping[str, str] | None = None,
              limit: int = 0) -> list[Point]:
        """Points of one measurement from `since` on, oldest first (sqlite backend only).
        `tags` keeps points whose tags include these values; `limit` keeps the newest `limit`.
        Reading back is a feature of the embedded store; an InfluxDB deployment queries InfluxDB."""
        if not isinstance(self._backend, _SqliteBackend):
            raise TypeError(f"query() reads the embedded sqlite store; this sink writes to {self.where}")
        return self._backend.query(measurement, since, tags, limit)

    def close(self) -> None:
        self._backend.close()

