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
