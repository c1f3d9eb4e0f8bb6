"""The deployment config: one YAML file describes a site's sources, rules and sinks.

`load_config(path)` returns a validated `GatewayConfig` (the schema and the checks within it; the
files it points at are loaded by `gateway.deployment.load_deployment`) or raises `ConfigError` carrying
*every* problem as `path: plain sentence` (e.g. `video.cameras[2].zones[0].polygon: a zone polygon needs
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

from core.schema import FieldError, StrictModel, TimeZoneName, repeated
from detectors.sensor.config import SensorsConfig
from detectors.vehicle.config import FleetConfig
from detectors.video.config import CameraConfig, DetectorConfig
from gateway.patrol.config import PatrolConfig, PatrolShard
from gateway.sinks.central_config import CentralConfig
from gateway.sinks.sink_config import MqttConfig, TimeSeriesConfig
from gateway.sources.ingest_config import HttpIngestConfig, ModbusDeviceConfig


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists `path: sentence` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


# -- sections the runtime owns ---------------------------------------------------------------------

DispatchMode = Literal["auto", "review"]


class ReviewConfig(StrictModel):
    """Review before dispatch: which rules' cases wait for an operator before the central platform
    hears of them. A held case is committed like any other (never lost) but sent only once an
    operator confirms it in the console or with `citygate cases confirm`; a rejected one never is."""

    default: DispatchMode = Field("auto", description="Mode of every rule not named in rules: auto (sent at "
                                  "once) or review (held until an operator confirms or rejects it).")
    rules: dict[str, DispatchMode] = Field(default_factory=dict, description="Mode per rule name (the alert's "
                                           "rule, e.g. a camera rule's name), overriding default.")


class CasesConfig(StrictModel):
    catalog_files: list[str] = Field(default_factory=list, description="A city's own catalog YAML files, "
                                     "extending or overriding the shipped GB/T 30428 catalog.")
    grid: str | None = Field(None, description="Unit grid layer (GeoJSON polygons with grid_code, street, "
                             "community); empty = the shipped demo grid.")
    cooldown_s: float = Field(600.0, ge=0, description="A repeat of a cleared case within this many seconds "
                              "counts as a recurrence of it, not as a new case.")
    max_outbox: int = Field(100_000, ge=10, description="Most undelivered cases kept; an alert is raised at 80 %.")
    evidence_dir: str = Field("evidence", description="Folder for evidence files, relative to data_dir.")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="Review before dispatch, per rule: "
                                 "auto or review.")


class EvidenceRetentionConfig(StrictModel):
    """How long evidence files stay on disk, and when the data directory counts as nearly full.

    Only evidence of cases the central platform acknowledged (or, with no central platform, cases
    stored locally) is ever deleted; evidence of cases waiting for delivery or dead-lettered stays."""

    keep_days: float = Field(30.0, gt=0, description="Evidence of delivered (or locally stored) cases older "
                             "than this many days is deleted.")
    max_disk_gb: float | None = Field(None, gt=0, description="Most space the evidence folder may take; above "
                                      "it the oldest delivered evidence is deleted first. Empty = no fixed cap.")
    min_free_percent: float = Field(10.0, ge=0, lt=100, description="While the data directory's file system "
                                    "has less than this share free, the oldest delivered evidence is deleted "
                                    "as if over the cap.")
    sweep_s: float = Field(300.0, gt=0, description="How often the retention sweep runs, seconds.")
    alert_free_percent: float = Field(5.0, ge=0, lt=50, description="Raise the critical alert disk_nearly_full "
                                      "below this share of free space; it clears at twice the share.")
    disk_check_s: float = Field(30.0, gt=0, description="How often the free space is read, seconds.")


class Jt808Config(StrictModel):
    enabled: bool = Field(False, description="Run the JT/T 808 TCP server for vehicle terminals.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(6808, ge=0, le=65535, description="TCP port terminals connect to.")
    accept_unknown: bool = Field(True, description="Let terminals not in the fleet register and authenticate "
                                 "(their positions are flagged as a possible black truck, never taken for a fleet "
                                 "vehicle) instead of refusing them.")
    idle_timeout_s: float = Field(180.0, gt=0, description="Close a connection silent for this long.")
    max_frame_bytes: int = Field(4096, ge=64, description="Drop a connection that sends a longer frame.")
    max_garbage_frames: int = Field(5, ge=1, description="Drop a connection after this many undecodable "
                                    "frames in a row.")
    backlog: int = Field(1024, ge=16, description="Listen backlog: how many terminals may be connecting "
                         "at once (a whole fleet reconnects together after a network outage).")
    auth_secret: str | None = Field(None, description="Secret mixed into the auth codes configured for fleet "
                                    "terminals (e.g. ${CITYGATE_JT808_SECRET}), which a terminal that never "
                                    "registered here may authenticate with (a registration hands out a random "
                                    "code instead); empty = derived from the gateway id only, which anyone who "
                                    "knows it can recompute.")
    auth_timeout_s: float = Field(30.0, gt=0, description="Close a connection that has not authenticated "
                                  "(0x0102) within this many seconds.")
    max_auth_failures: int = Field(3, ge=1, description="Close a connection after this many wrong auth codes.")
    max_connections: int = Field(10_000, ge=1, description="Most open terminal connections; never more than the "
                                 "open-file limit leaves room for (raise LimitNOFILE for big fleets). At the limit "
                                 "the oldest connection that has not authenticated makes room, else a new one is "
                                 "refused.")
    max_connections_per_address: int = Field(256, ge=1, description="Most open connections from one source "
                                             "address (terminals behind one carrier NAT share an address).")
    max_pending_packet_bytes: int = Field(65_536, ge=1024, description="Most subpackage bytes a connection may "
                                          "hold while a long message is reassembled; over it, it is closed.")
    unknown_per_connection: int = Field(1, ge=0, description="Terminals not in the fleet that one connection "
                                        "may register (with accept_unknown).")
    unknown_per_address_per_min: float = Field(10.0, ge=0, description="Registrations of terminals not in the "
                                               "fleet allowed per source address and minute (with accept_unknown).")
    registrations_per_connection: int = Field(3, ge=1, description="Registrations (0x0100) one connection may "
                                              "try; one more closes it. A terminal registers once, then "
                                              "authenticates with its code.")
    registrations_per_address_per_min: float = Field(10.0, gt=0, description="Registrations allowed per source "
                                                     "address and minute (this many saved up); more close the "
                                                     "connection.")
    log_interval_s: float = Field(60.0, gt=0, description="A repeated connection problem (refusals, failed "
                                  "authentications, accept errors) is logged once per this many seconds.")
    command_ttl_s: float = Field(3600.0, gt=0, description="A platform command (driver text, position query, "
                                 "parameters) for a terminal that is not connected waits this long for it to "
                                 "authenticate again; then it expires unsent.")
    command_reply_timeout_s: float = Field(60.0, gt=0, description="A sent command without the terminal's answer "
                                           "(0x0001 / 0x0201) after this many seconds has failed.")
    max_commands: int = Field(10_000, ge=1, description="Commands whose state is kept in memory (the oldest "
                              "finished are forgotten first; when all are pending a new one is refused).")
    max_queued_commands: int = Field(32, ge=1, description="Commands that may wait for one terminal.")
    packet_timeout_s: float = Field(10.0, gt=0, description="When the subpackages of a long message stop coming "
                                    "for this long, ask the terminal for the missing ones (0x8003).")
    packet_retries: int = Field(2, ge=0, description="Retransmit requests per message before its subpackages "
                                "are dropped.")


class ReplayFeed(StrictModel):
    file: str = Field(description="CSV file: vehicle positions (time,device,lon,lat[,speed_kmh,course,status,"
                      "alarm]) or sensor readings (time,device,<field>...).")
    speed: float = Field(1.0, ge=0, description="Replay speed factor; 0 = as fast as possible.")
    loop: bool = Field(False, description="Start again at the end (demo).")
    shift_to_now: bool = Field(True, description="Shift timestamps so the first row is 'now'. When false the "
                               "recording keeps its own times (cases, time series and hour windows see them) "
                               "and its devices' time-based rules (offline, shift end, rain windows) run on "
                               "the recording's clock, not the wall clock.")


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
            raise FieldError("port" if self.port is None else "host", "a TCP receiver needs both host and port")
        return self


class MqttPartition(PatrolShard):
    """The same stable hash as patrol shards (`gateway.patrol.inventory.shard_of`), over device ids."""

    index: int = Field(ge=0, description="This replica's share, 0 .. count-1.")
    count: int = Field(ge=1, description="How many gateway replicas split the devices.")


class MqttSourceConfig(StrictModel):
    profiles: list[str] = Field(default_factory=list, description="Device profile names to subscribe to.")
    partition: MqttPartition | None = Field(None, description="{index: i, count: n}: this replica takes the "
                                            "devices whose stable hash of the id falls in share i of n (each "
                                            "device's readings all reach one replica, so its rule state is whole). "
                                            "Listed devices are subscribed one topic each; profiles whose topic "
                                            "carries no device id are subscribed whole and filtered on receipt.")
    shared_group: str | None = Field(None, description="MQTT shared-subscription group ($share/<group>/...) "
                                     "to spread devices across gateway replicas. Only with a broker that hands "
                                     "a device's messages to one member (EMQX `shared_subscription_strategy = "
                                     "hash_topic`): Mosquitto's round robin splits a device across replicas.")
    max_held: int = Field(1_000, ge=2, le=1_000_000,
                          description="Messages received and not yet handled at most: at this many the source "
                                      "stops reading until half are handled, and the rest waits in the broker "
                                      "(what a backlog can cost the gateway in memory is bounded by it).")

    @model_validator(mode="after")
    def _one_way_to_split(self) -> MqttSourceConfig:
        if self.partition is not None and self.shared_group:
            raise FieldError("shared_group", "use partition or shared_group, not both: a shared group inside "
                             "a partition would split its devices again")
        return self


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
    modbus: list[ModbusDeviceConfig] = Field(default_factory=list, description="Modbus TCP devices to poll.")
    http_ingest: HttpIngestConfig = Field(default_factory=HttpIngestConfig, description="Uplinks pushed over "
                                          "HTTP by IoT platforms (NB-IoT devices).")


ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may
WebRole = Literal["viewer", "operator", "admin"]


class WebUser(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="Login name.")
    role: WebRole = Field(description="viewer (read), operator (act on cases), admin (everything).")
    password_hash: str = Field(pattern=r"^\$argon2(id|i|d)\$", description="Argon2 hash of the password, "
                               "as printed by `citygate user add NAME --role R`; never the password itself.")


class WebToken(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="Who uses the token (shown in the log).")
    role: WebRole = Field("viewer", description="What the token may do, as for users.")
    token: str = Field(min_length=24, description="Bearer token for machines (e.g. ${CITYGATE_API_TOKEN}); "
                       "at least 24 characters.")


def is_loopback(host: str) -> bool:
    """True when `host` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebConfig(StrictModel):
    enabled: bool = Field(True, description="Serve the operator console and JSON API.")
    host: str = Field("127.0.0.1", description="Address of the console; beyond loopback needs users or tokens.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the console.")
    users: list[WebUser] = Field(default_factory=list, description="Console users with their roles.")
    users_file: str | None = Field(None, description="File of users kept by `citygate user add` (lines "
                                   "`name:role:argon2-hash`), in addition to `users`.")
    tokens: list[WebToken] = Field(default_factory=list, description="API tokens for machines (Bearer).")
    metrics_token: str | None = Field(None, min_length=16, description="Bearer token Prometheus may use for "
                                      "/metrics only; users and API tokens may read it too.")
    secure_cookies: bool = Field(False, description="Mark the session cookie Secure (set when the console is "
                                 "behind TLS, e.g. a reverse proxy).")
    session_ttl_s: float = Field(8 * 3600.0, gt=0, description="A session ends this long after login.")
    login_attempts: int = Field(5, ge=1, description="Failed logins allowed per user, and twice as many per "
                                "address, within login_window_s; more are refused with 429.")
    login_window_s: float = Field(300.0, gt=0, description="Window of the login rate limit.")
    max_connections: int = Field(256, ge=1, description="Open connections to the console at most; more are "
                                 "closed at once and counted (a flood of idle sockets cannot exhaust the "
                                 "process's open files).")
    max_connections_per_address: int = Field(64, ge=1, description="Open connections from one address at most.")
    map_tiles: str | None = Field(None, description="Tile URL template of the deployment's own tile server "
                                  "(e.g. http://tiles.local/{z}/{x}/{y}.png); empty = no tiles, the map draws "
                                  "the config's layers on a plain background (nothing is fetched from outside).")
    map_tiles_crs: Literal["wgs84", "gcj02"] = Field("wgs84", description="Coordinate system of those tiles: "
                                                     "gcj02 for most Chinese web maps; every layer is converted to it.")
    map_attribution: str = Field("", description="Attribution shown for the tiles.")

    @model_validator(mode="after")
    def _credentials_beyond_loopback(self) -> WebConfig:
        if self.enabled and not is_loopback(self.host) and not (self.users or self.users_file or self.tokens):
            raise ValueError(
                f"the console would listen on {self.host}, beyond this machine, with no user or token: add "
                "web.users or web.users_file (`citygate user add NAME --role admin`) or web.tokens, or bind "
                "web.host to 127.0.0.1")
        names = repeated([u.name for u in self.users] + [t.name for t in self.tokens])
        if names:
            raise ValueError(f"user and token names must be unique; repeated: {', '.join(names)}")
        return self


