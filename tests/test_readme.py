"""The docs' examples still work, so the README stays true: every ```python block of README.md runs as
written, and every command line the docs show (indented code lines and ```sh fences) parses with
rnnlab's own parser and names what exists: `rnnlab ...` (its task, cell, implementation and values,
checked by the configs the command builds from its flags), `torchrun ... -m rnnlab ...` (torchrun's
flags too), `make TARGET` and `pip install 'rnnlab[EXTRA]'`. What the prose of README.md,
docs/ARCHITECTURE.md and docs/COMPLEXITY.md quotes is true too: its commands (`rnnlab train
--precision bf16`), flags (`--pool concat`) and files exist, its Python names
(`rnnlab.kernels.graphs.clear`) resolve, its calls (`SequenceToVector(core, readout, pool="last")`) fit
the signatures; the options the README says every cell takes build every ladder cell but those it
names, and its tables of cells, implementations and tasks show each one there is. Parsing only:
nothing is trained or run. docs/ARCHITECTURE.md's "Extending rnnlab" is followed by
tests/test_extending.py.

docs/RESULTS.md and docs/BENCHMARKS.md record what was run at the time, and readers rerun them, so
their command lines are checked too; one that a later change broke on purpose keeps its text and
carries a note in its comment, `(today: add --members 1)` or `(today: --old is --new)`, which the
check applies: the note itself must then be right. A placeholder (RUN_DIR, CELL, `[--top-k 10]`) gets
a value the parser takes; a line with a placeholder this file does not know is left out."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import re
import shlex
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import rnnlab as R
from rnnlab import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/COMPLEXITY.md", "docs/RESULTS.md", "docs/BENCHMARKS.md")  # their command lines
PROSE_DOCS = ("README.md", "docs/ARCHITECTURE.md", "docs/COMPLEXITY.md")  # what their prose quotes (not history)
SHELL_FENCES = ("sh", "bash", "shell", "console")  # a bare ``` fence holds a program's output

# What a placeholder stands for in a command line: a value the parser takes (parsing never reads it)
PLACEHOLDERS = {"RUN_DIR": "runs/example", "FILE": "example.txt", "HOST": "localhost", "TASK": "language",
                "CELL": "gru", "H": "64", "S": "0", "N": "100", "P": "32", "K": "2", "D": "0.99", "M": "3", "R": "3"}
PLACEHOLDER = re.compile(r"(?<![\w])(?<!--)(" + "|".join(PLACEHOLDERS) + r")(?![\w])")
OPTIONAL = re.compile(r"\[(--[^\]]*)\]")  # `[--top-k 10]`: an optional flag, shown in brackets


@dataclass(frozen=True)
class Example:
    """One example of a doc: where it is and its text (a command's continuation lines joined)."""

    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text.strip()}"


def blocks(doc: str) -> list[tuple[str, Example]]:
    """The code blocks of a Markdown file as (language, Example): fenced (```lang) and indented ones
    (4 spaces after a blank line), each block's lines in one text."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            language, start, i = line.lstrip()[3:].strip(), i + 1, i + 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                i += 1
            found.append((language, Example(doc, start + 1, "\n".join(lines[start:i]))))
        elif line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            start = i
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            found.append(("indented", Example(doc, start + 1, "\n".join(lines[start:i]).rstrip())))
            continue
        i += 1
    return found


def code_lines(doc: str) -> list[Example]:
    """The lines of the doc's shell-like code blocks, each line ending in `\\` joined to the next."""
    lines = []
    for language, block in blocks(doc):
        if language not in (*SHELL_FENCES, "indented"):
            continue
        joined, first = "", None
        for offset, line in enumerate(block.text.splitlines()):
            first = block.line + offset if first is None else first
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            lines.append(Example(doc, first, (joined + line).strip().removeprefix("$ ")))
            joined, first = "", None
    return lines


COMMAND = {
    "rnnlab": re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:/usr/bin/time(?:\s+-v)?\s+)?(?:\S*/)?rnnlab(?=\s|$)"),
    "python -m rnnlab": re.compile(r"^(?:\S*/)?python3?\s+-m\s+rnnlab(?=\s|$)"),
    "torchrun": re.compile(r"^torchrun\s"),
    "make": re.compile(r"^make(?=\s|$)"),
    "pip": re.compile(r"^(?:\S*/)?pip3?\s+install\s"),
}


