"""docs/ARCHITECTURE.md's map against the code: every module of the package is on it, and imports
point down the list of layers only (a module imports the layers listed below it and the leaves)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnnlab"


def layers_section() -> str:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    return text[text.index("## The layers"):text.index("## How a command reaches a kernel")]


def layer_ranks() -> tuple[dict[str, int], set[str]]:
    """unit -> rank (0 at the top) from the map's entries ('    cli.py   ...', '    config.py, plots.py ...'),
    and the leaves any layer may import."""
    section = layers_section()
    ranks: dict[str, int] = {}
    for line in section[:section.index("    leaves any layer may import")].splitlines():
        entry = re.match(r"^    ((?:\w+\.py|\w+/)(?:, (?:\w+\.py|\w+/))*)\s", line)
        if entry:
            rank = len(set(ranks.values()))
            for name in entry.group(1).split(", "):
                ranks[name.removesuffix(".py").removesuffix("/")] = rank
    leaves_text = section[section.index("    leaves any layer may import"):section.index("rnnlab/__init__.py")]
    leaves = set(re.findall(r"(\w+)\.py \(", leaves_text))
    return ranks, leaves


def unit_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[tuple[str, int]]:
    """The package's top-level units that `path` imports (relative imports, anywhere in the file)."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = target[:1] if target else [alias.name for alias in node.names]
            found |= {(name, node.lineno) for name in names}
    return found


def test_the_map_has_the_layers_and_leaves():
    ranks, leaves = layer_ranks()
    assert {"cli", "tasks", "training", "models", "runners", "kernels", "cells", "init"} <= set(ranks)
    assert ranks["config"] == ranks["plots"]  # one line, one rank
    assert leaves == {"errors", "checks", "progress", "tables"}


def test_every_module_is_on_the_map():
    section = layers_section()
    ranks, leaves = layer_ranks()
    missing = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".cpp", ".h", ".html") or "__pycache__" in path.parts:
            continue
        if path.parent == PACKAGE:
            unit = unit_of(path)
            if unit not in ranks and unit not in leaves and path.name != "__init__.py":
                missing.append(str(path.relative_to(PACKAGE)))
        elif path.name != "__init__.py" and not re.search(rf"\b{re.escape(path.name)}\b", section):
            missing.append(str(path.relative_to(PACKAGE)))
    assert not missing, f"docs/ARCHITECTURE.md's layers do not name {missing}"


def test_imports_point_down_only():
    ranks, leaves = layer_ranks()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package's face re-exports the core; not a layer
        me = unit_of(path)
        for target, line in imported_units(path):
            if target in (me, "__version__") or target in leaves:
                continue
            if me in leaves:
                upward.append(f"{path.relative_to(ROOT)}:{line}: the leaf {me} imports {target}")
            elif target not in ranks or me not in ranks:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {target}; one is not on the map")
            elif ranks[target] < ranks[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {target}, listed above it")
    assert not upward, "\n".join(upward)


# --- the rules the map states besides the order of the layers -----------------------------------------

def modules() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in path.parts]


def calls(tree: ast.AST):
    """(node, the called name: 'print', 'json.load', 'path.read_text', '.read_text' for a method of an
    expression)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield node, func.id
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                yield node, f"{owner}.{func.attr}"


def test_only_the_cli_prints_or_parses_argv():
    """'cli.py is the only place that parses argv or prints': no print, input, argparse or sys.argv /
    sys.stdout / sys.stderr anywhere else (a message goes up as an error, a warning or a progress report)."""
    found = []
    for path in modules():
        if path == PACKAGE / "cli.py":
            continue
        tree = ast.parse(path.read_text())
        where = path.relative_to(ROOT)
        found += [f"{where}:{node.lineno}: {name}" for node, name in calls(tree) if name in ("print", "input")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names) or \
                    isinstance(node, ast.ImportFrom) and node.module == "argparse":
                found.append(f"{where}:{node.lineno}: imports argparse")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" \
                    and node.attr in ("argv", "stdout", "stderr"):
                found.append(f"{where}:{node.lineno}: sys.{node.attr}")
    assert not found, "\n".join(found)


# What reads or writes a file: the file itself, a path's methods, torch's and json's file functions.
FILE_CALLS = {"open", ".open", ".read_text", ".read_bytes", ".write_text", ".write_bytes", ".mkdir", ".unlink",
              ".rmdir", ".iterdir", ".glob", ".rglob", "torch.load", "torch.save", "json.load", "json.dump",
              "shutil.copy", "shutil.rmtree", "subprocess.run", "subprocess.Popen", "os.remove", "os.rename"}
# The one exception the map states: the C++ modules' builder reads and writes its own build cache.
CORE_FILE_EXCEPTIONS = {"kernels/compiled.py"}


def test_the_core_reads_and_writes_no_files():
    """'The core (cells .. models) never prints, reads files or parses arguments': the units from models.py
    down the map (kernels/compiled.py's build cache excepted, as the map says) call nothing that touches a file."""
    ranks, _ = layer_ranks()
    core = {unit for unit, rank in ranks.items() if rank >= ranks["models"]}
    assert {"models", "runners", "kernels", "cells", "init"} <= core and "training" not in core
    section = layers_section()
    assert all(name in section for name in CORE_FILE_EXCEPTIONS)
    found = []
    for path in modules():
        if unit_of(path) not in core or str(path.relative_to(PACKAGE)) in CORE_FILE_EXCEPTIONS:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for node, name in calls(ast.parse(path.read_text()))
                  if name in FILE_CALLS or "." + name.rpartition(".")[2] in FILE_CALLS]
    assert not found, "\n".join(found)


