"""The configuration reference (docs/configuration.md's key table), generated from the spec's
declarations: `python -m ultrascaled.spec` prints it."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from ultrascaled.spec.schema import Spec

def iter_settings(cls: type = Spec, prefix: str = ""):
    """Yield (path, type name, default, help) for every key: the configuration reference."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        path = f"{prefix}.{fld.name}" if prefix else fld.name
        tp = hints[fld.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_settings(tp, path)
            continue
        if fld.metadata.get("map_of"):   # processes: the map, then one entry's keys
            yield path, "map of names to process types", {}, fld.metadata.get("help", "")
            yield from iter_settings(fld.metadata["map_of"], f"{path}.NAME")
            continue
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        yield path, _describe_type(fld, tp), default, fld.metadata.get("help", "")


def _describe_type(fld: dataclasses.Field, tp: Any) -> str:
    if fld.name == "workers":
        return "int or `auto`"
    if fld.metadata.get("keys") == "ready":
        return "mapping (one of tcp, http, command) or null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe_type(fld, a) for a in args) + " or null"
    if typing.get_origin(tp) in (tuple, list):
        return "string or list of strings"
    name = {int: "int", float: "float", str: "string", bool: "bool", list: "list of strings",
            dict: "map of strings"}.get(tp, str(tp))
    choices = fld.metadata.get("choices")
    if choices:
        name += ": " + ", ".join(map(str, choices))
        if fld.metadata.get("dotted"):
            name += ", or `module.Class`"
    if fld.metadata.get("path"):
        name = "path"
    return name


def reference_markdown() -> str:
    """The key table of docs/configuration.md, generated from the declarations above."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, tname, default, help_text in iter_settings():
        shown = "null" if default is None else json.dumps(list(default) if isinstance(default, tuple)
                                                           else default)
        rows.append(f"| `{path}` | {tname} | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