ADDED = re.compile(r"\(today: add ([^)]*)\)")  # a recorded line's note: what it needs today
RENAMED = re.compile(r"\(today: (--[\w-]+) is (--[\w-]+)\)")


def words(text: str) -> list[str]:
    """A command line as the shell splits it, up to a pipe: placeholders given values, optional flags in,
    comments and redirections (`< sentences.txt`) out, a note's `today:` change applied."""
    text = PLACEHOLDER.sub(lambda m: PLACEHOLDERS[m.group(1)], OPTIONAL.sub(r"\1", text))
    split, out = shlex.split(text, comments=True), []
    skip = False
    for word in split:
        if word in ("|", "&", "&&", ";", "||"):  # the command ends there (`... | tee log`)
            break
        if skip:
            skip = False
        elif word in ("<", ">", "2>", ">>", "&>"):
            skip = True
        elif word != "2>&1":
            out.append(word)
    renamed = dict(RENAMED.findall(text))
    return [renamed.get(word, word) for word in out] + [word for added in ADDED.findall(text) for word in added.split()]


def unknown_placeholder(text: str) -> bool:
    """Whether the command, comments and quotes aside, holds a bare CAPITALS word this file has no value for."""
    bare = shlex.split(re.sub(r"(\"[^\"]*\"|'[^']*')", "x", text), comments=True)
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*", word) and word not in PLACEHOLDERS for word in bare)


def commands(kind: str) -> list[Example]:
    return [line for doc in DOCS for line in code_lines(doc)
            if COMMAND[kind].match(line.text) and not unknown_placeholder(line.text)]


# --- rnnlab's own parser, as `rnnlab` runs it --------------------------------------------------


def task_of(argv: list[str]) -> str | None:
    """The task whose flags the line's parser takes (cli._task_named), read in an empty folder: a line's
    `--resume runs/...` must not find a run of the reader's own checkout there."""
    with tempfile.TemporaryDirectory() as empty, contextlib.chdir(empty):
        return cli._task_named(argv)


@functools.cache
def parser_for(task: str | None) -> argparse.ArgumentParser:
    """rnnlab's parser with `train`'s flags of the task (None: the default task), built once (parsing leaves
    a parser unchanged)."""
    return cli.build_parser(task)


def parse(argv: list[str], where) -> argparse.Namespace | None:
    """`rnnlab ARGV` parsed as cli.main parses it (the task's flags, `--debug` anywhere), not run;
    None for --help and --version. A parse error fails the test with rnnlab's own one-line message."""
    argv = [word for word in argv if word != "--debug"]
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser_for(task_of(argv)).parse_args(argv)
        except SystemExit as stop:
            if stop.code == 0 and {"--help", "-h", "--version"} & set(argv):
                return None
            pytest.fail(f"{where}\n  does not parse: {said.getvalue().strip()}")


