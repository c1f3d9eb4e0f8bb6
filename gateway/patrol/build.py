"""Wiring of patrol mode from a deployment config: the checks `citygate check` should run, and the
scheduler the runtime supervises."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.model import Alert
from detectors.video.backends import ObjectDetector
from gateway.patrol.inventory import InventoryError, PatrolCamera, load_inventory, my_share
from gateway.patrol.scheduler import PatrolScheduler

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def patrol_problems(config: GatewayConfig) -> list[str]:
    """`path: sentence` problems of `video.patrol` that need files or the catalog: the inventory, row by
    row, the model file and the presets' catalog keys. Empty when patrol is off."""
    from gateway.catalog import Catalog, CatalogError

    patrol = config.video.patrol
    if patrol is None:
        return []
    problems: list[str] = []
    try:
        load_inventory(config.path(patrol.inventory), patrol)
    except InventoryError as exc:
        problems += [f"video.patrol.inventory: {p}" for p in exc.problems]
    model = config.path(config.video.detector.model)
    if not model.exists():
        problems.append(f"video.detector.model: model file {model} does not exist")
    try:
        catalog = Catalog.load([config.path(f) for f in config.cases.catalog_files])
    except CatalogError:
        return problems  # cross_check reports the catalog itself
    for name, preset in patrol.presets.items():
        for j, rule in enumerate(preset.rules):
            keys = [("category", rule.category)] + [(f"class_categories.{k}", v) for k, v in rule.class_categories.items()]
            for field, key in keys:
                if key and key not in catalog:
                    close = difflib.get_close_matches(key, catalog.keys(), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    problems.append(f"video.patrol.presets.{name}.rules[{j}].{field}: {key!r} is not in the case "
                                    f"catalog{hint}")
    return problems


def patrol_cameras(config: GatewayConfig) -> list[PatrolCamera]:
    """This box's share of the inventory (raises InventoryError)."""
    patrol = config.video.patrol
    assert patrol is not None
    return my_share(load_inventory(config.path(patrol.inventory), patrol), patrol.shard)


def build_patrol(config: GatewayConfig, detector: ObjectDetector, submit: Callable[[Alert], None], *,
                 clock: Callable[[], float] = time.time) -> PatrolScheduler:
    """The patrol component; `submit` is called on the event loop (AlertBus.submit)."""
    patrol = config.video.patrol
    assert patrol is not None
    return PatrolScheduler(patrol_cameras(config), patrol, detector, submit, clock=clock, timezone=config.tz)
