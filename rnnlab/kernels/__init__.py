"""Implementations of the time loop behind one dispatch function.

`run(cell, xs, state, y_prev, lengths, masks, implementation)` returns (outputs, final_state).
`reference` is the oracle every other implementation is tested against.
"""

from __future__ import annotations

from .reference import reference, valid_steps, where_state

IMPLEMENTATIONS = {"reference": reference}


def available(cell, implementation: str, **context) -> str | None:
    """Why `implementation` cannot serve this configuration, or None if it can."""
    if implementation == "reference":
        return None
    return f"implementation {implementation!r} is not built yet"


def choose(cell, implementation: str, **context) -> str:
    """Resolve 'auto' to the fastest implementation valid for this configuration."""
    if implementation != "auto":
        return implementation
    return "reference"


def run(cell, xs, state, y_prev, lengths, masks, implementation: str = "auto"):
    return IMPLEMENTATIONS[choose(cell, implementation)](cell, xs, state, y_prev, lengths, masks)


__all__ = ["run", "choose", "available", "reference", "valid_steps", "where_state", "IMPLEMENTATIONS"]