def check_values(args: argparse.Namespace) -> None:
    """Build the configs the command builds from its flags: each validates its fields (a cell, an
    implementation, a range), so a value that does not exist fails here, as it would when run."""
    from rnnlab import bench, complexity, gradient_flow, ladder
    from rnnlab.tasks import DEFAULT_TASK, TASKS, Baselined

    command = args.command
    device = getattr(args, "device", "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        args.device = "cpu"  # a doc may show a GPU's command: the configs refuse a device this machine lacks
    if command in ("train", "seeds") and getattr(args, "resume", None) is None:
        task = TASKS[args.task or DEFAULT_TASK]
        cli.config_from_flags(task.Config, args, command)
        cli.config_from_flags(type(task.train_defaults), args, command, task.train_defaults)
    elif command == "ladder":
        cli.config_from_flags(ladder.LadderConfig, args, command)
        assert args.task in TASKS and issubclass(TASKS[args.task], Baselined), f"no ladder task {args.task!r}"
    elif command == "bench":  # on the base the command takes (--quick: a smaller grid), as cmd_bench does
        base = dataclasses.replace(bench.BenchConfig(), **bench.QUICK) if args.quick else None
        cli.config_from_flags(bench.BenchConfig, args, command, base)
    elif command == "complexity":
        base = complexity.ComplexityConfig(**complexity.QUICK) if args.quick else None
        cli.config_from_flags(complexity.ComplexityConfig, args, command, base)
    elif command == "gradients":
        cli.config_from_flags(gradient_flow.GradientFlowConfig, args, command)


def check_rnnlab(argv: list[str], where) -> None:
    args = parse(argv, where)
    if args is not None:
        parser = parser_for(task_of(argv))
        spelled = {*parser._option_string_actions, *subcommands(parser)[args.command]._option_string_actions}
        short = [word for word in argv if word.startswith("--") and word.split("=")[0] not in spelled]
        if short:  # argparse takes a flag's prefix, until a new flag shares it: a doc spells flags out
            pytest.fail(f"{where}\n  abbreviates {short}: spell the flag out")
        try:
            check_values(args)
        except (ValueError, AssertionError) as error:
            pytest.fail(f"{where}\n  names what does not exist: {error}")


def rnnlab_argv(text: str) -> list[str]:
    """The words after the `rnnlab` program of a command line (`.venv/bin/rnnlab`, `python -m rnnlab`)."""
    argv = words(text)
    for i, word in enumerate(argv):
        if word == "rnnlab" and i > 0 and argv[i - 1] == "-m" or word.split("/")[-1] == "rnnlab":
            return argv[i + 1:]
    raise AssertionError(f"no rnnlab in {text!r}")


# --- the checks: each raises (pytest.fail or AssertionError) where the example is wrong --------------


def check_python(block: Example) -> None:
    exec(compile(block.text, f"{block.doc}:{block.line}", "exec"), {"__name__": "readme_example"})


def check_command(example: Example) -> None:
    check_rnnlab(rnnlab_argv(example.text), example)


def check_torchrun(example: Example) -> None:
    from torch.distributed.run import get_args_parser

    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        try:
            launch = get_args_parser().parse_args(words(example.text)[1:])
        except SystemExit:
            pytest.fail(f"{example}\n  torchrun refuses it: {said.getvalue().strip().splitlines()[-1]}")
    assert launch.module and launch.training_script == "rnnlab", f"{example}: not `torchrun ... -m rnnlab ...`"
    check_rnnlab(launch.training_script_args, example)


def make_targets() -> set[str]:
    """The Makefile's targets, its variables (`STAMP := $(VENV)/.installed`) expanded."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*?)\s*$", text, re.M))

    def expand(value: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: expand(variables.get(m.group(1), "")), value)

    return {expand(target) for line in re.findall(r"^([^\s#:=][^:=]*):(?!=)", text, re.M) for target in line.split()
            if not target.startswith(".PHONY")}


def check_make(example: Example) -> None:
    targets = [word for word in words(example.text)[1:] if not word.startswith("-") and "=" not in word]
    missing = set(targets) - make_targets()
    assert not missing, f"{example}: no target {sorted(missing)} in the Makefile ({sorted(make_targets())})"


def check_pip(example: Example) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    named = [extra for word in words(example.text) if (match := re.fullmatch(r"rnnlab\[([\w,-]+)\]", word))
             for extra in match.group(1).split(",")]
    assert named, f"{example}: names no rnnlab[EXTRA]"
    assert set(named) <= set(extras), f"{example}: no extra {sorted(set(named) - set(extras))} in pyproject.toml"


def prose_spans(doc: str) -> list[Example]:
    """The `code spans` of the doc's prose, code blocks left out; a span may run over a line break."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    for language, block in blocks(doc):  # blank each block's lines (and its fences), keeping the numbering
        fenced = language != "indented"
        for number in range(block.line - fenced, block.line + len(block.text.splitlines()) + fenced):
            lines[number - 1] = ""
    text = "\n".join(lines).replace("\\|", "|")  # `none\|dot` in a table cell
    return [Example(doc, text.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split()))
            for match in re.finditer(r"`([^`]+)`", text)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def quoted_commands() -> list[Example]:
    """The `rnnlab ...` commands the prose quotes (`rnnlab train --precision bf16`, `rnnlab seeds TASK`)."""
    return [span for doc in PROSE_DOCS for span in prose_spans(doc) if re.match(r"(?:\.venv/bin/)?rnnlab\s", span.text)]


def check_quoted_command(span: Example) -> None:
    """A command the prose quotes is checked as a command line where it is one (`rnnlab ladder adding
    --T 200`); one that leaves out what a full line needs (`rnnlab bench --generation`, `rnnlab train
    TASK`) names a command and flags that exist, and a flag's value is one of its choices."""
    argv = span.text.split()[1:]
    if not any(word == "..." or (word.isupper() and not word.startswith("-")) for word in argv):
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser_for(task_of(argv)).parse_args(argv)
                whole = True
            except SystemExit:
                whole = False
        if whole:
            return check_rnnlab(argv, span)
    commands_ = subcommands(parser_for(task_of(argv)))
    assert argv and argv[0] in commands_, f"{span}: no command {argv[:1]} (rnnlab has {sorted(commands_)})"
    command = commands_[argv[0]]
    for i, word in enumerate(argv):
        if not word.startswith("--"):
            continue
        action = command._option_string_actions.get(word)
        assert action is not None, f"{span}: `rnnlab {argv[0]}` has no flag {word}"
        value = argv[i + 1] if i + 1 < len(argv) else None
        if action.choices and value and not value.startswith("-") and value != "..." and not value.isupper():
            assert value in action.choices, f"{span}: {word} takes {sorted(action.choices)}; got {value!r}"


def quoted_flags() -> list[Example]:
    """The flags the prose quotes on their own (`--members K`, `copy --curriculum N`)."""
    return [span for doc in PROSE_DOCS for span in prose_spans(doc) if re.match(r"(?:\w+ )?--[a-z]", span.text)]


@functools.cache
def every_flag() -> dict[str, set]:
    """Each flag of every rnnlab command (train and seeds with every task's flags) and of torchrun, with
    the values it takes where it has choices (the union over the commands that have it; empty: any)."""
    from torch.distributed.run import get_args_parser

    from rnnlab.tasks import TASKS

    parsers = [get_args_parser()]
    for task in TASKS:
        parser = parser_for(task)
        parsers += [parser, *subcommands(parser).values()]
    flags: dict[str, set] = {}
    for parser in parsers:
        for flag, action in parser._option_string_actions.items():
            flags.setdefault(flag, set()).update(map(str, action.choices or ()))
    return flags


def check_quoted_flag(span: Example) -> None:
    """Each flag exists in some command; a value shown (`--pool concat`, `--attention none|dot`) is one
    of its choices where it has choices."""
    argv = [part for word in span.text.split() for part in (word.split("/") if "/--" in word else [word])]
    for i, word in enumerate(argv):
        if not word.startswith("--"):
            continue
        assert word in every_flag(), f"{span}: no rnnlab command (nor torchrun) has a flag {word}"
        value, choices = (argv[i + 1] if i + 1 < len(argv) else ""), every_flag()[word]
        if choices and value and not value.startswith("-") and not value.isupper():
            wrong = set(value.split("|")) - choices
            assert not wrong, f"{span}: {word} takes {sorted(choices)}; got {sorted(wrong)}"


def quoted_names() -> list[Example]:
    """The `rnnlab.module.name` and `R.name` the README's prose quotes, call arguments left out."""
    return [Example(span.doc, span.line, name) for doc in PROSE_DOCS for span in prose_spans(doc)
            for name in re.findall(r"(?<![\w.])((?:rnnlab|R)(?:\.[A-Za-z_]\w*)+)", span.text)]


def resolve(dotted: str):
    """What `rnnlab.module.name` or `R.name` names: the longest importable module, then its attributes."""
    parts = ("rnnlab" + dotted[1:] if dotted.startswith("R.") else dotted).split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"{getattr(found, '__name__', found)} has no {attribute!r}"
            found = getattr(found, attribute)
        return found
    raise AssertionError(f"no module {parts[0]!r}")


def check_name(name: Example) -> None:
    try:
        resolve(name.text)
    except AssertionError as error:
        raise AssertionError(f"{name}: {error}") from None


def quoted_paths() -> list[Example]:
    """The repository's files and folders the prose quotes (`docs/RESULTS.md`, `kernels/fused_cells.py`),
    and those README.md's Layout lists (`cli.py`, `explore/`); not a pattern (`tests/test_<module>.py`)."""
    path = r"(?<![\w./~-])((?:docs|tests|rnnlab|scripts|kernels|tasks|data|explore)/[\w./-]*)"
    found = [Example(span.doc, span.line, name) for doc in PROSE_DOCS for span in prose_spans(doc)
             if "<" not in span.text for name in re.findall(path, span.text)]
    layout = next(block for language, block in blocks("README.md") if block.text.lstrip().startswith("cli.py"))
    folder = ""  # an entry `data/` names its own files (vocabulary.py) on its lines
    for offset, line in enumerate(layout.text.splitlines()):
        if not line.startswith(" " * 5):  # a new entry, not a continuation line
            folder = match.group(1) if (match := re.match(r"\s*(\w+/)\s", line)) else ""
        found += [Example("README.md", layout.line + offset, name if "/" in name else folder + name)
                  for name in re.findall(r"(?<![\w./])([\w/]+\.py|\w+/(?!\w))", line)]
    return found


def check_path(path: Example) -> None:
    """The file or folder is in the repository, or in the package (the docs name rnnlab's own relative to it)."""
    assert (ROOT / path.text).exists() or (ROOT / "rnnlab" / path.text).exists(), f"{path}: no such file or folder"


# Where a bare class name the README quotes (`TrainConfig(ema_decay=D)`, `Task.parameter_groups()`) lives
SEARCHED = ("rnnlab", "rnnlab.training", "rnnlab.tasks", "rnnlab.distributed", "rnnlab.models", "rnnlab.init",
            "rnnlab.attention", "rnnlab.decoding", "rnnlab.export", "rnnlab.data.vocabulary", "rnnlab.checkpoints")
EXAMPLE_NAMES = {"MyCell"}  # what a recipe of docs/ARCHITECTURE.md asks the reader to write


def quoted_calls() -> list[Example]:
    """The Python the prose quotes with a call of rnnlab's in it (`R.Constraints(kernel=R.MaxNorm(3), ...)`)."""
    found = []
    for span in (span for doc in PROSE_DOCS for span in prose_spans(doc)):
        try:
            tree = ast.parse(python(span.text))
        except SyntaxError:
            continue
        names = [ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)]
        if any(re.match(r"(R|rnnlab)\.|[A-Z][a-z]", name) for name in names):  # not `cell(x_t, state)`, `a(z_r)`
            found.append(span)
    return found