class GatewayConfig(StrictModel):
    site: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="Site name: MQTT topic level and "
                      "default gateway id.")
    gateway_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of case ids, unique "
                                   "per gateway; empty = the site name.")
    timezone: TimeZoneName = Field("Asia/Shanghai", description="Local time zone of case times.")
    data_dir: str = Field("var", description="Folder for the outbox, case store, evidence and local time series.")
    profiles_dir: str | None = Field(None, description="Device profile folder; empty = the device_profiles/ shipped "
                                     "with citygate (source checkout or installed package), else of the working "
                                     "directory.")
    cases: CasesConfig = Field(default_factory=CasesConfig, description="Case catalog, grid and dedup.")
    evidence: EvidenceRetentionConfig = Field(default_factory=EvidenceRetentionConfig,
                                              description="Evidence retention and the low-disk alert.")
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

    @model_validator(mode="before")
    @classmethod
    def _inherit_timezone(cls, raw: Any) -> Any:
        """Section time zones (fleet, video rule schedules) default to the top-level `timezone`."""
        if not isinstance(raw, dict):
            return raw
        tz = raw.get("timezone", cls.model_fields["timezone"].default)
        vehicles = raw.setdefault("vehicles", {})
        fleet = vehicles.setdefault("fleet", {}) if isinstance(vehicles, dict) else None
        if isinstance(fleet, dict):
            fleet.setdefault("timezone", tz)
        video = raw.get("video")
        cameras = video.get("cameras") if isinstance(video, dict) else None
        for camera in cameras if isinstance(cameras, list) else ():
            rules = camera.get("rules") if isinstance(camera, dict) else None
            for rule in rules if isinstance(rules, list) else ():
                if isinstance(rule, dict) and isinstance(rule.get("schedule"), dict):
                    rule["schedule"].setdefault("timezone", tz)
        return raw

    def path(self, value: str) -> Path:
        """A config path value resolved against the config file's directory."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self._base_dir / p).resolve()

    @property
    def data_path(self) -> Path:
        return self.path(self.data_dir)

    @property
    def evidence_path(self) -> Path:
        """Where the case desk writes evidence: data_dir/<cases.evidence_dir>/<yyyymmdd>/<case_id>/."""
        return self.data_path / self.cases.evidence_dir

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
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # a model validator naming the field it judged
            loc += cause.loc
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
    if problems:
        raise ConfigError(str(path), problems)
    return config
