"""The deployment config: one YAML file describes a site's sources, rules and sinks.

`load_config(path)` returns a validated `GatewayConfig` or raises `ConfigError` carrying *every*
problem as `path: plain sentence` (e.g. `video.cameras[2].zones[0].polygon: a zone polygon needs
at least 3 points, got 2`). Unknown keys are errors, with the nearest known key suggested.
`${VAR}` and `${VAR:-default}` in string values are replaced from the environment (for secrets).
Relative file paths are relative to the config file's directory.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from core.schema import StrictModel, TimeZoneName, repeated
from detectors.sensor.config import SensorsConfig
from detectors.vehicle.config import FleetConfig
from detectors.video.config import CameraConfig, DetectorConfig
from gateway.patrol.config import PatrolConfig
from gateway.sinks.central_config import CentralConfig
from gateway.sinks.sink_config import MqttConfig, TimeSeriesConfig


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists `path: sentence` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


# -- sections the runtime owns ---------------------------------------------------------------------

class CasesConfig(StrictModel):
    catalog_files: list[str] = Field(default_factory=list, description="A city's own catalog YAML files, "
                                     "extending or overriding the shipped GB/T 30428 catalog.")
    grid: str | None = Field(None, description="Unit grid layer (GeoJSON polygons with grid_code, street, "
                             "community); empty = the shipped demo grid.")
    cooldown_s: float = Field(600.0, ge=0, description="A repeat of a cleared case within this many seconds "
                              "counts as a recurrence of it, not as a new case.")
    max_outbox: int = Field(100_000, ge=10, description="Most undelivered cases kept; an alert is raised at 80 %.")
    evidence_dir: str = Field("evidence", description="Folder for evidence files, relative to data_dir.")


class Jt808Config(StrictModel):
    enabled: bool = Field(False, description="Run the JT/T 808 TCP server for vehicle terminals.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(6808, ge=0, le=65535, description="TCP port terminals connect to.")
    accept_unknown: bool = Field(True, description="Accept terminals not in the fleet (and alert about a "
                                 "possible black truck) instead of refusing them.")
    idle_timeout_s: float = Field(180.0, gt=0, description="Close a connection silent for this long.")
    max_frame_bytes: int = Field(4096, ge=64, description="Drop a connection that sends a longer frame.")
    max_garbage_frames: int = Field(5, ge=1, description="Drop a connection after this many undecodable "
                                    "frames in a row.")
    backlog: int = Field(1024, ge=16, description="Listen backlog: how many terminals may be connecting "
                         "at once (a whole fleet reconnects together after a network outage).")
    auth_secret: str | None = Field(None, description="Secret mixed into the auth codes handed to terminals "
                                    "(e.g. ${CITYGATE_JT808_SECRET}); empty = derived from the gateway id "
                                    "only, which anyone who knows it can recompute.")


class ReplayFeed(StrictModel):
    file: str = Field(description="CSV file: vehicle positions (time,device,lon,lat[,speed_kmh,course,status,"
                      "alarm]) or sensor readings (time,device,<field>...).")
    speed: float = Field(1.0, ge=0, description="Replay speed factor; 0 = as fast as possible.")
    loop: bool = Field(False, description="Start again at the end (demo).")
    shift_to_now: bool = Field(True, description="Shift timestamps so the first row is 'now' (the "
                               "time of day is kept when false, so hour windows behave as recorded).")


class NmeaFeed(StrictModel):
    device: str = Field(description="Device id the positions carry: a fleet vehicle's `terminal`.")
    host: str | None = Field(None, description="NMEA-over-TCP receiver to connect to (with port).")
    port: int | None = Field(None, ge=1, le=65535, description="Its TCP port.")
    file: str | None = Field(None, description="Or an NMEA log file to read once (RMC/GGA sentences).")

    @model_validator(mode="after")
    def _one_transport(self) -> NmeaFeed:
        tcp = self.host is not None or self.port is not None
        if tcp == (self.file is not None):
            raise ValueError("give either host and port (a TCP receiver) or file (a log), not both or neither")
        if tcp and (self.host is None or self.port is None):
            raise ValueError("a TCP receiver needs both host and port")
        return self


class MqttSourceConfig(StrictModel):
    profiles: list[str] = Field(default_factory=list, description="Device profile names to subscribe to.")
    shared_group: str | None = Field(None, description="MQTT shared-subscription group ($share/<group>/...) "
                                     "to spread devices across gateway replicas.")


class VideoConfig(StrictModel):
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Object detector for all cameras.")
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras and their rules.")
    patrol: PatrolConfig | None = Field(None, description="Patrol mode (轮巡): visit an inventory of cameras in "
                                        "turn, one picture per visit; None: off.")


class VehiclesConfig(StrictModel):
    jt808: Jt808Config = Field(default_factory=Jt808Config, description="JT/T 808 terminal server.")
    fleet: FleetConfig = Field(default_factory=FleetConfig, description="Vehicles, routes, zones, sites, rules.")
    replay: list[ReplayFeed] = Field(default_factory=list, description="Recorded tracks to replay.")
    nmea: list[NmeaFeed] = Field(default_factory=list, description="GNSS receivers speaking NMEA 0183.")
    tick_s: float = Field(5.0, gt=0, description="How often time-based rules (offline, shift end) run.")


class SensorsSection(SensorsConfig):
    replay: list[ReplayFeed] = Field(default_factory=list, description="Recorded sensor series to replay.")


class WebConfig(StrictModel):
    enabled: bool = Field(True, description="Serve the status page and JSON API.")
    host: str = Field("127.0.0.1", description="Address of the status page.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the status page.")


class GatewayConfig(StrictModel):
    site: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="Site name: MQTT topic level and "
                      "default gateway id.")
    gateway_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of case ids, unique "
                                   "per gateway; empty = the site name.")
    timezone: TimeZoneName = Field("Asia/Shanghai", description="Local time zone of case times.")
    data_dir: str = Field("var", description="Folder for the outbox, case store, evidence and local time series.")
    profiles_dir: str | None = Field(None, description="Device profile folder; empty = device_profiles/ of the "
                                     "source checkout, else of the working directory (as in the Docker image).")
    cases: CasesConfig = Field(default_factory=CasesConfig, description="Case catalog, grid and dedup.")
    central: CentralConfig = Field(default_factory=CentralConfig, description="Central platform delivery.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT broker for alerts and device data.")
    mqtt_source: MqttSourceConfig = Field(default_factory=MqttSourceConfig, description="Devices over MQTT.")
    timeseries: TimeSeriesConfig = Field(default_factory=TimeSeriesConfig, description="Time-series storage.")
    video: VideoConfig = Field(default_factory=VideoConfig, description="Video patrol.")
    vehicles: VehiclesConfig = Field(default_factory=VehiclesConfig, description="Vehicle supervision.")
    sensors: SensorsSection = Field(default_factory=SensorsSection, description="Water and rain sensing.")
    web: WebConfig = Field(default_factory=WebConfig, description="Status page.")
    shutdown_deadline_s: float = Field(10.0, gt=0, description="On SIGTERM, how long draining may take.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    # resolved at load time, not part of the YAML
    _base_dir: Path = Path(".")

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def path(self, value: str) -> Path:
        """A config path value resolved against the config file's directory."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self._base_dir / p).resolve()

    @property
    def data_path(self) -> Path:
        return self.path(self.data_dir)

    @property
    def id(self) -> str:
        return self.gateway_id or self.site

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def profiles_path(self) -> Path:
        if self.profiles_dir:
            return self.path(self.profiles_dir)
        checkout = Path(__file__).resolve().parent.parent / "device_profiles"  # editable install / source tree
        return checkout if checkout.is_dir() else Path.cwd() / "device_profiles"


