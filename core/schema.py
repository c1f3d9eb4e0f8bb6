"""Base class for every config section, and the checks several sections share."""

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def repeated(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, sorted: for "must be unique" config errors."""
    return sorted(value for value, n in Counter(values).items() if n > 1)


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # ValueError: a malformed key such as "../x"
        raise ValueError(f"unknown time zone {name!r}; use an IANA name like Asia/Shanghai") from exc
    return name


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
"""An IANA time-zone name, checked when the config is loaded."""


class FieldError(ValueError):
    """A model validator's verdict about one of its fields: the error is reported at `parent.field`.

    Pydantic reports whatever a `model_validator` raises at the model itself (`central`, not
    `central.url`); raising this instead lets the config loader name the exact field. `field` is a
    field name or a path below the model, e.g. ("rules", 2, "zone")."""

    def __init__(self, field: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc: tuple[str | int, ...] = (field,) if isinstance(field, str) else tuple(field)


_REASON = re.compile(r"^(?P<what>[A-Za-z -]+?)\s*\[(?P<x>\S+) (?P<y>\S+)\]$")


def polygon_problem(polygon: Sequence[Sequence[float]] | Any) -> str | None:
    """Why a polygon cannot be used (crosses itself, has no area, ...), or None when it is valid.

    `polygon` is a ring of [x, y] points (config zones, sites) or a shapely geometry (grid cells).
    A self-intersecting outline makes "inside" ambiguous: shapely answers point-in-polygon queries on
    it, but not the way the person who drew it meant."""
    import shapely
    from shapely.geometry import Polygon

    geometry = Polygon(polygon) if isinstance(polygon, Sequence) else polygon
    if shapely.is_valid(geometry):
        return None
    if geometry.convex_hull.area == 0:
        return "the outline encloses no area (its points lie on one line or repeat)"
    reason = shapely.is_valid_reason(geometry)
    m = _REASON.match(reason)
    if m is None:
        return f"not a valid polygon ({reason})"
    where = f"[{float(m['x']):g}, {float(m['y']):g}]"
    if "self-intersection" in m["what"].lower():
        return (f"the outline crosses itself at {where}: list the points in order around the shape, "
                "without crossing edges")
    return f"not a valid polygon: {m['what'].lower()} at {where}"


def valid_polygon(points: list, what: str) -> list:
    """For field validators: `points` unchanged, or ValueError naming `what` and the problem."""
    problem = polygon_problem(points)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    return points
