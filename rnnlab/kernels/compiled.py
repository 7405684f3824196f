"""The optional C++ loops (`loops.cpp`: the time loops of `fused` for every ladder cell, and the linear
recurrence of `scan`), compiled at first use with torch.utils.cpp_extension and cached outside the
package (~/.cache/rnnlab, or $RNNLAB_CACHE), in a folder named by torch's version and a hash of the
source, so that a changed source is rebuilt and never loads a stale build. The first use compiles
for about 40 to 90 s (one translation unit, most of it torch's headers); later uses load the cached
build in well under a second. Where no compiler (or ninja, or the Python headers) is found,
`extension()` is None and the Python loops serve; RNNLAB_NO_EXTENSION=1 turns it off. It only removes
per-step Python overhead: results are the Python loops'.

Flags: -O3 -march=native, -fopenmp-simd for the `omp simd` loops, and ATen's AVX2 vector functions
where the CPU has them. No -ffast-math: it lets the compiler assume that no NaN or inf occurs, and
measured no faster here (LSTM, B = 1 and 32).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("loops.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd"]
if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
    # ATen's 256-bit Vectorized<T>, whose exp and tanh are SLEEF's as in torch's own CPU kernels
    # (without this the activations are ATen's scalar fallback: correct, and about 3x slower)
    FLAGS += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


def build_directory() -> Path:
    cache = Path(os.environ.get("RNNLAB_CACHE", Path.home() / ".cache" / "rnnlab"))
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]
    return cache / f"torch-{torch.__version__}" / digest


def built() -> bool:
    """Whether a build is cached, so that `extension()` loads it instead of compiling."""
    return (build_directory() / "rnnlab_loops.so").exists()


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; where none is there, use the ninja package's (a
    dependency of rnnlab), which a virtual environment's PATH may not include."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def extension():
    """The compiled module, or None when it cannot be built here."""
    if os.environ.get("RNNLAB_NO_EXTENSION"):
        return None
    build = build_directory()
    try:
        from torch.utils.cpp_extension import load

        _find_ninja()
        build.mkdir(parents=True, exist_ok=True)
        return load("rnnlab_loops", [str(SOURCE)], build_directory=str(build), extra_cflags=FLAGS, verbose=False)
    except Exception:  # any failure to build (no compiler, headers, ninja) means: use the Python loops
        return None


DTYPES = (torch.float32, torch.float64)  # what loops.cpp is compiled for (AT_DISPATCH_FLOATING_TYPES)


def serves(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the compiled loops can run tensors of this device and dtype (built, CPU, float or double)."""
    return torch.device(device).type == "cpu" and dtype in DTYPES and extension() is not None


def extension_for(like: torch.Tensor):
    """The compiled module for tensors like `like`, or None where it cannot run them."""
    return extension() if serves(like.device, like.dtype) else None
