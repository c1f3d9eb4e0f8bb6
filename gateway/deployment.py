"""A whole deployment, loaded once: the validated config plus the files it points at (case catalog,
unit grid, device profiles). `citygate check` validates exactly the objects that `citygate run`
then uses, so nothing is parsed twice and nothing the check accepted can fail later.

`load_deployment(path)` raises `ConfigError` listing every problem as `path: sentence`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from core.schema import repeated
from gateway.catalog import Catalog, CatalogError
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.geo import GridError, GridIndex
from gateway.patrol.build import patrol_share
from gateway.patrol.inventory import InventoryError, PatrolCamera
from gateway.profiles import DeviceProfile, ProfileError, load_profiles
from gateway.review import review_problems
from gateway.sources.ingest_config import check_ingest


def demo_grid_path() -> Path:
    return Path(str(resources.files("gateway").joinpath("data/demo_grid.geojson")))


@dataclass(frozen=True)
class Deployment:
    config: GatewayConfig
    catalog: Catalog
    grid: GridIndex
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)  # only when a section uses them
    patrol_cameras: list[PatrolCamera] = field(default_factory=list)  # this box's share of video.patrol


def load_deployment(path: str | Path) -> Deployment:
    config = load_config(path)  # schema errors stop here: the files below need a well-formed config
    problems: list[str] = []
    catalog = _catalog(config, problems)
    grid = _grid(config, problems)
    profiles = _profiles(config, problems)
    patrol_cameras = _patrol_cameras(config, problems)
    if catalog is not None:
        problems += _category_problems(config, catalog)
    problems += _file_problems(config)
    problems += review_problems(config)
    if problems:
        raise ConfigError(str(path), problems)
    assert catalog is not None and grid is not None
    return Deployment(config, catalog, grid, profiles, patrol_cameras)


def _catalog(config: GatewayConfig, problems: list[str]) -> Catalog | None:
    try:
        return Catalog.load([config.path(f) for f in config.cases.catalog_files])
    except CatalogError as exc:
        problems.append(f"cases.catalog_files: {exc}")
        return None


def _grid(config: GatewayConfig, problems: list[str]) -> GridIndex | None:
    try:
        return GridIndex.load(config.path(config.cases.grid) if config.cases.grid else demo_grid_path())
    except GridError as exc:
        problems.append(f"cases.grid: {exc}")
        return None


def _profiles(config: GatewayConfig, problems: list[str]) -> dict[str, DeviceProfile]:
    if not (config.mqtt_source.profiles or config.sensors.devices or config.sensors.modbus
            or config.sensors.http_ingest.enabled):
        return {}
    try:
        profiles = load_profiles(config.profiles_path)
    except ProfileError as exc:
        problems.append(f"profiles_dir: {exc}")
        return {}
    for i, name in enumerate(config.mqtt_source.profiles):
        if name not in profiles:
            problems.append(f"mqtt_source.profiles[{i}]: no device profile named {name!r} "
                            f"(known: {', '.join(sorted(profiles))})")
        elif profiles[name].transport != "mqtt":
            problems.append(f"mqtt_source.profiles[{i}]: {name!r} is a {profiles[name].transport} profile")
    for i, device in enumerate(config.sensors.devices):
        if device.profile and device.profile not in profiles:
            problems.append(f"sensors.devices[{i}].profile: no device profile named {device.profile!r}")
    problems += check_ingest(config.sensors.modbus, {d.id: d.profile for d in config.sensors.devices}, profiles)
    return profiles


def _patrol_cameras(config: GatewayConfig, problems: list[str]) -> list[PatrolCamera]:
    if config.video.patrol is None:
        return []
    try:
        return patrol_share(config)
    except InventoryError as exc:
        problems += [f"video.patrol.inventory: {p}" for p in exc.problems]
        return []


def _category_problems(config: GatewayConfig, catalog: Catalog) -> list[str]:
    problems: list[str] = []

    def check(where: str, key: str | None) -> None:
        if key and key not in catalog:
            close = difflib.get_close_matches(key, catalog.keys(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: {key!r} is not in the case catalog{hint}")

    for i, camera in enumerate(config.video.cameras):
        for j, rule in enumerate(camera.rules):
            check(f"video.cameras[{i}].rules[{j}].category", rule.category)
            for label, key in rule.class_categories.items():
                check(f"video.cameras[{i}].rules[{j}].class_categories.{label}", key)
        if camera.checkpoint is not None:
            check(f"video.cameras[{i}].checkpoint.category", camera.checkpoint.category)
    for name, preset in (config.video.patrol.presets.items() if config.video.patrol else ()):
        for j, rule in enumerate(preset.rules):
            check(f"video.patrol.presets.{name}.rules[{j}].category", rule.category)
            for label, key in rule.class_categories.items():
                check(f"video.patrol.presets.{name}.rules[{j}].class_categories.{label}", key)
    for name, rule in config.vehicles.fleet.rules:
        check(f"vehicles.fleet.rules.{name}.category", rule.category)
    for section in ("level_rules", "rise_rules", "rain_rules"):
        for i, rule in enumerate(getattr(config.sensors, section)):
            check(f"sensors.{section}[{i}].category", rule.category)
    return problems


def _file_problems(config: GatewayConfig) -> list[str]:
    """Files the config names that must exist, and names that must be unique across the file."""
    problems: list[str] = []
    twice = set(repeated(c.name for c in config.video.cameras))
    for i, camera in enumerate(config.video.cameras):
        if camera.name in twice:
            problems.append(f"video.cameras[{i}].name: camera name {camera.name!r} is used more than once")
        if "://" not in camera.url and not config.path(camera.url).exists():
            problems.append(f"video.cameras[{i}].url: video file {config.path(camera.url)} does not exist")
    if config.video.cameras or config.video.patrol:
        model = config.path(config.video.detector.model)
        if not model.exists():
            problems.append(f"video.detector.model: model file {model} does not exist")
    for i, feed in enumerate(config.vehicles.nmea):
        if feed.file and not config.path(feed.file).exists():
            problems.append(f"vehicles.nmea[{i}].file: {config.path(feed.file)} does not exist")
    for where, feeds in (("vehicles.replay", config.vehicles.replay), ("sensors.replay", config.sensors.replay)):
        for i, feed in enumerate(feeds):
            if not config.path(feed.file).exists():
                problems.append(f"{where}[{i}].file: {config.path(feed.file)} does not exist")
    if config.mqtt_source.profiles and not config.mqtt.enabled:
        problems.append("mqtt.host: mqtt_source.profiles are set but no MQTT broker is configured")
    return problems
