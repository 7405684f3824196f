"""The one validator: fields declare type, range and choices once; errors name the field."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rnnlab.cli import FlagError, Parser, add_config_flags, config_from_flags
from rnnlab.config import ConfigError, ConfigTypeError, from_dict, knob, validate


@dataclass(frozen=True)
class Example:
    count: int = knob(1, "an int", low=1)
    rate: float = knob(0.5, "a fraction", above=0, below=1)
    cap: int | None = knob(None, "none or at least 2", low=2)
    mode: str = knob("a", "a choice", ("a", "b"))
    names: tuple[str, ...] = knob(("x",), "a list", ("x", "y", "z"))
    flag: bool = knob(False, "a switch")

    def __post_init__(self):
        validate(self)


@pytest.mark.parametrize("field, value, error, message", [
    ("count", 0, ConfigError, "Example: count must be an int >= 1; got 0"),
    ("count", 1.5, ConfigTypeError, "Example: count must be an int >= 1; got 1.5"),
    ("count", True, ConfigTypeError, "Example: count must be an int >= 1; got True"),
    ("count", "2", ConfigTypeError, "Example: count must be an int >= 1; got '2'"),
    ("rate", 1.0, ConfigError, "Example: rate must be a number in (0, 1); got 1.0"),
    ("rate", "0.2", ConfigTypeError, "Example: rate must be a number in (0, 1); got '0.2'"),
    ("cap", 1, ConfigError, "Example: cap must be None or an int >= 2; got 1"),
    ("mode", "c", ConfigError, "Example: mode must be one of ('a', 'b'); got 'c'"),
    ("names", ("x", "w"), ConfigError, "Example: names must be a non-empty tuple of names from ('x', 'y', 'z')"),
    ("names", (), ConfigTypeError, "Example: names must be a non-empty tuple"),
    ("names", "x", ConfigTypeError, "Example: names must be a non-empty tuple"),
    ("flag", 1, ConfigTypeError, "Example: flag must be True or False; got 1"),
])
def test_the_validator_names_the_field_the_expectation_and_the_value(field, value, error, message):
    with pytest.raises(error) as info:
        Example(**{field: value})
    assert str(info.value).startswith(message)
    assert info.value.field == field


def test_good_values_pass_and_ints_serve_as_floats():
    Example(count=3, rate=0.25, cap=None, mode="b", names=("y", "z"), flag=True)
    Example(rate=0.5)
    assert isinstance(ConfigTypeError("E", "f", "x", 1), TypeError)
    assert isinstance(ConfigError("E", "f", "x", 1), ValueError)


def test_from_dict_reads_json_lists_as_tuples_and_names_the_file():
    assert from_dict(Example, {"names": ["x", "y"]}, "run/config.json").names == ("x", "y")
    with pytest.raises(TypeError, match=r"run/config.json: Example: count must be an int >= 1; got '3'"):
        from_dict(Example, {"count": "3"}, "run/config.json")
    with pytest.raises(ValueError, match="unknown Example field"):
        from_dict(Example, {"bogus": 1}, "run/config.json")


def test_flags_are_generated_from_the_config_and_errors_name_the_flag():
    parser = Parser(prog="rnnlab example")
    add_config_flags(parser, Example, Example(), "example")
    args = parser.parse_args(["--count", "4", "--names", "y,z", "--cap", "none", "--flag"])
    config = config_from_flags(Example, args, "example")
    assert (config.count, config.names, config.cap, config.flag) == (4, ("y", "z"), None, True)
    assert config_from_flags(Example, parser.parse_args(["--names", "all"]), "example").names == ("x", "y", "z")
    with pytest.raises(FlagError, match=r"--count must be an int >= 1; got 0"):
        config_from_flags(Example, parser.parse_args(["--count", "0"]), "example")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
