"""The one validator: fields declare type, range and choices once; errors name the field. And the
record of every field a run directory's config.json holds, with what a config.json that lacks it
(written before the field existed) means, and of every choice a field ever took:
tests/data/config_fields.json, which `test_every_stored_config_field_is_recorded_with_what_its_absence_means`
and `test_every_choice_ever_recorded_still_opens` hold the code to.

After adding a field, a choice or a task, record it: .venv/bin/python tests/test_config.py --write-fields
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rnnlab.cli import FlagError, Parser, add_config_flags, config_from_flags, main
from rnnlab.config import (
    ConfigError,
    ConfigTypeError,
    UnknownFieldsError,
    absent_value,
    filled,
    from_dict,
    knob,
    to_dict,
    validate,
)
from rnnlab.training import TrainConfig

FIELDS_FILE = Path(__file__).resolve().parent / "data" / "config_fields.json"
WRITE_FIELDS = ".venv/bin/python tests/test_config.py --write-fields"


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
    with pytest.raises(UnknownFieldsError, match=r"run/config.json: unknown Example field\(s\) \['bogus'\]") as info:
        from_dict(Example, {"bogus": 1, "count": 2}, "run/config.json")
    assert isinstance(info.value, ValueError) and info.value.fields == ["bogus"] and info.value.owner == "Example"


@dataclass(frozen=True)
class Grown:
    """A config that gained fields: `rate` keeps the old behaviour as its default, `boost` does not."""

    size: int = knob(4, "there from the start", low=1)
    rate: float = knob(0.0, "added later; 0 is what runs did before it", low=0)
    boost: bool = knob(True, "added later, on by default; runs before it had none", absent=False)
    names: tuple[str, ...] = knob(("a", "b"), "added later; before it, only a", absent=("a",))

    def __post_init__(self):
        validate(self)


def test_a_field_a_stored_config_lacks_reads_as_what_its_absence_means_not_as_the_default():
    old = from_dict(Grown, {"size": 8}, "run/config.json")
    assert (old.size, old.rate, old.boost, old.names) == (8, 0.0, False, ("a",))
    assert from_dict(Grown, {"size": 8, "boost": True, "names": ["b"]}, "x").boost is True  # recorded: kept
    assert Grown().boost is True  # a new config (the CLI's) still takes the default
    assert filled(Grown, {"size": 2}) == {"size": 2, "rate": 0.0, "boost": False, "names": ("a",)}
    assert [absent_value(f) for f in dataclasses.fields(Grown)] == [4, 0.0, False, ("a",)]
    with pytest.raises(TypeError, match="knob: absent must be immutable"):
        knob(("a",), "h", absent=["a"])


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


# --- the record of the stored configs' fields (tests/data/config_fields.json) ----------------------


def stored_configs() -> dict[str, type]:
    """The config classes a run directory's config.json holds, by the name it stores them under:
    each task's Config (under the task's name, config.json's "task") and the TrainConfig ("train")."""
    from rnnlab.tasks import TASKS
    from rnnlab.training import TrainConfig

    return {**{name: task.Config for name, task in TASKS.items()}, "train": TrainConfig}


def read_as_now(cls) -> dict:
    """Field -> the value a config.json without it is read with today, as JSON."""
    return json.loads(json.dumps({f.name: absent_value(f) for f in dataclasses.fields(cls)}))


def test_every_stored_config_field_is_recorded_with_what_its_absence_means():
    """A run directory outlives the code: its config.json lacks the fields added since, and resuming,
    evaluating or sampling it reads each missing field as the knob's `absent=` (else its default).
    So a field whose default is not what runs did before it existed must declare `absent=`, and
    that value must never change. The record keeps, per stored config, the fields every config.json
    of it holds ("original": their defaults may change freely) and, for each field added later, the
    value a config.json without it means ("added"). This fails until a change keeps to that."""
    recorded, problems = json.loads(FIELDS_FILE.read_text()), []
    for name, cls in stored_configs().items():
        now = read_as_now(cls)
        if name not in recorded:
            problems.append(f"{name} ({cls.__name__}) is not recorded: a new task; record it")
            continue
        original, added = set(recorded[name]["original"]), recorded[name]["added"]
        for field, value in now.items():
            if field not in original and field not in added:
                problems.append(
                    f"{name}: {cls.__name__}.{field} is new. A config.json written before it lacks it and is read with "
                    f"{value!r}. If runs made before the field did not behave as that value does (e.g. a new option "
                    f"on by default), declare on its knob what they did: knob(..., absent=<that value>); then record "
                    f"it")
            elif field in added and added[field] != value:
                problems.append(
                    f"{name}: {cls.__name__}.{field} was added after {name}'s first version; a config.json without it "
                    f"means {added[field]!r} (recorded), but would now be read as {value!r}, so runs made before the "
                    f"field would resume, evaluate and sample as another configuration. Declare "
                    f"absent={added[field]!r} on its knob (do not edit the record)")
        for field in sorted((original | set(added)) - set(now)):
            problems.append(f"{name}: {cls.__name__}.{field} was removed: every config.json that holds it would stop "
                            f"loading (unknown field); keep the field")
    for name in sorted(set(recorded) - set(stored_configs())):
        problems.append(f"{name} is recorded but no longer a stored config (a task removed or renamed?): its runs "
                        f"would stop opening; keep it")
    assert not problems, "\n".join(problems) + f"\n(the record: {FIELDS_FILE}; to record new fields and tasks: " \
                                               f"{WRITE_FIELDS})"


