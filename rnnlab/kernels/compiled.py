"""The optional C++ modules (`MODULES`: `loops.cpp`, the time loops of `fused` for the ladder cells and the
linear recurrence of `scan`; `cell_loops.cpp`, those of the peephole, layer-norm and projected LSTMs;
`generate.cpp`, free-running generation), each compiled once and cached outside the package
(~/.cache/rnnlab, or $RNNLAB_CACHE).
It only removes per-step Python overhead: results are the Python loops'. Where it cannot be built
(no compiler, ninja or Python headers) `extension()` is None and the Python loops serve;
RNNLAB_NO_EXTENSION=1 turns it off.

The cache, one build per key and nothing else:
- the key is everything the binary depends on: the source and the local headers it includes, and
  theirs in turn (`local_headers`: team.h, products.h, activations.h, ...), the flags, torch's
  version, Python's ABI, the compiler (its path and version) and the CPU's instruction set (the
  build uses -march=native, so a cache shared between machines, e.g. a home directory on a network
  disk, must never hand one CPU's binary to another). The build lives in a folder named by a hash of
  the key, with a copy of the source, so that nothing in it names the environment that built it;
- a built library is loaded directly (importlib) only after its SHA-256 matches the one recorded
  when it was built: a changed or swapped file is rebuilt, never run. Loading never invokes ninja,
  so two environments (two venvs, two ninja binaries) share one build instead of rebuilding;
- a build runs in a child process under `BUILD_SECONDS` with an exclusive lock (flock: the kernel
  releases it when its holders die, so kill -9 or a closed terminal leave no lock that holds; the
  child inherits it, so a child orphaned by kill -9 of its parent finishes and records its build
  under the lock). Any lock file torch's builder left behind is stale once the lock is ours, and is
  removed. A process that finds another building waits at most until that build is `BUILD_SECONDS`
  old, then falls back to the Python loops: nothing waits without a bound.
What it does (building, waiting, falling back) is said in one line each as a `BuildNote` warning:
the core never prints, and the CLI shows warnings on stderr.

Flags: -O3 -march=native, -fopenmp-simd for the `omp simd` loops, -fopenmp where torch's ATen is
built on OpenMP (without it the loops' one parallel region per time loop, team.h, and
at::parallel_for compile to serial code: the steps ran on one thread whatever torch.set_num_threads
said; the OpenMP calls resolve to the runtime torch has loaded, so both share one thread pool),
and ATen's AVX-512 or AVX2 vector functions, as torch's own kernels use on this CPU.
No -ffast-math: it lets the compiler assume that no NaN or inf occurs, and measured no faster here
(LSTM, B = 1 and 32).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

NAME = "rnnlab_loops"
SOURCE = Path(__file__).with_name("loops.cpp")
# Every C++ module, by name: each is built, cached and verified alone (one concept per file; a change
# to one rebuilds only that one). `extension(name)` loads one; NAME is the time loops of `fused`/`scan`.
MODULES: dict[str, Path] = {NAME: SOURCE}
MODULES["rnnlab_cell_loops"] = SOURCE.with_name("cell_loops.cpp")  # fused_cells.py: the peephole, LN, projected LSTMs
MODULES["rnnlab_generate"] = SOURCE.with_name("generate.cpp")  # free-running generation (generation.py)
FLAGS = ["-O3", "-march=native", "-fopenmp-simd"]
if torch.__config__.parallel_info().find("ATen parallel backend: OpenMP") >= 0:
    FLAGS += ["-fopenmp"]
# ATen's Vectorized<T> at the width torch's own CPU kernels use here, whose exp and tanh are SLEEF's as in
# those kernels (without a capability the activations are ATen's scalar fallback: correct, about 3x slower).
# 512 bits where torch dispatches to AVX-512: the LSTM's forward 1.11-1.17 -> 1.04-1.05x torch.nn.LSTM at
# (32, 128, 100) on an AVX-512 EPYC (docs/BENCHMARKS.md "AVX-512").
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512",
               "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}
FLAGS += CAPABILITY_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])
# Longer than a build can take: measured 30-270 s on a busy 2-core machine (270 s at a load average
# of 15). A build running longer is stopped; a lock held longer is not waited for.
BUILD_SECONDS = 1200.0
LIBRARY_SUFFIX = ".pyd" if sys.platform == "win32" else ".so"  # what torch's builder writes
_LOCK = ".rnnlab-build.lock"


class BuildNote(UserWarning):
    """One line on what the compiled loops are doing: building, waiting for a build, falling back."""


def _note(message: str) -> None:
    warnings.warn(f"rnnlab: {message}", BuildNote, stacklevel=3)


def cache_root() -> Path:
    return Path(os.environ.get("RNNLAB_CACHE", Path.home() / ".cache" / "rnnlab"))


@functools.cache
def compiler() -> str:
    """The C++ compiler torch's builder runs ($CXX, else c++): its resolved path and version line;
    'none' where there is none."""
    path = shutil.which(os.environ.get("CXX", "c++"))
    if path is None:
        return "none"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "none"
    lines = version.splitlines()
    return f"{os.path.realpath(path)}: {lines[0] if lines else '?'}"


@functools.cache
def instruction_set() -> str:
    """What -march=native compiles for: the machine and its CPU's feature flags."""
    features = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                features = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    if not features:  # no /proc (macOS, Windows): what Python and torch can tell
        features = f"{platform.processor()} {torch.backends.cpu.get_cpu_capability()}"
    return f"{platform.machine()}: {features}"


