"""The one table printer. `rnnlab complexity`, `gradients` and `ladder` return typed results whose
`table()` is a `Table`; the CLI prints it with `markdown`, so every table pastes into
docs/RESULTS.md or docs/BENCHMARKS.md as it is."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Table", "markdown"]


@dataclass(frozen=True)
class Table:
    """headers (C,), rows of C formatted cells each; `numeric` marks the right-aligned columns."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()

    def __post_init__(self):
        columns = len(self.headers)
        if self.numeric and len(self.numeric) != columns:
            raise ValueError(f"Table: numeric must have one flag per column ({columns}); got {len(self.numeric)}")
        for row in self.rows:
            if len(row) != columns:
                raise ValueError(f"Table: every row must have {columns} cells; got {len(row)}: {row!r}")


def markdown(table: Table) -> str:
    """The table as Markdown: a header row, an alignment row ('---:' for numeric columns), the rows."""
    numeric = table.numeric or (False,) * len(table.headers)
    lines = [table.headers, tuple("---:" if n else "---" for n in numeric), *table.rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
