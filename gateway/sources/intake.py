"""What every device source (MQTT, HTTP push, Modbus) does between a decoded message and the rules.

- **Containment.** Decoding runs here, per message: a `PayloadError` is counted as `undecodable`;
  any other exception (a decoder bug met by a payload nobody foresaw) is counted as
  `decoder_errors`. Neither ever leaves this class, so no payload can stop a source.
- **Devices.** With `known_devices` (device id -> required profile name, or None for any), a
  device not in the map is refused (`unknown_device`, logged once per interval for all unknown ids
  together) and a device sending through another profile than its own is refused (`wrong_profile`).
  Without it every device is accepted up to `max_devices` distinct ids (`device_limit` beyond):
  what flows on to health tracking and retained health topics stays bounded either way.
- **Counters.** Cumulative counter fields become increments through one `CounterTracker`.
- **Logs** are rate-limited: one line per device (or per kind of problem) per `log_interval_s`,
  with the number of similar lines held back since.
"""

from __future__ import annotations

import collections
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from core.model import Position, Reading
from gateway.profiles import CounterTracker, DecodeResult, DeviceProfile, PayloadError
from gateway.throttle import LogThrottle

__all__ = ["Intake", "Observation", "OnObservation"]

log = logging.getLogger(__name__)

Observation = Reading | Position
OnObservation = Callable[[Observation], Awaitable[None] | None]
UNKNOWN_KEY = "(unknown devices)"


class Intake:
    def __init__(self, on_observation: OnObservation, *, known_devices: Mapping[str, str | None] | None = None,
                 max_devices: int = 100_000, log_interval_s: float = 60.0,
                 logger: logging.Logger | None = None) -> None:
        self.on_observation = on_observation
        self.known_devices = known_devices  # None: every device is accepted (up to max_devices)
        self.max_devices = max_devices
        self.log = logger or log
        self.throttle = LogThrottle(log_interval_s)
        self.counters = CounterTracker(max_devices)
        self._accepted: set[str] = set()
        self.stats: dict[str, int] = {
            "received": 0, "observations": 0, "undecodable": 0, "decoder_errors": 0, "values_dropped": 0,
            "unknown_device": 0, "wrong_profile": 0, "device_limit": 0, "counter_primed": 0, "callback_errors": 0,
        }
        self.device_problems: collections.Counter[str] = collections.Counter()  # see problem()

    # -- checks ----------------------------------------------------------------------------------
    def admit(self, device: str, profile: DeviceProfile) -> str | None:
        """None when `device` may report through `profile`; else the reason, counted and logged."""
        if self.known_devices is not None:
            if device not in self.known_devices:
                self.stats["unknown_device"] += 1
                self.problem(device)
                reason = f"unknown device {device!r} (profile {profile.name})"
                self.warn(UNKNOWN_KEY, "%s: ignored", reason)
                return reason
            wanted = self.known_devices[device]
            if wanted and wanted != profile.name:
                self.stats["wrong_profile"] += 1
                self.problem(device)
                reason = f"device {device!r} is configured with profile {wanted!r}, not {profile.name!r}"
                self.warn(device, "%s: message refused", reason)
                return reason
            return None
        if device not in self._accepted:
            if len(self._accepted) >= self.max_devices:
                self.stats["device_limit"] += 1
                reason = f"device {device!r} is beyond the {self.max_devices} devices this source tracks"
                self.warn("(device limit)", "%s: ignored (list the devices in the config to choose them)", reason)
                return reason
            self._accepted.add(device)
        return None

    def decode(self, profile: DeviceProfile, decode: Callable[[], list[DecodeResult | PayloadError]], *,
               device: str | None = None) -> tuple[list[Observation], list[str]]:
        """Decode one message: the observations for the rules, and why the rest were refused.

        `device` is the id known before decoding (an MQTT topic level), checked first so that a flood
        from unknown devices costs no decoding."""
        self.stats["received"] += 1
        id_in_payload = profile.device_id_in_payload
        if device is not None and not id_in_payload and (reason := self.admit(device, profile)):
            return [], [reason]
        try:
            outcomes = decode()
        except PayloadError as exc:
            outcomes = [exc]
        except Exception as exc:  # a decoder bug must not take the source down with it
            self.stats["decoder_errors"] += 1
            key = device or f"profile:{profile.name}"
            self.problem(key)
            if self.throttle.allow(f"decoder-error:{profile.name}")[0]:
                self.log.error("profile %r, device %r: decoder failed on a payload (%s: %s)", profile.name,
                               device, type(exc).__name__, str(exc)[:200], exc_info=exc)
            return [], [f"profile {profile.name!r}: payload could not be decoded ({type(exc).__name__})"]
        observations: list[Observation] = []
        refused: list[str] = []
        for outcome in outcomes:
            if isinstance(outcome, PayloadError):
                self.stats["undecodable"] += 1
                key = outcome.device or device or f"profile:{profile.name}"
                self.problem(key)
                self.warn(key, "undecodable payload: %s", outcome)
                refused.append(str(outcome))
                continue
            if (device is None or id_in_payload) and (reason := self.admit(outcome.device, profile)):
                refused.append(reason)
                continue
            result = outcome
            if outcome.counters:
                primed = self.counters.primed
                result = self.counters.apply(profile, outcome)
                self.stats["counter_primed"] += self.counters.primed - primed
            if result.problems:
                self.stats["values_dropped"] += len(result.problems)
                self.problem(result.device)
                self.warn(result.device, "profile %r, device %r: values left out: %s", profile.name, result.device,
                          "; ".join(result.problems))
            if isinstance(result.observation, Reading) and not result.observation.values:
                continue  # only a counter, primed: no increment known yet
            self.stats["observations"] += 1
            observations.append(result.observation)
        return observations, refused

    async def deliver(self, obs: Observation) -> None:
        """Hand one observation on; a failing callback is counted and logged, never raised."""
        try:
            result = self.on_observation(obs)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception:
            self.stats["callback_errors"] += 1
            if self.throttle.allow("callback")[0]:
                self.log.exception("the observation callback failed for device %r", obs.device)

    # -- bookkeeping -----------------------------------------------------------------------------
    def problem(self, device: str) -> None:
        if device not in self.device_problems and len(self.device_problems) >= LogThrottle.MAX_KEYS:
            device = "(other devices)"  # bounded: a flood of made-up ids cannot grow this without end
        self.device_problems[device] += 1

    def warn(self, key: str, msg: str, *args: Any) -> None:
        self.throttle.log(self.log, logging.WARNING, key, msg, *args)