_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def local_headers(source: Path) -> list[Path]:
    """The headers in the folder of `source` that it includes (`#include "name.h"`, and theirs in turn), in
    the order first included: the build copies them next to its copy of the source, and the key hashes
    them. A quoted name with no such file there is the compiler's to find (a system header), not ours."""
    found: list[Path] = []
    pending = [source]
    while pending:
        for name in _LOCAL_INCLUDE.findall(pending.pop(0).read_text()):
            header = source.parent / name
            if "/" not in name and header.is_file() and header not in found:
                found.append(header)
                pending.append(header)
    return found


def build_key(source: Path = SOURCE, flags: list[str] = FLAGS) -> dict[str, object]:
    """Everything the built library depends on."""
    return {"source": _digest(source),
            "headers": {header.name: _digest(header) for header in local_headers(source)}, "flags": list(flags),
            "torch": torch.__version__, "python": sys.implementation.cache_tag, "platform": sys.platform,
            "compiler": compiler(), "cpu": instruction_set()}


def build_directory(name: str = NAME, source: Path = SOURCE, flags: list[str] = FLAGS) -> Path:
    """The one folder of the build for this key."""
    digest = hashlib.sha256(json.dumps(build_key(source, flags), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"{name}-{digest}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified(directory: Path, name: str = NAME, key: dict | None = None) -> Path | None:
    """The library in `directory` if its SHA-256 and key are the ones recorded when it was built; else None."""
    library, manifest = directory / f"{name}{LIBRARY_SUFFIX}", directory / f"{name}.manifest.json"
    try:
        record = json.loads(manifest.read_text())
        if record["sha256"] == _digest(library) and (key is None or record["key"] == key):
            return library
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def built(name: str = NAME) -> bool:
    """Whether a verified build of module `name` is cached for this machine, so that `extension(name)`
    loads it instead of compiling."""
    source = MODULES[name]
    return verified(build_directory(name, source), name, key=build_key(source)) is not None


def build_all() -> bool:
    """Build (or load) every module; whether all of them are usable (`make` runs this before timing)."""
    return all([extension(name) is not None for name in MODULES])


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; where none is there, use the ninja package's (a
    dependency of rnnlab), which a virtual environment's PATH may not include."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _import(name: str, library: Path):
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _exclusive(directory: Path, timeout: float):
    """Hold the build lock of `directory` for the block. Yields the lock's file descriptor (the build
    child inherits it, so that a build orphaned by kill -9 of its parent keeps the lock until it is
    done), None where there are no locks, False (not held) when another live process has held it for
    `timeout` seconds since its build started."""
    path = directory / _LOCK
    with open(path, "a+") as handle:
        held = _acquire(handle, path, directory, timeout)
        if held:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
            handle.flush()
        try:
            yield handle.fileno() if held else held
        finally:
            if held:
                handle.truncate(0)
                _unlock(handle)


def _acquire(handle, path: Path, directory: Path, timeout: float) -> bool | None:
    """True once the lock is ours; False after waiting `timeout` from the holder's start; None where
    the file system or platform has no locks (then the build runs unlocked, as torch's would)."""
    try:
        import fcntl
    except ImportError:
        return None
    first = None
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError:
            return None
        holder = _holder(path)
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
        if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
            who = f"the build child of process {holder.get('pid')} (stopped)"  # it inherited the lock
        if first is None:
            first = time.time()
            _note(f"waiting for {who}, which is building the C++ loops in {directory} "
                  f"(at most {timeout:.0f} s from its start)")
        started = holder.get("started", first)
        if time.time() - min(started if isinstance(started, (int, float)) else first, first) > timeout:
            _note(f"{who} has held the build lock {path} for more than {timeout:.0f} s; using the Python loops")
            return False
        time.sleep(0.2)


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        pass
    return True


def _unlock(handle) -> None:
    import fcntl

    fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text() or "{}")
        if isinstance(record, dict):
            return record
    return {}