def choices_now(cls) -> dict[str, list]:
    """Field -> the values it takes today, for the fields with a fixed set of choices."""
    return {f.name: list(f.metadata["choices"]) for f in dataclasses.fields(cls) if f.metadata.get("choices")}


def test_every_choice_ever_recorded_still_opens():
    """A run directory keeps the choices it was trained with: a choice that is renamed or retired would
    make its config.json stop opening, or open as another model. So every choice in the record (which
    keeps them forever) must still be one, or be translated by its knob's `retired=` table to one
    that means the same; and every choice of today must be in the record."""
    recorded, problems = json.loads(FIELDS_FILE.read_text()), []
    for name, cls in stored_configs().items():
        now, ever = choices_now(cls), recorded.get(name, {}).get("choices", {})
        for field, values in now.items():
            if unrecorded := [value for value in values if value not in ever.get(field, [])]:
                problems.append(f"{name}: {cls.__name__}.{field}'s choice(s) {unrecorded} are not recorded; "
                                f"record them")
        for field, values in ever.items():
            for value in values:
                read = filled(cls, {field: value}).get(field)
                if read not in now.get(field, []):
                    problems.append(
                        f"{name}: {cls.__name__}.{field} = {value!r} (recorded) is no longer a choice, so runs made "
                        f"with it would stop opening: keep it, or translate it in the knob's retired= table "
                        f"to the choice that means what it meant (do not edit the record)")
    assert not problems, "\n".join(problems) + f"\n(the record: {FIELDS_FILE}; to record new choices: {WRITE_FIELDS})"


def test_a_config_json_lacking_every_added_field_reads_as_the_recorded_values():
    """The values a config.json of each stored config's first version (no added field) is read with
    form a valid config, and are the recorded ones."""
    recorded = json.loads(FIELDS_FILE.read_text())
    for name, cls in stored_configs().items():
        original = {f.name: f.default for f in dataclasses.fields(cls) if f.name in recorded[name]["original"]}
        config = from_dict(cls, json.loads(json.dumps(original)), f"{name}/config.json")
        values = json.loads(json.dumps(to_dict(config)))
        assert {k: values[k] for k in recorded[name]["added"]} == recorded[name]["added"], name


def test_the_copy_task_runs_made_before_its_reliable_defaults_read_as_they_were_trained():
    """The copy task gained --curriculum, --mix, --chrono and --stop-at after its first version, and
    their defaults changed since: a config.json without them is the plain task."""
    from rnnlab.tasks import CopyConfig, SentimentConfig
    from rnnlab.training import TrainConfig

    old = from_dict(CopyConfig, {"T": 20, "hidden": 64}, "run/config.json")
    assert (old.curriculum, old.mix, old.chrono, old.stop_at) == (0, 0.0, False, None)
    assert (CopyConfig().curriculum, CopyConfig().mix, CopyConfig().chrono, CopyConfig().stop_at) == (2000, 0.5, True,
                                                                                                     0.995)
    assert from_dict(SentimentConfig, {}, "x").pretrain_outputs >= 10**9  # before the cap: every token predicted
    assert from_dict(TrainConfig, {}, "x").ema_decay is None and from_dict(TrainConfig, {}, "x").precision == "32"


