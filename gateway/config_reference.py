"""Writes the config reference (docs/config-reference.md) from the pydantic schema itself, so the
documentation cannot drift from what `citygate check` accepts: `python -m gateway.config_reference`."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gateway.config import GatewayConfig


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation: typing.Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("pydantic.", "").replace("|", "\\|")


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    return f"`{field.default!r}`"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _models_in(field.annotation)
        is_list = typing.get_origin(field.annotation) is list or "list[" in str(field.annotation)
        out.append((path, _type_name(field.annotation), _default(field), (field.description or "").replace("|", "\\|")))
        for sub in nested:
            out += rows(sub, f"{path}[]." if is_list else f"{path}.")
    return out


def render() -> str:
    lines = ["# citygate config reference", "",
             "Generated from the schema by `python -m gateway.config_reference`; `citygate check CONFIG` "
             "validates a file against exactly this. Relative paths are relative to the config file; "
             "`${VAR}` / `${VAR:-default}` take values from the environment.", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for path, kind, default, doc in rows(GatewayConfig):
        lines.append(f"| `{path}` | `{kind}` | {default} | {doc} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
