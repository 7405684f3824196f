"""Typed configuration: frozen dataclasses whose fields declare their type, range and help once.

A config class declares each field with `knob(default, help, choices, low=, high=, ...)` and calls
`validate(self)` in `__post_init__` (after which it checks only what relates two fields). The one
validator reads the annotations and the knobs, so every config fails the same way, naming the
field: "BenchConfig: reps must be an int >= 1; got 0" (a ConfigError, a ValueError; a value of
the wrong type is a ConfigTypeError, a TypeError). `cli.py` generates one flag per field
(`hidden_size` -> `--hidden-size`) and is the only place that turns field names into flag names;
a run directory stores the config as JSON (`to_dict`), from which `from_dict` rebuilds it.

A run directory outlives the code that wrote it, so its config.json may lack a field added since.
`from_dict` reads a missing field as what the run did before the field existed: the knob's
`absent=` where the knob declares one, else its default. A field whose default changes behaviour
(a new option on by default, or a default changed later) must declare `absent=` with the old
behaviour, or resuming an old run would silently train it differently: tests/test_config.py holds
every stored config to its record, tests/data/config_fields.json (each field, and what a missing
one means). A field the class lacks (a config.json of a newer rnnlab) is an UnknownFieldsError.
A value a field no longer takes (a retired choice) is read as what it meant: the knob's `retired=`
table says so, next to its choices.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from .checks import with_article

__all__ = ["MAX_SEED", "MAX_THREADS", "MAX_LENGTH", "MAX_LAYERS", "MAX_BEAM", "MAX_EPISODES", "knob", "validate",
           "ConfigError", "ConfigTypeError", "UnknownFieldsError", "to_dict", "from_dict", "filled", "absent_value",
           "differences", "field_types", "unwrap_optional"]

# The most torch threads a flag takes: far more than any machine's cores, and below where OpenMP fails
# to create them and the process dies of a segmentation fault (--threads 99999).
MAX_THREADS = 1024
# The largest seed: torch's CPU generator reads a seed's low 32 bits only, so --seed 4294967296 would
# repeat the run of --seed 0 (and beyond 2**64 torch cannot read it at all).
MAX_SEED = 2**32 - 1
# The most tokens a --length flag (sample, explore, train's samples, bench --generation) generates or
# reads: no real use comes near it (the bundled Shakespeare is 4.5 million characters; a page of a
# million steps is hundreds of MB), while a typo's 10**11 would run out of memory or run for days.
MAX_LENGTH = 1_000_000
# The most modules a count flag builds one after another (--layers, --depth, sentiment's --members):
# far beyond any use (the deepest models here have a few), while each module is small enough to be
# allocated, so a typo's --layers 999999999 filled the machine's memory for minutes before failing.
MAX_LAYERS = 1000
# The widest beam `translate` searches: papers use 4 to 12 and gain nothing past a few dozen, while a
# typo's --beam 100000 searched for minutes before running out of memory.
MAX_BEAM = 100
# The most episodes a control run plays at once or evaluates on: each is a game stepped with the others
# and kept for its backward, so a typo's 10**9 ran until memory ran out.
MAX_EPISODES = 10_000


class ConfigError(ValueError):
    """A config field's value is out of its declared range or choices. `owner` is the config class's
    name and `field` the field's, so the CLI can name the flag instead."""

    def __init__(self, owner: str, field: str, expected: str, value: Any, detail: str = ""):
        self.owner, self.field, self.expected, self.value = owner, field, expected, value
        self.detail = detail  # what the value turned out to be, after its repr: ", which is a file"
        super().__init__(f"{owner}: {field} must be {expected}; got {value!r}{detail}")

    def for_flag(self, flag: str) -> str:
        return f"{flag} must be {self.expected}; got {self.value!r}{self.detail}"


class ConfigTypeError(ConfigError, TypeError):
    """A config field's value has the wrong type (a string where a number belongs, ...)."""


class UnknownFieldsError(ValueError):
    """A stored config names fields its class lacks (written by a newer rnnlab, or edited by hand).
    `owner` is the class's name and `fields` the unknown names, so a caller can say more."""

    def __init__(self, where: str, owner: str, fields: list[str], known: list[str]):
        self.where, self.owner, self.fields = where, owner, fields
        super().__init__(f"{where}: unknown {owner} field(s) {fields}; expected some of {known}")


def knob(default: Any, help: str, choices: tuple | None = None, *, low: float | None = None,
         high: float | None = None, above: float | None = None, below: float | None = None,
         parse: Callable[[str], Any] | None = None, metavar: str | None = None, absent: Any = MISSING,
         retired: dict[Any, Callable[[dict[str, Any]], Any]] | None = None):
    """A config field: its default, the help text its CLI flag shows, and what values it takes.

    choices: the allowed values (of each element, for a tuple field); low/high: inclusive bounds;
    above/below: exclusive bounds; parse: text -> value for the CLI where the type's own
    constructor does not serve (e.g. '16..4096' for a sweep). absent: the value a stored config
    written before this field existed means by lacking it, i.e. the behaviour before the field,
    where that is not the default (e.g. a new option on by default: `knob(True, ..., absent=False)`).
    retired: the values the field took once and takes no more (a choice renamed or dropped), each
    with a function of the stored config's fields (a dict) that gives what it meant in today's
    values; a run made with one reads as that (`filled`)."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "above": above, "below": below,
            "parse": parse, "metavar": metavar}
    for name, value in (("default", default), ("absent", absent)):
        if isinstance(value, (list, dict, set)):
            raise TypeError(f"knob: {name} must be immutable (use a tuple); got {type(value).__name__}")
    if absent is not MISSING:
        meta["absent"] = absent
    if retired is not None:
        if not isinstance(retired, dict) or not all(callable(meant) for meant in retired.values()):
            raise TypeError(f"knob: retired must be a dict of retired value -> function of the stored fields; "
                            f"got {retired!r}")
        if still := [value for value in retired if choices is not None and value in choices]:
            raise ValueError(f"knob: retired values must not be choices still; got {still}")
        meta["retired"] = types.MappingProxyType(dict(retired))
    return field(default=default, metadata=meta)


def absent_value(f: dataclasses.Field) -> Any:
    """The value a stored config without field `f` is read with: its knob's `absent`, else its
    default (MISSING for a field without either)."""
    if "absent" in f.metadata:
        return f.metadata["absent"]
    return f.default if f.default_factory is MISSING else f.default_factory()


def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved type annotation (the modules use `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unwrap_optional(kind) -> tuple[Any, bool]:
    """(X, True) for `X | None`, (kind, False) otherwise."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        # the union of a list built at run time: `X | Y` has no spelling for it short of reduce(operator.or_, ...)
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return kind, False


