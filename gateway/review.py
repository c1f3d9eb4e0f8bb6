"""Review before dispatch: which rules' cases an operator confirms first, and how precise each rule is.

`ReviewPolicy` answers "is this rule's case held?" from `cases.review` (pure). `review_problems`
names the review entries that match no configured rule (a typo would otherwise silently send
every case of that rule). `precision` turns the outbox's review counts into confirmed / reviewed
per rule over the windows the console shows (7 and 30 days). The held / rejected statuses and the
confirm and reject transactions live in the outbox (gateway/outbox.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import GatewayConfig, ReviewConfig

WINDOWS_DAYS: tuple[int, ...] = (7, 30)


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """`holds(rule)`: whether a new case of `rule` waits for an operator (mode review)."""

    default: str = "auto"
    rules: Mapping[str, str] | None = None

    @classmethod
    def from_config(cls, config: ReviewConfig) -> ReviewPolicy:
        return cls(config.default, dict(config.rules))

    def holds(self, rule: str) -> bool:
        return (self.rules or {}).get(rule, self.default) == "review"


def rule_names(config: GatewayConfig) -> set[str]:
    """Every rule name an alert of this config can carry: cameras, patrol presets, vehicles, sensors."""
    names: set[str] = set()
    for camera in config.video.cameras:
        names.update(rule.name for rule in camera.rules)
    if config.video.patrol is not None:
        for preset in config.video.patrol.presets.values():
            names.update(rule.name for rule in preset.rules)
    for _, rule in config.vehicles.fleet.rules:
        if isinstance(getattr(rule, "name", None), str):
            names.add(rule.name)
    for section in ("level_rules", "rise_rules", "rain_rules"):
        names.update(rule.name for rule in getattr(config.sensors, section))
    health = getattr(config.sensors, "health", None)
    if isinstance(getattr(health, "name", None), str):
        names.add(health.name)
    return names


def review_problems(config: GatewayConfig) -> list[str]:
    """`cases.review.rules.<name>: ...` for each name no rule of the config carries."""
    known = rule_names(config)
    problems = []
    for name in config.cases.review.rules:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"cases.review.rules.{name}: no configured rule is called {name!r}{hint}")
    return problems


@dataclass(frozen=True, slots=True)
class RulePrecision:
    """Reviews of one rule's cases in one window: precision = confirmed / reviewed (None if none)."""

    rule: str
    days: int
    confirmed: int
    rejected: int

    @property
    def reviewed(self) -> int:
        return self.confirmed + self.rejected

    @property
    def precision(self) -> float | None:
        return self.confirmed / self.reviewed if self.reviewed else None

    def to_json(self) -> dict:
        return {"confirmed": self.confirmed, "rejected": self.rejected, "reviewed": self.reviewed,
                "precision": None if self.precision is None else round(self.precision, 4)}


def precision(counts: Mapping[int, Mapping[str, tuple[int, int]]],
              rules: Iterable[str] = ()) -> dict[str, dict[int, RulePrecision]]:
    """Per rule, per window: `counts[days][rule] = (confirmed, rejected)` as `Outbox.review_counts`
    gives them; `rules` adds rules with no review yet (shown as —, so a held rule is not missing)."""
    names = set(rules)
    for per_rule in counts.values():
        names.update(per_rule)
    return {rule: {days: RulePrecision(rule, days, *counts.get(days, {}).get(rule, (0, 0)))
                   for days in sorted(counts)}
            for rule in sorted(names)}