# -- loading -------------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(node: Any, where: str = "", problems: list[str] | None = None) -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string; an unset VAR without default is a problem."""
    problems = [] if problems is None else problems
    if isinstance(node, dict):
        return {k: interpolate_env(v, f"{where}.{k}" if where else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_env(v, f"{where}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                if m.group(2) is None:
                    problems.append(f"{where}: environment variable {m.group(1)} is not set")
                    return ""
                return m.group(2)
            return value
        return _ENV.sub(repl, node)
    return node


def format_location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found by walking `loc` (field names and list indexes) from `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _unwrap(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """list[X] / X | None / tuple[X, ...] → X (the first BaseModel inside), else the annotation."""
    for arg in typing.get_args(annotation):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _sentence(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required, but missing"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def describe_validation_error(exc: ValidationError, root: type[BaseModel] = GatewayConfig) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        line = f"{format_location(loc)}: {_sentence(error)}"
        if error["type"] == "extra_forbidden" and loc:
            parent = _model_at(root, loc[:-1])
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1, cutoff=0.6)
                line += f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(parent.model_fields)})"
        problems.append(line)
    return problems


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"(file): cannot read: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["(top level): expected a mapping of sections (site, video, vehicles, ...)"])
    problems: list[str] = []
    raw = interpolate_env(raw, "", problems)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), problems + describe_validation_error(exc)) from exc
    config._base_dir = path.resolve().parent
    problems += cross_check(config)
    if problems:
        raise ConfigError(str(path), problems)
    return config


def cross_check(config: GatewayConfig) -> list[str]:
    """Checks that need more than one section, or the files a config points at."""
    from gateway.catalog import Catalog, CatalogError
    from gateway.geo import GridError, GridIndex

    problems: list[str] = []
    try:
        catalog = Catalog.load([config.path(f) for f in config.cases.catalog_files])
    except CatalogError as exc:
        problems.append(f"cases.catalog_files: {exc}")
        catalog = None
    if config.cases.grid:
        try:
            GridIndex.load(config.path(config.cases.grid))
        except GridError as exc:
            problems.append(f"cases.grid: {exc}")

    def check_category(where: str, key: str | None) -> None:
        if key and catalog is not None and key not in catalog:
            close = difflib.get_close_matches(key, catalog.keys(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: {key!r} is not in the case catalog{hint}")

    twice = set(repeated(c.name for c in config.video.cameras))
    for i, camera in enumerate(config.video.cameras):
        if camera.name in twice:
            problems.append(f"video.cameras[{i}].name: camera name {camera.name!r} is used more than once")
        for j, rule in enumerate(camera.rules):
            check_category(f"video.cameras[{i}].rules[{j}].category", rule.category)
            for label, key in rule.class_categories.items():
                check_category(f"video.cameras[{i}].rules[{j}].class_categories.{label}", key)
        if "://" not in camera.url and not config.path(camera.url).exists():
            problems.append(f"video.cameras[{i}].url: video file {config.path(camera.url)} does not exist")
    if config.video.cameras:
        model = config.path(config.video.detector.model)
        if not model.exists():
            problems.append(f"video.detector.model: model file {model} does not exist")

    for name, rule in config.vehicles.fleet.rules:
        check_category(f"vehicles.fleet.rules.{name}.category", rule.category)
    for section, rules in (("level_rules", config.sensors.level_rules), ("rise_rules", config.sensors.rise_rules),
                           ("rain_rules", config.sensors.rain_rules)):
        for i, rule in enumerate(rules):
            check_category(f"sensors.{section}[{i}].category", rule.category)

    for i, feed in enumerate(config.vehicles.nmea):
        if feed.file and not config.path(feed.file).exists():
            problems.append(f"vehicles.nmea[{i}].file: {config.path(feed.file)} does not exist")
    feeds = [("vehicles.replay", f) for f in config.vehicles.replay] + [("sensors.replay", f)
                                                                         for f in config.sensors.replay]
    for i, (where, feed) in enumerate(feeds):
        if not config.path(feed.file).exists():
            problems.append(f"{where}[{i if where == 'vehicles.replay' else i - len(config.vehicles.replay)}].file: "
                            f"{config.path(feed.file)} does not exist")

    if config.mqtt_source.profiles or config.sensors.devices:
        from gateway.profiles import ProfileError, load_profiles

        try:
            profiles = load_profiles(config.profiles_path)
        except ProfileError as exc:
            problems.append(f"profiles_dir: {exc}")
            profiles = None
        if profiles is not None:
            for i, name in enumerate(config.mqtt_source.profiles):
                if name not in profiles:
                    problems.append(f"mqtt_source.profiles[{i}]: no device profile named {name!r} "
                                    f"(known: {', '.join(sorted(profiles))})")
            for i, device in enumerate(config.sensors.devices):
                if device.profile and device.profile not in profiles:
                    problems.append(f"sensors.devices[{i}].profile: no device profile named {device.profile!r}")
        if config.mqtt_source.profiles and not config.mqtt.enabled:
            problems.append("mqtt.host: mqtt_source.profiles are set but no MQTT broker is configured")
    return problems
