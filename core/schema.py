"""Base class for every config section, and the checks several sections share."""

from collections import Counter
from collections.abc import Iterable
from typing import Annotated
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
