"""Progress of long loops, reported without printing: the core calls `advance(done, total)`; whoever
shows progress (the CLI) listens with `reporting(callback)`. Nobody listening: nothing happens.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from contextlib import contextmanager

__all__ = ["advance", "reporting"]

_listener: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar("progress", default=None)


def advance(done: int, total: int) -> None:
    """Tell the listener, if any, that `done` of `total` units of the current phase are done."""
    listener = _listener.get()
    if listener is not None:
        listener(done, total)


@contextmanager
def reporting(callback: Callable[[int, int], None]):
    """Within this block, `advance` calls `callback(done, total)`."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)
