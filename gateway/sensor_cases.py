"""At start-up, after the sensor rules' state is restored and before any source starts: the case desk's
sensor cases squared with the restored episodes.

A save of the rule state only ever holds episodes whose alerts are committed, but a kill -9 can come
after an alert is committed and before the save that would record its episode. Two holes follow, both
closed here from the case store, which is always up to date (a case's every event is committed before
anything else hears of it):

- An open case the restored state knows no episode for (its alert came after the last save): the
  monitor adopts the episode (`SensorMonitor.adopt_episode`) at the level of the case's latest alert,
  so the next reading below the clear point, drained rain windows, the device back online (or gone
  silent: the offline check) clear the case as they would have without the kill.
- A restored open episode whose latest case was cleared after the episode opened (the clear came after
  the last save): the episode is dropped without an alert (`SensorMonitor.forget_episode`), so water
  that comes back opens a new episode (the desk reopens the case or files a new one) instead of
  continuing one that already ended. A withdrawn case needs nothing: its episode goes on as if no kill
  had happened and the desk only counts its alerts.

An open case whose device is no longer configured (or no longer watched by that rule) cannot be
cleared by anything here: it is logged once at start-up, listed in the status (`rule-state`,
`orphaned_cases`) and left to an operator (`citygate cases withdraw`). Clearing it would tell the
central platform that the water went down, which nobody saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detectors.sensor.monitor import SensorMonitor
from gateway.cases import CaseDesk
from gateway.outbox import CaseRecord, Outbox

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What the start-up check did: case ids adopted, restored episodes (rule, device) forgotten, and
    open cases nothing can clear (device or rule gone from the config)."""

    adopted: list[str] = field(default_factory=list)
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)


def reconcile(monitor: SensorMonitor, outbox: Outbox, desk: CaseDesk) -> Reconciled:
    done = Reconciled()
    for ep in monitor.open_episodes():  # first the stale ones: an open case below may adopt the same key again
        cleared_at = _cleared_at(outbox, desk.latest_case(ep["rule"], "sensor", ep["device"], ep["rule"]))
        if cleared_at is not None and cleared_at >= ep["since"] and monitor.forget_episode(ep["device"], ep["rule"]):
            done.forgotten.append((ep["rule"], ep["device"]))
    for record in outbox.open_cases("sensor"):
        case = record.case
        device, rule, place = case["subject"]["id"], case["rule"], case["subject"].get("place", "")
        facts, at = _latest_facts(record, outbox)
        since = datetime.fromisoformat(facts["open_since"]) if facts.get("open_since") else at
        value = facts.get("peak", facts.get("value"))
        outcome = monitor.adopt_episode(device, rule, place, since, level=facts.get("level"),
                                        value=float(value) if isinstance(value, int | float) else None)
        if outcome == "adopted":
            done.adopted.append(record.case_id)
        elif outcome == "unknown":
            done.orphaned.append(record.case_id)
            log.warning("sensor case %s (%s, %s %s) is open but its device or rule is no longer configured: "
                        "nothing will clear it; once the site is checked, `citygate cases withdraw %s --reason ...`",
                        record.case_id, rule, device, place, record.case_id)
    if done.adopted or done.forgotten:
        log.info("sensor cases squared with the restored rule state: %d open case(s) adopted (%s), %d episode(s) "
                 "whose case was cleared forgotten", len(done.adopted), ", ".join(done.adopted[:10]),
                 len(done.forgotten))
    return done


def _latest_facts(record: CaseRecord, outbox: Outbox) -> tuple[dict[str, Any], datetime]:
    """The facts of the case's latest alert and that alert's time: the case's own, or a later update's
    (an escalation, a de-escalation, a reopening)."""
    facts, at = record.case.get("facts", {}), datetime.fromisoformat(record.case["detected_at"])
    for event in outbox.events(record.case_id):
        if event.kind == "updated" and "facts" in event.body:
            facts, at = event.body["facts"], datetime.fromisoformat(event.body["at"])
    return facts, at


def _cleared_at(outbox: Outbox, case_id: str | None) -> datetime | None:
    """When the case's condition was last cleared, if it is cleared now."""
    if case_id is None or (outbox.case_state(case_id) or ("",))[0] != "cleared":
        return None
    cleared = [e for e in outbox.events(case_id) if e.kind == "cleared"]
    return datetime.fromisoformat(cleared[-1].body["at"]) if cleared else None