def write_fields() -> list[str]:
    """Record the stored configs' new tasks (all fields original) and new fields (added, with the
    value a config.json without them is read with today). What is recorded is never changed."""
    recorded = json.loads(FIELDS_FILE.read_text()) if FIELDS_FILE.is_file() else {}
    news = []
    for name, cls in stored_configs().items():
        now = read_as_now(cls)
        if name not in recorded:
            recorded[name] = {"original": sorted(now), "added": {}}
            news.append(f"{name}: all {len(now)} fields, as original")
            continue
        for field in now:
            if field not in recorded[name]["original"] and field not in recorded[name]["added"]:
                recorded[name]["added"][field] = now[field]
                news.append(f"{name}.{field}: a config.json without it means {now[field]!r}")
        for field, values in choices_now(cls).items():
            ever = recorded[name].setdefault("choices", {}).setdefault(field, [])
            for value in values:
                if value not in ever:
                    ever.append(value)
                    news.append(f"{name}.{field}: choice {value!r}")
    FIELDS_FILE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    return news


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-fields"]:
        sys.exit(f"usage: {WRITE_FIELDS}")
    for line in write_fields() or ["nothing new"]:
        print(line)


@pytest.mark.parametrize("field", ["lr", "weight_decay", "clip_norm", "max_minutes"])
def test_an_infinite_number_is_refused_naming_the_field(field):
    """inf passes every lower bound: TrainConfig(lr=inf) trained on, every loss NaN."""
    for value in (math.inf, -math.inf):
        with pytest.raises(ConfigError, match=rf"TrainConfig: {field} must be (None or )?a finite number"):
            TrainConfig(**{field: value})


def test_an_infinite_flag_is_one_line_naming_the_flag(tmp_path, capsys):
    assert main(["train", "adding", "--T", "3", "--hidden", "2", "--steps", "1", "--lr", "inf",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "rnnlab train: error: --lr must be a finite number > 0; got inf"
    assert not (tmp_path / "run").exists()


def test_every_count_of_modules_built_one_by_one_is_bounded():
    """--layers, --depth and sentiment's --members 999999999 built small modules one after another until the
    memory was full, minutes later (no single allocation failed at once, as --hidden's does)."""
    from rnnlab.config import MAX_LAYERS
    from rnnlab.gradient_flow import GradientFlowConfig
    from rnnlab.tasks import TASKS

    configs = [task.Config for task in TASKS.values()] + [GradientFlowConfig]
    bounded = 0
    for cls in configs:
        for name in ("layers", "depth", "members"):
            if name not in cls.__dataclass_fields__:
                continue
            with pytest.raises(ConfigError, match=rf"{cls.__name__}: {name} must be an int in \[1, {MAX_LAYERS}\]"):
                cls(**{name: MAX_LAYERS + 1})
            bounded += 1
    assert bounded >= 16  # layers of 8 tasks, depth of the 6 with cell options and of gradients, members


@pytest.mark.parametrize("argv", [["train", "adding", "--layers", "1001"], ["train", "copy", "--depth", "1001"],
                                  ["train", "sentiment", "--members", "1001"], ["gradients", "--depth", "1001"]])
def test_a_count_beyond_the_bound_is_one_line_naming_the_flag(tmp_path, capsys, argv):
    bounded = ["--steps", "1"] + (["--max-minutes", "0.05", "--threads", "1"] if argv[0] == "train" else [])
    assert main([*argv, *bounded, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rnnlab {argv[0]}: error: {argv[-2]} must be an int in [1, 1000]; got {int(argv[-1])}", err
    assert not (tmp_path / "run").exists()


def test_a_retired_value_reads_as_what_its_knob_says_it_meant():
    """A value a field no longer takes is translated by the table its knob declares (`retired=`), reading
    the stored fields; it was a `stored_values` method that config.filled probed for with hasattr."""

    @dataclass(frozen=True)
    class Stored:
        mode: str = knob("b", "the mode", ("b", "c"), retired={"a": lambda stored: "c" if stored["flag"] else "b"})
        flag: bool = knob(False, "a flag", absent=True)

        def __post_init__(self):
            validate(self)

    assert from_dict(Stored, {"mode": "a", "flag": False}, "x").mode == "b"
    assert from_dict(Stored, {"mode": "a"}, "x").mode == "c"  # the flag's absence (True) read first
    assert filled(Stored, {"mode": ["a"]})["mode"] == ["a"]  # a hand edit's list is not hashed, and left to validate
    with pytest.raises(ValueError, match="retired values must not be choices still; got \\['a'\\]"):
        knob("b", "the mode", ("a", "b"), retired={"a": lambda stored: "b"})
    with pytest.raises(TypeError, match="retired must be a dict of retired value -> function"):
        knob("b", "the mode", ("b",), retired={"a": "b"})
    from rnnlab.tasks import SentimentConfig

    assert filled(SentimentConfig, {"pool": "auto", "bidirectional": True})["pool"] == "max"
    assert filled(SentimentConfig, {"pool": "auto"})["pool"] == "last"