# The child: build, then record the library's hash itself, so that a build orphaned by kill -9 of
# its parent (it holds the inherited lock until it exits) leaves a verified library, not a stale one.
_BUILD = """
import hashlib, json, os, sys
from torch.utils.cpp_extension import load
a = json.loads(sys.argv[1])
load(a["name"], [a["source"]], build_directory=a["directory"], extra_cflags=a["flags"], verbose=False)
with open(a["library"], "rb") as library:
    record = json.dumps({"sha256": hashlib.sha256(library.read()).hexdigest(), "key": a["key"]}, indent=1)
with open(a["manifest"] + ".tmp", "w") as manifest:
    manifest.write(record)
os.replace(a["manifest"] + ".tmp", a["manifest"])
"""


# `file.cpp:2:15: error: ...`, `fatal error: Python.h: ...`, `/usr/bin/ld: cannot find -lc10`
_DIAGNOSTIC = re.compile(r": (?:fatal )?error: |: cannot find ")


def _compile(directory: Path, name: str, source: Path, flags: list[str], timeout: float, key: dict | None = None,
             lock: int | None = None) -> str | None:
    """Build in a child process (bounded by `timeout`; it inherits the `lock` descriptor); None on
    success, else why it failed (one line)."""
    _find_ninja()
    arguments = json.dumps({"name": name, "source": str(source), "directory": str(directory), "flags": flags,
                            "key": key, "library": str(directory / f"{name}{LIBRARY_SUFFIX}"),
                            "manifest": str(directory / f"{name}.manifest.json")})
    # The child writes to a log file, not to pipes of ours: orphaned by kill -9 of this process, it
    # would die of the first line it printed into a pipe nobody reads (torch 2.4's CUDA builds print
    # one as cpp_extension is imported), and leave no library.
    log = directory / f"{name}.build.log"
    try:
        with open(log, "w") as output:
            done = subprocess.run([sys.executable, "-c", _BUILD, arguments], stdout=output, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, pass_fds=() if lock is None else (lock,))
    except subprocess.TimeoutExpired:
        return f"the build took longer than {timeout:.0f} s and was stopped"
    except OSError as error:
        return str(error)
    if done.returncode != 0:  # the compiler's first error says more than ninja's last line
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        # the compiler's and the linker's own words first: torch's traceback before them quotes its
        # `raise CalledProcessError(...` line, which holds "error" too
        errors = [line for line in lines if _DIAGNOSTIC.search(line)] or \
            [line for line in lines if "error" in line.lower() or "not found" in line.lower()]
        return (errors or lines or [f"exit status {done.returncode}"])[0][:300]
    return None


