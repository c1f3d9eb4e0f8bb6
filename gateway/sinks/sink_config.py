"""Config sections of the MQTT alert sink (also used by the MQTT source) and the time-series sink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.schema import FieldError, StrictModel


class MqttConfig(StrictModel):
    """Connection to an MQTT broker (Mosquitto, EMQX, ...). No host means MQTT is off."""

    host: str | None = Field(None, description="Broker host name or IP; empty = MQTT disabled (demo).")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port (8883 is usual with TLS).")
    username: str | None = Field(None, description="User name for the broker, if it requires one.")
    password: str | None = Field(None, description="Password for the broker, if it requires one.")
    client_id: str | None = Field(
        None, description="MQTT client id; empty = generated. Must be unique per connection on the broker."
    )
    tls: bool = Field(False, description="Connect with TLS, verifying the broker with the system CA store.")
    topic_prefix: str = Field("citygate", description="First topic level of everything the gateway publishes.")
    qos: Literal[0, 1, 2] = Field(
        1, description="QoS of published alerts and of source subscriptions (those at most 1: a device message is "
        "acknowledged once the rules have it; 0 = the broker neither keeps nor redelivers device messages).",
    )
    keepalive: int = Field(30, ge=5, le=3600, description="Keep-alive interval in seconds.")
    timeout_s: float = Field(10.0, gt=0, description="How long one publish/subscribe may wait for the broker.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First wait before reconnecting after a failure.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest wait between reconnect attempts (backoff cap).")
    persistent_session: bool = Field(
        True, description="Device data (MQTT source): keep the subscription on the broker while the gateway is "
        "away, so QoS 1 messages published meanwhile arrive after it reconnects. Uses a stable client id "
        "(client_id, or citygate-<gateway id>).",
    )
    queue_size: int = Field(
        1000, ge=1,
        description="Alerts kept for publishing while the broker is away; when full the oldest is dropped.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.host)


class TimeSeriesConfig(StrictModel):
    """Where positions, readings and detection counts are stored as time series."""

    backend: Literal["sqlite", "influxdb"] = Field(
        "sqlite", description="sqlite = embedded local table (demo); influxdb = any InfluxDB v2 write API "
        "(InfluxDB 2.x, VictoriaMetrics, ...)."
    )
    sqlite_path: str = Field(
        "citygate-ts.sqlite3", description="SQLite file; a relative path is taken relative to the data directory."
    )
    retention_days: float = Field(7.0, gt=0, description="SQLite backend: points older than this are deleted.")
    max_points: int = Field(
        1_000_000, ge=1000, description="SQLite backend: most points kept (about 300 bytes each on disk); beyond it the "
        "oldest written are deleted, so a busy fleet cannot fill the disk within retention_days."
    )
    url: str = Field("http://localhost:8086", description="InfluxDB backend: base URL of the write API.")
    token: str = Field("", description="InfluxDB backend: API token (VictoriaMetrics ignores it).")
    org: str = Field("citygate", description="InfluxDB backend: organisation (VictoriaMetrics accepts any).")
    bucket: str = Field("citygate", description="InfluxDB backend: bucket (VictoriaMetrics accepts any).")
    batch_size: int = Field(500, ge=1, description="Points per write request / SQLite transaction.")
    flush_interval_ms: int = Field(1000, ge=10, description="Longest time a point waits in the buffer.")
    buffer_size: int = Field(
        100_000, ge=1, description="Points kept while the backend is unreachable; when full the oldest is dropped."
    )
    timeout_ms: int = Field(10_000, ge=100, description="InfluxDB backend: HTTP timeout of one write.")
    retry_min_s: float = Field(0.5, gt=0, description="First wait before retrying a failed write.")
    retry_max_s: float = Field(30.0, gt=0, description="Longest wait between write retries (backoff cap).")

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> TimeSeriesConfig:
        if self.buffer_size < self.batch_size:
            raise FieldError("buffer_size", f"buffer_size ({self.buffer_size}) must be >= batch_size ({self.batch_size})")
        return self
