"""One terminal identity: every spelling of a terminal number resolves to one fleet vehicle, here.

A JT/T 808 terminal number is BCD with leading zeros: 12 digits in a 2011/2013 header, 20 in a 2019
header, and configs and MQTT trackers write it bare ("13912340001"). A terminal whose number is not
valid BCD arrives as hex. `terminal_key` gives all of these one canonical spelling; `TerminalDirectory`
maps that key to the vehicle id, built once from the fleet and used by the JT/T 808 server (once per
connection, at authentication), the fleet monitor and the runtime's other position sources.

Convention downstream of a source: `Position.device` is the fleet vehicle's id when the terminal is
in the fleet; otherwise the terminal's canonical key, prefixed with `UNREGISTERED_PREFIX` only when
that key happens to equal a vehicle id, so a stranger can never pass for a fleet vehicle.

`TerminalFacts` is what the fleet config says about a terminal beyond its number (plate, the terminal's
own id, its maker), which a registration (JT/T 808 0x0100) must match: a number alone is printed on
paperwork and guessed easily, so it must not be enough to obtain a terminal's auth code.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

UNREGISTERED_PREFIX = "unregistered:"
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_SPELLINGS = 10_000  # raw spellings remembered; strangers can invent any number of them


def terminal_key(terminal: str) -> str:
    """Canonical spelling: surrounding spaces and leading zeros dropped, hex in lower case.

    "013912340001", "00000000013912340001" (2019) and "13912340001" are one terminal. An id that is
    not a number (an MQTT tracker's "tracker-7") is only stripped.
    """
    t = terminal.strip()
    if t and _HEX.issuperset(t):
        return t.lower().lstrip("0") or "0"
    return t


class TerminalDirectory:
    """Terminal (any spelling) -> vehicle id, for one fleet."""

    def __init__(self, terminals: Mapping[str, str]) -> None:
        """`terminals` maps each configured terminal number to its vehicle id. Two terminals that are
        one terminal spelled twice are a configuration error (ValueError)."""
        self._by_key: dict[str, str] = {}
        for terminal, vehicle in terminals.items():
            key = terminal_key(terminal)
            other = self._by_key.get(key)
            if other is not None and other != vehicle:
                raise ValueError(f"terminal {terminal!r} of vehicle {vehicle!r} is also vehicle {other!r}'s")
            self._by_key[key] = vehicle
        self.vehicle_ids = frozenset(terminals.values())
        self._spellings: dict[str, str | None] = {}

    @classmethod
    def from_vehicles(cls, vehicles: Iterable[object]) -> TerminalDirectory:
        """From fleet vehicle configs (anything with `terminal` and `id`)."""
        return cls({v.terminal: v.id for v in vehicles})  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self._by_key)

    def vehicle(self, terminal: str) -> str | None:
        """The vehicle id of a terminal number as a source spelled it, or None when not in the fleet."""
        try:
            return self._spellings[terminal]
        except KeyError:
            pass
        vehicle = self._by_key.get(terminal_key(terminal))
        if len(self._spellings) >= _MAX_SPELLINGS:
            self._spellings.clear()
        self._spellings[terminal] = vehicle
        return vehicle

    def canonical(self, device: str) -> str:
        """`device_id` for a `Position.device` that is either resolved already (a vehicle id, or an
        unknown terminal's key) or a terminal number as a replay file, NMEA feed or tracker spells it.
        Idempotent."""
        return device if device in self.vehicle_ids else self.device_id(device)

    def device_id(self, terminal: str) -> str:
        """What `Position.device` carries for this terminal: its vehicle id, or, for a terminal not in
        the fleet, its canonical key, never mistakable for a vehicle id."""
        vehicle = self.vehicle(terminal)
        if vehicle is not None:
            return vehicle
        key = terminal_key(terminal)
        return UNREGISTERED_PREFIX + key if key in self.vehicle_ids else key


# why a registration does not match the config (the JT/T 808 server answers each with its 0x8100 result)
PLATE_OF_ANOTHER = "plate_of_another_vehicle"  # the plate is another fleet vehicle's
WRONG_PLATE = "wrong_plate"  # not this vehicle's plate, nor any fleet vehicle's
WRONG_TERMINAL = "wrong_terminal"  # the terminal id or maker differ from the config

_PLATE_NOISE = str.maketrans("", "", " \t·•.-_")


def plate_key(plate: str) -> str:
    """A plate as written in a config ("京A·M0001") or by a terminal ("京AM0001"): one spelling."""
    return plate.translate(_PLATE_NOISE).upper()


@dataclass(frozen=True, slots=True)
class TerminalFacts:
    """What the fleet config says about one terminal; empty fields are not checked."""

    plate: str = ""
    terminal_id: str = ""
    manufacturer: str = ""

    @classmethod
    def of(cls, vehicle: object) -> TerminalFacts:
        """From a fleet vehicle config (anything with `plate`, `terminal_id` and `manufacturer`)."""
        return cls(getattr(vehicle, "plate", "") or "", getattr(vehicle, "terminal_id", None) or "",
                   getattr(vehicle, "manufacturer", None) or "")

    def mismatch(self, fields: Mapping[str, object], plates: Mapping[str, str] | None = None) -> str | None:
        """Why a registration's fields (the decoded 0x0100 body) do not match, or None when they do.
        `plates` maps each fleet vehicle's plate_key to its vehicle id (to tell another vehicle's plate
        from a wrong one). A plate is compared only when the terminal names one (plate colour not 0: with
        0 the field holds the VIN of an unregistered vehicle)."""
        if self.terminal_id and str(fields.get("terminal_id", "")).strip() != self.terminal_id.strip():
            return WRONG_TERMINAL
        if self.manufacturer and str(fields.get("maker", "")).strip().upper() != self.manufacturer.strip().upper():
            return WRONG_TERMINAL
        if self.plate and fields.get("plate_color", 0):
            given = plate_key(str(fields.get("plate", "")))
            if given != plate_key(self.plate):
                return PLATE_OF_ANOTHER if plates and given in plates else WRONG_PLATE
        return None