_ARTICLE = {int: "an int", float: "a number", str: "a string", bool: "True or False"}


def _range_text(meta: dict) -> str:
    low, high, above, below = (meta.get(k) for k in ("low", "high", "above", "below"))
    if (low is not None or above is not None) and (high is not None or below is not None):
        left = f"[{low}" if low is not None else f"({above}"
        right = f"{high}]" if high is not None else f"{below})"
        return f" in {left}, {right}"
    return "".join(text for text in (f" >= {low}" if low is not None else "",
                                     f" > {above}" if above is not None else "",
                                     f" <= {high}" if high is not None else "",
                                     f" < {below}" if below is not None else ""))


def _is_type(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def _in_range(value, meta: dict) -> bool:
    low, high, above, below = (meta.get(k) for k in ("low", "high", "above", "below"))
    return ((low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above) and (below is None or value < below))


def _expected(kind, optional: bool, meta: dict) -> str:
    if meta.get("choices") is not None:
        text = f"one of {tuple(meta['choices'])}"
    else:
        text = _ARTICLE.get(kind) or with_article(str(getattr(kind, "__name__", kind)))
        text += _range_text(meta)
    return f"None or {text}" if optional else text


def validate(config) -> None:
    """Check every field of a config dataclass against its annotation and its knob; raise a
    ConfigTypeError (wrong type) or ConfigError (out of range or choices) naming the field."""
    owner = type(config).__name__
    for f, kind in zip(dataclasses.fields(config), field_types(type(config)).values()):
        value, meta = getattr(config, f.name), f.metadata
        base, optional = unwrap_optional(kind)
        if value is None:
            if not optional:
                raise ConfigTypeError(owner, f.name, _expected(base, False, meta), value)
            continue
        if typing.get_origin(base) is tuple:  # tuple[X, ...]: a non-empty tuple of X, each in choices
            (item, *_) = typing.get_args(base) or (object,)
            expected = "a non-empty tuple of " + (f"names from {tuple(meta['choices'])}" if meta.get("choices")
                                                  else _expected(item, False, meta))
            if not isinstance(value, tuple) or not value:
                raise ConfigTypeError(owner, f.name, expected, value)
            for element in value:
                if not _is_type(element, item):
                    raise ConfigTypeError(owner, f.name, expected, value)
                if (meta.get("choices") is not None and element not in meta["choices"]) or (
                        meta.get("choices") is None and not _in_range(element, meta)):
                    raise ConfigError(owner, f.name, expected, value)
            continue
        if not _is_type(value, base):
            raise ConfigTypeError(owner, f.name, _expected(base, optional, meta), value)
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(owner, f.name, _expected(base, optional, meta), value)
        if isinstance(value, float) and not math.isfinite(value):  # inf passes every bound, NaN none
            raise ConfigError(owner, f.name, _expected(base, optional, meta).replace("a number", "a finite number"),
                              value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value, meta):
            raise ConfigError(owner, f.name, _expected(base, optional, meta), value)


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def filled(cls, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a stored config's fields) with each field it lacks set to what its absence means
    (`absent_value`): the values a run written before those fields existed trained with; then each
    value a field no longer takes translated to what it meant (its knob's `retired=`, which reads
    the stored fields, the ones filled in included)."""
    missing = {f.name: absent_value(f) for f in dataclasses.fields(cls) if f.name not in data}
    stored = {**{k: v for k, v in missing.items() if v is not MISSING}, **data}
    meant = {}
    for f in dataclasses.fields(cls):
        for value, meaning in f.metadata.get("retired", {}).items():
            # compared by type and value, not hashed: a hand-edited config.json may hold a list here
            if f.name in stored and type(stored[f.name]) is type(value) and stored[f.name] == value:
                meant[f.name] = meaning(stored)
    return {**stored, **meant}


def from_dict(cls, data: dict[str, Any], where: str):
    """cls(**data) for a stored config: a field it lacks (written before the field existed) is read
    as what its absence means (`filled`), not as today's default; a field the class lacks is an
    UnknownFieldsError naming it (nothing is dropped). JSON has no tuples: lists become tuples."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a JSON object of {cls.__name__} fields; got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UnknownFieldsError(where, cls.__name__, unknown, sorted(names))
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in filled(cls, data).items()}
    if lacking := [name for name in names if name not in data]:
        raise ValueError(f"{where}: {cls.__name__} field(s) {lacking} are missing and have no default")
    try:
        return cls(**data)
    except ConfigError as error:  # a hand-edited file: name the file, not a flag
        raise (TypeError if isinstance(error, TypeError) else ValueError)(f"{where}: {error}") from None


def differences(a, b) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of one class: name -> (a's, b's)."""
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)}
