"""Typed configuration: frozen dataclasses, their JSON form, and the knobs the CLI turns into flags.

A config class declares each field with `knob(default, help, choices)`; `cli.py` generates one
flag per field (`hidden_size` -> `--hidden-size`), and a run directory stores the config as JSON
(`to_dict`), from which `from_dict` rebuilds it with a clear error for unknown fields.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any

__all__ = ["knob", "to_dict", "from_dict", "differences", "field_types"]


def knob(default: Any, help: str, choices: tuple | None = None):
    """A config field with the help text (and allowed values) its CLI flag shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved type annotation (the modules use `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict[str, Any], where: str):
    """cls(**data), naming unknown fields; missing fields take their defaults (configs written by
    an older version stay readable)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a JSON object of {cls.__name__} fields; got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**data)


def differences(a, b) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of one class: name -> (a's, b's)."""
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)}
