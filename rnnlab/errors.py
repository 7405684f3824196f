"""rnnlab's own error types: a user's mistake or a fault of the environment, never a bug of ours.

The CLI prints each as one line (`rnnlab: error: ...`); anything else is a bug and keeps its
traceback. Each type is also a built-in one (ValueError, OSError) so that code catching those keeps
working.

    RnnlabError
      RunDirError(ValueError)     a run directory that cannot be used as asked: not a run, a file,
                                  data changed since the run was made
        RunLockedError            another process trains into it (names that process)
      WriteError(OSError)         a file of the run could not be written (full disk, no permission)
"""

from __future__ import annotations

__all__ = ["RnnlabError", "RunDirError", "RunLockedError", "WriteError"]


class RnnlabError(Exception):
    """Base of the errors rnnlab raises for what a user gave or what the machine did."""


class RunDirError(RnnlabError, ValueError):
    """A run directory that cannot serve as asked."""


class RunLockedError(RunDirError):
    """Another live process holds the run directory's lock."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


class WriteError(RnnlabError, OSError):
    """A file could not be written; the files written before are intact. Built as
    WriteError(errno, message); str() is the message alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()
