"""The case catalog: rule category keys → GB/T 30428 部件/事件 class codes and names.

Data, not code: the shipped `gateway/data/catalog.yaml` plus a city's own files, later files
overriding earlier entries with the same key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

CASE_TYPES = ("component", "event")


class CatalogError(ValueError):
    """A catalog file is unusable; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    key: str
    type: str  # component | event
    major: str
    minor: str
    name: str
    name_en: str
    major_name: str = ""

    def as_category(self) -> dict[str, str]:
        return {"key": self.key, "type": self.type, "major": self.major, "minor": self.minor,
                "code": f"{self.major}{self.minor}", "name": self.name, "name_en": self.name_en,
                "major_name": self.major_name}


class Catalog:
    def __init__(self, entries: dict[str, CatalogEntry]) -> None:
        self._entries = entries

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, key: str) -> CatalogEntry:
        return self._entries[key]

    def keys(self) -> list[str]:
        return sorted(self._entries)

    @classmethod
    def load(cls, extra_files: Iterable[Path] = ()) -> Catalog:
        """The shipped catalog, then each extra file in order."""
        shipped = resources.files("gateway").joinpath("data/catalog.yaml").read_text(encoding="utf-8")
        majors: dict[str, dict[str, dict]] = {t: {} for t in CASE_TYPES}
        raw_entries: dict[str, tuple[dict, str]] = {}
        sources = [("gateway/data/catalog.yaml", shipped)]
        for path in extra_files:
            try:
                sources.append((str(path), Path(path).read_text(encoding="utf-8")))
            except OSError as exc:
                raise CatalogError(f"{path}: cannot read catalog file ({exc.strerror})") from exc
        for name, text in sources:
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise CatalogError(f"{name}: not valid YAML ({exc})") from exc
            if not isinstance(data, dict):
                raise CatalogError(f"{name}: expected a mapping with 'majors' and 'entries'")
            for case_type, classes in (data.get("majors") or {}).items():
                if case_type not in CASE_TYPES:
                    raise CatalogError(f"{name}: majors.{case_type}: type must be one of {CASE_TYPES}")
                majors[case_type].update({str(k): v for k, v in (classes or {}).items()})
            for key, entry in (data.get("entries") or {}).items():
                raw_entries[str(key)] = (entry, name)
        entries = {}
        for key, (entry, name) in raw_entries.items():
            entries[key] = _parse_entry(key, entry, name, majors)
        return cls(entries)


def _parse_entry(key: str, entry: object, source: str, majors: dict[str, dict[str, dict]]) -> CatalogEntry:
    where = f"{source}: entries.{key}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a mapping with type, major, minor, name")
    missing = [f for f in ("type", "major", "minor", "name") if f not in entry]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}")
    case_type, major = entry["type"], str(entry["major"])
    if case_type not in CASE_TYPES:
        raise CatalogError(f"{where}.type: must be one of {CASE_TYPES}, got {case_type!r}")
    if major not in majors[case_type]:
        raise CatalogError(f"{where}.major: {major!r} is not a {case_type} major class in the catalog")
    return CatalogEntry(key=key, type=case_type, major=major, minor=str(entry["minor"]), name=str(entry["name"]),
                        name_en=str(entry.get("name_en", key)), major_name=str(majors[case_type][major].get("name", "")))
