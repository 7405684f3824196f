"""The optional C++ time loops (`lstm_loop.cpp`), compiled at first use with torch.utils.cpp_extension
and cached outside the package (~/.cache/rnnlab, or $RNNLAB_CACHE). Where no compiler (or ninja, or
the Python headers) is found, `extension()` is None and the Python loops serve; RNNLAB_NO_EXTENSION=1
turns it off. It only removes per-step Python overhead: results are the Python loop's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


def build_directory() -> Path:
    cache = Path(os.environ.get("RNNLAB_CACHE", Path.home() / ".cache" / "rnnlab"))
    return cache / f"torch-{torch.__version__}"


def built() -> bool:
    """Whether a build is cached, so that `extension()` loads it instead of compiling (about a minute)."""
    return (build_directory() / "rnnlab_loops.so").exists()


@functools.cache
def extension():
    """The compiled module, or None when it cannot be built here."""
    if os.environ.get("RNNLAB_NO_EXTENSION"):
        return None
    build = build_directory()
    try:
        from torch.utils.cpp_extension import load

        build.mkdir(parents=True, exist_ok=True)
        return load("rnnlab_loops", [str(Path(__file__).with_name("lstm_loop.cpp"))], build_directory=str(build),
                    extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"], verbose=False)
    except Exception:  # any failure to build (no compiler, headers, ninja) means: use the Python loop
        return None