def load_or_build(directory: Path, name: str = NAME, source: Path = SOURCE, flags: list[str] = FLAGS,
                  timeout: float = BUILD_SECONDS):
    """The module built from `source` in `directory`: loaded when verified, else built first. None
    (with a note) when it cannot be built or loaded here."""
    key = build_key(source, flags)
    library = verified(directory, name, key)
    if library is None:
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(directory, timeout) as lock:
            if lock is False:
                return None
            library = verified(directory, name, key)  # another process may have built it while we waited
            if library is None:
                reason = _build(directory, name, source, flags, key, timeout, lock)
                if reason is not None:
                    _note(f"cannot build the C++ loops ({reason}); using the Python loops")
                    return None
                library = verified(directory, name, key)
    try:
        return _import(name, library)
    except Exception as error:  # noqa: BLE001 - whatever a foreign binary does on import, use Python's loops
        _note(f"cannot load the C++ loops {library} ({type(error).__name__}: {error}); using the Python loops")
        return None


def _build(directory: Path, name: str, source: Path, flags: list[str], key: dict, timeout: float,
           lock: int | None = None) -> str | None:
    """Clear `directory` (we hold its lock), build from a copy of the source, record the library's hash."""
    leftovers = sorted(p.name for p in directory.iterdir() if p.name != _LOCK)
    if (directory / "lock").exists():
        _note(f"removing a stale build lock {directory / 'lock'} left by a stopped build")
    elif f"{name}{LIBRARY_SUFFIX}" in leftovers:
        _note(f"the cached C++ loops in {directory} do not match the hash recorded when they were built; rebuilding")
    for entry in leftovers:
        path = directory / entry
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    copy = directory / source.name
    shutil.copyfile(source, copy)
    for header in local_headers(source):  # beside the copy, where its #include "..." finds them
        shutil.copyfile(header, directory / header.name)
    _note(f"building the C++ loops for this CPU, compiler and torch in {directory} (once; 1-3 minutes, "
          f"at most {timeout:.0f} s); RNNLAB_NO_EXTENSION=1 uses the Python loops instead")
    reason = _compile(directory, name, copy, flags, timeout, key=key, lock=lock)
    if reason is not None:
        return reason
    library = directory / f"{name}{LIBRARY_SUFFIX}"
    if not library.exists():
        return f"no {library.name} after the build"
    manifest = directory / f"{name}.manifest.json"
    manifest.with_suffix(".tmp").write_text(json.dumps({"sha256": _digest(library), "key": key}, indent=1))
    os.replace(manifest.with_suffix(".tmp"), manifest)
    return None


@functools.cache
def extension(name: str = NAME):
    """The compiled module `name` (a key of MODULES), or None when it cannot be built or loaded here."""
    if os.environ.get("RNNLAB_NO_EXTENSION"):
        return None
    source = MODULES[name]
    try:
        return load_or_build(build_directory(name, source), name, source)
    except OSError as error:  # an unwritable cache, a full disk: the Python loops serve
        _note(f"cannot use the C++ loop cache {cache_root()} ({error}); using the Python loops")
        return None


DTYPES = (torch.float32, torch.float64)  # what loops.cpp is compiled for (AT_DISPATCH_FLOATING_TYPES)


def serves(device: torch.device | str, dtype: torch.dtype, name: str = NAME) -> bool:
    """Whether the compiled module can run tensors of this device and dtype (built, CPU, float or double)."""
    return torch.device(device).type == "cpu" and dtype in DTYPES and extension(name) is not None


def extension_for(like: torch.Tensor, name: str = NAME):
    """The compiled module `name` for tensors like `like`, or None where it cannot run them."""
    return extension(name) if serves(like.device, like.dtype, name) else None