def python(text: str) -> str:
    """A quoted call as Python: `f(kernel=k, ...)`, where `...` elides more keywords, without the `...`."""
    return re.sub(r"(=[^,()]*(?:\([^()]*\))?),\s*\.\.\.\s*\)", r"\1)", text)


def called(name: str):
    """What a quoted call's name names: `R.x`/`rnnlab.x` resolved (it must exist), a bare CapWords name
    found in SEARCHED (it must be there), or None for the example's own variables (`cell(x_t, state)`)."""
    head = name.split(".")[0]
    if head in ("R", "rnnlab"):
        return resolve(name)
    if not re.fullmatch(r"[A-Z][a-z]\w*", head) or head in EXAMPLE_NAMES:  # the example's own, or the lecture's W_hr
        return None
    module = next((importlib.import_module(m) for m in SEARCHED if hasattr(importlib.import_module(m), head)), None)
    assert module is not None, f"no {head} in {', '.join(SEARCHED)}"
    found = module
    for part in name.split("."):
        assert hasattr(found, part), f"{found.__name__ if found is module else name} has no {part!r}"
        found = getattr(found, part)
    return found


def check_call(span: Example) -> None:
    """Each call of rnnlab's the span quotes names what exists and passes what its signature takes: its
    keywords by name, no more positional arguments than it has (`...` stands for any)."""
    for node in ast.walk(ast.parse(python(span.text))):
        if not isinstance(node, ast.Call) or not re.fullmatch(r"[A-Za-z_][\w.]*", name := ast.unparse(node.func)):
            continue
        try:
            target = called(name)
        except AssertionError as error:
            raise AssertionError(f"{span}: {error}") from None
        if target is None:
            continue
        parameters = list(inspect.signature(target).parameters.values())
        if inspect.isfunction(target) and "." in name and parameters and parameters[0].name == "self":
            parameters = parameters[1:]  # `RecurrentModel.generate(batch, steps)`: a method, called on a model
        kinds = {p.kind for p in parameters}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            named = {p.name for p in parameters if p.kind != inspect.Parameter.POSITIONAL_ONLY}
            wrong = [k.arg for k in node.keywords if k.arg is not None and k.arg not in named]
            assert not wrong, f"{span}: {name} takes no {wrong} (it takes {sorted(named)})"
        elided = any(isinstance(a, ast.Starred) or (isinstance(a, ast.Constant) and a.value is Ellipsis)
                     for a in node.args)
        positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not elided and inspect.Parameter.VAR_POSITIONAL not in kinds:
            assert len(node.args) <= len(positional), (f"{span}: {name} takes {len(positional)} positional arguments "
                                                       f"({positional}); got {len(node.args)}")


