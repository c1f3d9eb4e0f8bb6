"""Base class for every config section, and the checks several sections share."""

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def repeated(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, sorted: for "must be unique" config errors."""
    return sorted(value for value, n in Counter(values).items() if n > 1)