def capability_members() -> set[str]:
    """The names the capabilities of tasks/base.py declare (TextGenerator's sample_text, Baselined's baseline...)."""
    tree = ast.parse((PACKAGE / "tasks" / "base.py").read_text())
    members = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name != "Task":
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
    return members


def test_capabilities_are_inherited_never_probed():
    """A task's capabilities are declared by inheritance (tasks/base.py) and asked with issubclass /
    isinstance, never with hasattr or getattr on one of their members."""
    members = capability_members()
    assert {"sample_text", "prompt_ids", "continuation", "translate", "caption", "baseline"} <= members
    found = []
    for path in modules():
        for node, name in calls(ast.parse(path.read_text())):
            if name in ("hasattr", "getattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in members:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}(..., {node.args[1].value!r})")
    assert not found, "\n".join(found)


def imported_modules(path: Path) -> set[tuple[str, int]]:
    """The package's modules that `path` imports, dotted below rnnlab ('tasks' for tasks/__init__.py,
    'tasks.base'); `from . import name` counts as the module `name` where there is one, else as the package."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                folder = PACKAGE.joinpath(*target)
                is_module = (folder / f"{alias.name}.py").exists() or (folder / alias.name).is_dir()
                found.add((".".join(target + [alias.name] if is_module else target), node.lineno))
    return found


def test_inside_a_package_modules_never_import_its_init():
    """tasks/, data/, kernels/, explore/: the files import one another, never their package's __init__.py
    (the registry, the dispatch), which imports them."""
    found = []
    for path in modules():
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2 or path.name == "__init__.py":
            continue
        found += [f"{path.relative_to(ROOT)}:{line}: imports {module}/__init__.py"
                  for module, line in imported_modules(path) if module == parts[0]]
    assert not found, "\n".join(found)


# What the map says a package's files import outside the package (besides the leaves, where allowed).
REACH = {"data": ("imports nothing of rnnlab outside", set()),
         "kernels": ("imports cells and the leaves", {"cells", "leaves"}),
         "tasks/base.py": ("imports training only", {"training"})}


def test_packages_import_only_what_the_map_says():
    """data/ imports nothing of rnnlab outside data/ (not even the leaves), kernels/ only cells and the leaves,
    tasks/base.py only training: the map's entries say so."""
    section = layers_section()
    assert all(said in section for said, _ in REACH.values())
    _, leaves = layer_ranks()
    found = []
    for path in modules():
        where = str(path.relative_to(PACKAGE))
        rule = REACH.get(where) or REACH.get(unit_of(path))
        if rule is None:
            continue
        allowed = rule[1] | (leaves if "leaves" in rule[1] else set())
        for module, line in imported_modules(path):
            unit = module.split(".")[0]
            if unit != unit_of(path) and unit not in allowed:
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {module}; the map says it {rule[0]}")
    assert not found, "\n".join(found)


def test_no_module_imports_the_package_by_its_absolute_name():
    """Imports inside rnnlab are relative, so that the checks above see every one (an absolute `import
    rnnlab.x` would pass them unseen)."""
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                      if name == "rnnlab" or name.startswith("rnnlab.")]
    assert not found, "\n".join(found)


def test_the_package_has_no_assert():
    """Input is checked with one-line errors naming the argument, never `assert` (which `python -O` drops)."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in modules()
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert not found, "\n".join(found)


# --- docs/RELIABILITY.md: each promise names the tests that keep it -------------------------------------

def defined_tests() -> dict[str, set[str]]:
    """test file name -> the functions it defines."""
    return {path.name: {node.name for node in ast.walk(ast.parse(path.read_text()))
                        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for path in (ROOT / "tests").glob("*.py")}


def reliability_references() -> list[tuple[str, str, str]]:
    """(line's start, test file, test name) for every test docs/RELIABILITY.md names: `tests/FILE::TEST`,
    `FILE::TEST`, `::TEST` (the file named last in the same table cell) and, in the section of the command
    line's bad input, a bare `TEST` (tests/test_cli.py, as the section says)."""
    references, default = [], None
    for line in (ROOT / "docs" / "RELIABILITY.md").read_text().splitlines():
        if line.startswith("#"):
            default = "test_cli.py" if line.startswith("### Bad input on the command line") else None
        for cell in line.split(" | "):
            current = None
            for match in re.finditer(r"`(?:tests/)?(test_\w+\.py)?(::)?(test_\w+)?`", cell):
                file, colons, name = match.groups()
                current = file or current
                if name:
                    references.append((line[:60], (current or default) if (file or colons) else default, name))
    return references


def test_every_test_reliability_names_exists():
    """A promise is kept by the tests its row names: each must be a test of the file it names."""
    tests, references = defined_tests(), reliability_references()
    assert len(references) > 150  # the parser reads the tables
    unknown = [f"{start}...: {file}::{name}" for start, file, name in references
               if file is None or name not in tests.get(file, ())]
    assert not unknown, "docs/RELIABILITY.md names tests that do not exist:\n" + "\n".join(unknown)


def test_make_run_trains_on_one_thread_for_at_most_five_minutes():
    """RELIABILITY's "Long phases": `make run` trains with --threads 1 (two threads collapse on a busy 2-core
    machine) and caps its training at 5 minutes."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no run target"
    train = [line for line in recipe.group(1).splitlines() if "rnnlab train" in line]
    assert train and all("--threads 1" in line and "--max-minutes 5" in line for line in train), recipe.group(1)
    reliability = (ROOT / "docs" / "RELIABILITY.md").read_text()
    assert "`make run` trains on one thread (`--threads 1`)" in reliability and "capped at 5 minutes" in reliability