CHECKS = {"python": check_python, "rnnlab": check_command, "python -m rnnlab": check_command,
          "torchrun": check_torchrun, "make": check_make, "pip": check_pip, "quoted command": check_quoted_command,
          "quoted flag": check_quoted_flag, "name": check_name, "call": check_call, "path": check_path}


# --- the tests -----------------------------------------------------------------------------------


def python_blocks() -> list[Example]:
    return [block for language, block in blocks("README.md") if language == "python"]


def test_the_docs_show_examples_of_every_kind_this_file_checks():
    # a change in the docs' layout (a fence, an indentation) that hid the examples would pass silently
    assert len(python_blocks()) >= 2
    assert len(commands("rnnlab")) >= 40
    assert commands("torchrun") and commands("make") and commands("pip")
    assert len(quoted_commands()) >= 10 and len(quoted_flags()) >= 30 and len(quoted_names()) >= 10
    assert len(quoted_calls()) >= 15 and len(quoted_paths()) >= 60


@pytest.mark.parametrize("block", python_blocks(), ids=str)
def test_a_python_block_of_the_readme_runs_as_written(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever it writes stays out of the repository
    check_python(block)


@pytest.mark.parametrize("example", commands("rnnlab") + commands("python -m rnnlab"), ids=str)
def test_a_command_line_of_the_docs_parses_and_names_what_exists(example):
    check_command(example)


@pytest.mark.parametrize("example", commands("torchrun"), ids=str)
def test_a_torchrun_line_parses_with_torchrun_and_rnnlab(example):
    check_torchrun(example)


def quoted(kind: str) -> list[Example]:
    """The prose's quotes of a command of this kind (`make test`, `pip install 'rnnlab[control]'`)."""
    return [span for doc in PROSE_DOCS for span in prose_spans(doc) if COMMAND[kind].match(span.text)]


@pytest.mark.parametrize("example", commands("make") + quoted("make"), ids=str)
def test_a_make_target_the_docs_name_is_in_the_makefile(example):
    check_make(example)


@pytest.mark.parametrize("example", commands("pip") + quoted("pip"), ids=str)
def test_a_pip_extra_the_docs_name_is_in_pyproject(example):
    check_pip(example)


@pytest.mark.parametrize("span", quoted_commands(), ids=str)
def test_a_command_the_prose_quotes_names_a_command_and_flags_that_exist(span):
    check_quoted_command(span)


@pytest.mark.parametrize("span", quoted_flags(), ids=str)
def test_a_flag_the_prose_quotes_exists_with_the_value_shown(span):
    check_quoted_flag(span)


@pytest.mark.parametrize("span", quoted_calls(), ids=str)
def test_a_call_the_prose_quotes_fits_its_signature(span):
    check_call(span)


@pytest.mark.parametrize("path", quoted_paths(), ids=str)
def test_a_file_the_docs_name_exists(path):
    check_path(path)


@pytest.mark.parametrize("name", quoted_names(), ids=str)
def test_a_python_name_the_prose_quotes_exists(name):
    check_name(name)


def fails(kind: str, example: Example) -> str:
    """What the check of `kind` says of the example ('' where it passes)."""
    try:
        CHECKS[kind](example)
    except (pytest.fail.Exception, Exception) as error:  # a Python block's own error included
        return str(error) or type(error).__name__
    return ""


# A real example of each kind (its text in the docs today) and a break a change of rnnlab or a typo makes
BREAKS = [("rnnlab", "--hidden 300", "--hiden 300", "does not parse"),
          ("rnnlab", "--hidden 300", "--hid 300", "abbreviates ['--hid']"),
          ("rnnlab", "--cell gru ", "--cell gruu ", "invalid choice: 'gruu'"),
          ("quoted command", "rnnlab ladder adding --T 200", "rnnlab ladder sentiment --T 200", "no ladder task"),
          ("rnnlab", "--T 32,128,512", "--T 0,128", "T must be"),
          ("rnnlab", "rnnlab train adding --depth 2", "rnnlab train adding --depth 0", "depth must be"),
          ("torchrun", "--nproc-per-node 2 -m", "--nproc-per-nodes 2 -m", "torchrun refuses it"),
          ("torchrun", "-m rnnlab train language", "-m rnnlab trains language", "invalid choice: 'trains'"),
          ("make", "make test ", "make tests ", "no target ['tests']"),
          ("pip", "rnnlab[export]", "rnnlab[onnx]", "no extra ['onnx']"),
          ("quoted command", "rnnlab train --precision bf16", "rnnlab train --precison bf16", "no flag --precison"),
          ("quoted command", "rnnlab train --precision bf16", "rnnlab train --precision bf61", "got 'bf61'"),
          ("quoted flag", "--pool concat", "--pooling concat", "no rnnlab command (nor torchrun) has a flag --pooling"),
          ("quoted flag", "--attention none|dot|additive", "--attention none|dot|bahdanau", "got ['bahdanau']"),
          ("quoted flag", "--node-rank 0|1", "--node_rnk 0|1", "has a flag --node_rnk"),
          ("name", "rnnlab.kernels.graphs.clear", "rnnlab.kernels.graph.clear", "has no 'graph'"),
          ("call", "pool=\"last\"", "pooling=\"last\"", "SequenceToVector takes no ['pooling']"),
          ("call", "generate(batch, steps)", "generate(batch, steps, None, None, 1)", "takes 4 positional arguments"),
          ("call", "R.MaxNorm(3)", "R.MaxNorms(3)", "has no 'MaxNorms'"),
          ("call", "TrainConfig(ema_decay", "TrainConfig(ema_decays", "TrainConfig takes no ['ema_decays']"),
          ("path", "kernels/fused_cells.py", "kernels/fused_cell.py", "no such file or folder"),
          ("path", "gradient_flow.py", "gradients.py", "no such file or folder"),
          ("python", "R.LSTMCell(", "R.LSTMCel(", "LSTMCel")]


@pytest.mark.parametrize("kind, right, wrong, said", BREAKS, ids=lambda value: str(value))
def test_each_check_fails_on_a_broken_copy_of_a_real_example(kind, right, wrong, said, tmp_path, monkeypatch):
    examples = {"python": python_blocks(), "quoted command": quoted_commands(), "quoted flag": quoted_flags(),
                "name": quoted_names(), "call": quoted_calls(), "path": quoted_paths()}.get(kind) or commands(kind)
    real = next((example for example in examples if right in example.text), None)
    assert real is not None, f"no {kind} example in the docs holds {right!r}: choose another"
    monkeypatch.chdir(tmp_path)
    assert fails(kind, real) == ""
    broken = Example(real.doc, real.line, real.text.replace(right, wrong))
    assert said in fails(kind, broken)


def test_a_command_line_is_read_as_the_shell_reads_it_with_its_placeholders_given_values():
    assert words("rnnlab translate runs/tr < in.txt 2>&1 | tee log  # one a line") == ["rnnlab", "translate", "runs/tr"]
    assert words('rnnlab sample RUN_DIR --prompt "ROMEO: I" [--top-k 10]') == [
        "rnnlab", "sample", "runs/example", "--prompt", "ROMEO: I", "--top-k", "10"]
    assert words("rnnlab train adding --T 200 --cell CELL --out runs/T200-CELL") == [
        "rnnlab", "train", "adding", "--T", "200", "--cell", "gru", "--out", "runs/T200-gru"]  # --T is a flag
    assert words("rnnlab train --hiden 300  # (today: --hiden is --hidden) (today: add --layers 2)") == [
        "rnnlab", "train", "--hidden", "300", "--layers", "2"]  # a recorded line's notes, in its comment
    assert unknown_placeholder("rnnlab bench --reps REPS")  # left out: this file has no value for REPS
    assert not unknown_placeholder('rnnlab sample x --prompt "ROMEO:"  # SOME COMMENT')


def test_a_note_on_a_recorded_line_is_applied_and_must_be_right():
    noted = next(example for example in commands("rnnlab") if "(today: add --members 1)" in example.text)
    assert fails("rnnlab", noted) == ""
    unnoted = replace(noted, text=noted.text.replace("(today: add --members 1)", ""))
    assert "add --members 1" in fails("rnnlab", unnoted)  # the reason the note is there
    assert "does not parse" in fails("rnnlab", replace(noted, text=noted.text.replace("--members", "--membres")))
    renamed = noted.text.replace("--threads 1", "--thread-count 1")
    assert "does not parse" in fails("rnnlab", replace(noted, text=renamed))
    assert fails("rnnlab", replace(noted, text=renamed + " (today: --thread-count is --threads)")) == ""


# A value of each option the README says every cell takes, to build each ladder cell with
OPTION_VALUES = {"activation": "relu", "gate_activation": "hard_sigmoid", "init": R.Init.keras(), "dropout": 0.1,
                 "recurrent_dropout": 0.1, "zoneout": 0.1, "constraints": R.Constraints(kernel=R.MaxNorm(3)),
                 "regularizers": R.Regularizers(kernel=R.L1L2(l2=1e-4)), "depth": 2, "reads_state": False}


def check_cell_options(readme: str) -> None:
    """Each option the README says every cell takes builds every ladder cell, but those named after it."""
    paragraph = readme[readme.index("Options every cell takes"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    options = list(re.finditer(r"`(\w+)=[^`]*`", paragraph))
    assert len(options) >= 8, "the paragraph's options are `name=...` spans"
    cells = {cls.__name__: cls for cls in R.LADDER.values()}
    for option, after in zip(options, [*options[1:], None]):
        name = option.group(1)
        assert name in OPTION_VALUES, f"README.md names the cell option {name}=: give it a value in OPTION_VALUES"
        refused = set()
        for cls in cells.values():
            try:
                cls(8, 16, **{name: OPTION_VALUES[name]})
            except (ValueError, TypeError):
                refused.add(cls.__name__)
        said = paragraph[option.end():after.start() if after else None]  # what the README says of this option
        named = {cell for cell in re.findall(r"`(\w+)`", said) if cell in cells}
        assert named == refused, f"README.md: {name}= is refused by {sorted(refused) or 'no cell'}; the README " \
                                 f"names {sorted(named) or 'none'} after it"


def test_the_options_every_cell_takes_build_every_ladder_cell_but_those_the_readme_names():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    check_cell_options(readme)
    with pytest.raises(AssertionError, match=r"depth= is refused by \['GRUCell', 'LayerNormLSTMCell', 'Projected"):
        check_cell_options(readme.replace("`GRUCell`, `LayerNormLSTMCell` and\n`ProjectedLSTMCell` keep depth 1", ""))
    with pytest.raises(AssertionError, match="zoneout= is refused by no cell; the README names .'GRUCell'"):
        check_cell_options(readme.replace("`zoneout=`", "`zoneout=` (not `GRUCell`)"))


def table_names(readme: str, header: str) -> list[str]:
    """The names in code spans of the first column of the README's table whose first header is `header`."""
    tables = re.findall(r"(?m)(?:^\|.*\n?)+", readme)  # runs of lines that start with |
    table = next(t for t in tables if t.split("|")[1].strip() == header)
    rows = table.splitlines()[2:]  # past the header and its --- line
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def check_tables(readme: str) -> None:
    """The README's tables of cells, implementations and tasks name each one there is, and nothing else."""
    from rnnlab import kernels
    from rnnlab.tasks import TASKS

    for header, names in (("class", {cls.__name__ for cls in R.LADDER.values()}),
                          ("implementation", {*kernels.IMPLEMENTATIONS, "auto"}), ("task", set(TASKS))):
        shown = table_names(readme, header)
        assert len(shown) == len(set(shown)) and set(shown) == names, (
            f"README.md: the table of {header}s shows {sorted(set(shown) - names) or 'nothing'} that does not exist "
            f"and lacks {sorted(names - set(shown)) or 'nothing'}")


def test_the_readme_tables_show_every_cell_implementation_and_task_there_is():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    check_tables(readme)
    with pytest.raises(AssertionError, match=r"shows \['lstm'\] that does not exist and lacks \['language'\]"):
        check_tables(readme.replace("| `language` (default)", "| `lstm` (default)"))
    with pytest.raises(AssertionError, match=r"shows nothing that does not exist and lacks \['scan'\]"):
        check_tables(readme.replace("| `scan` |", "| scan |"))
