"""The C++ loop cache and build (rnnlab/kernels/compiled.py) under faults: a stale lock never hangs, a
live one is waited for with a bound, a swapped library never loads, the key changes with everything
the binary depends on; and the C++ entry points refuse wrong calls before touching memory.

Only one test compiles anything (a ten-line module, not the loops); the others replace the compiler."""

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from rnnlab.kernels import compiled

from conftest import EXTENSION

PROBE = textwrap.dedent("""\
    // the smallest module torch's builder can build and Python import
    #include <Python.h>
    #define CAT_(a, b) a##b
    #define CAT(a, b) CAT_(a, b)
    static struct PyModuleDef probe = {PyModuleDef_HEAD_INIT, "probe", nullptr, -1, nullptr};
    PyMODINIT_FUNC CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&probe); }
    """)


def notes_of(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, compiled.BuildNote)]


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """A compiler that writes b'genuine' as the library, and an import that records the bytes it loads."""
    calls = {"compiled": 0, "imported": []}

    def compile_(directory, name, source, flags, timeout, **context):
        calls["compiled"] += 1
        (directory / f"{name}{compiled.LIBRARY_SUFFIX}").write_bytes(b"genuine")
        return None

    def import_(name, library):
        calls["imported"].append(library.read_bytes())
        return f"module from {library.name}"

    monkeypatch.setattr(compiled, "_compile", compile_)
    monkeypatch.setattr(compiled, "_import", import_)
    source = tmp_path / "probe.cpp"
    source.write_text(PROBE)
    return calls, tmp_path / "cache" / "probe", source


def test_swapped_library_is_rebuilt_never_loaded(fake_build):
    calls, directory, source = fake_build
    with pytest.warns(compiled.BuildNote, match="building the C\\+\\+ loops"):
        assert compiled.load_or_build(directory, "probe", source, []) is not None
    assert calls["compiled"] == 1 and calls["imported"] == [b"genuine"]
    assert compiled.load_or_build(directory, "probe", source, []) is not None  # verified: loaded, not rebuilt
    assert calls["compiled"] == 1
    library = directory / f"probe{compiled.LIBRARY_SUFFIX}"
    library.write_bytes(b"swapped")
    assert compiled.verified(directory, "probe") is None
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compiled.load_or_build(directory, "probe", source, [])
    assert any("do not match the hash recorded" in n for n in notes_of(record))
    assert calls["compiled"] == 2 and b"swapped" not in calls["imported"]


def test_a_library_recorded_for_another_key_is_not_loaded(fake_build):
    """A manifest whose key differs (another CPU's build in a shared cache) does not verify."""
    calls, directory, source = fake_build
    with pytest.warns(compiled.BuildNote, match="building"):
        compiled.load_or_build(directory, "probe", source, [])
    manifest = directory / "probe.manifest.json"
    record = json.loads(manifest.read_text())
    record["key"]["cpu"] = "x86_64: sse sse2"
    manifest.write_text(json.dumps(record))
    assert compiled.verified(directory, "probe", compiled.build_key(source, [])) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", compiled.BuildNote)
        compiled.load_or_build(directory, "probe", source, [])
    assert calls["compiled"] == 2


def test_the_key_names_what_the_binary_depends_on(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    base = compiled.build_directory()
    assert base.parent == tmp_path and base == compiled.build_directory()  # one folder per key
    key = compiled.build_key()
    assert set(key) >= {"source", "flags", "torch", "compiler", "cpu"}
    assert compiled.build_directory(flags=compiled.FLAGS + ["-O2"]) != base
    other_source = tmp_path / "loops.cpp"
    other_source.write_text(compiled.SOURCE.read_text() + "\n// changed\n")
    assert compiled.build_directory(source=other_source) != base
    for name, value in (("instruction_set", lambda: "x86_64: sse sse2"), ("compiler", lambda: "clang 3")):
        with monkeypatch.context() as patch:
            patch.setattr(compiled, name, value)
            assert compiled.build_directory() != base, name
    with monkeypatch.context() as patch:
        patch.setattr(torch, "__version__", "0.0.1")
        assert compiled.build_directory() != base


def test_the_key_hashes_the_local_headers_a_module_includes(tmp_path):
    """Editing a header rebuilds every module that includes it (directly or through another header);
    system headers and headers of other folders are the compiler's, not hashed."""
    (tmp_path / "first.h").write_text('#pragma once\n#include "second.h"\n')
    (tmp_path / "second.h").write_text("#pragma once\n")
    (tmp_path / "unrelated.h").write_text("// not included\n")
    source = tmp_path / "module.cpp"
    source.write_text('#include <vector>\n#include "first.h"\n#  include "first.h"\n#include "Python.h"\nint x;\n')
    assert compiled.local_headers(source) == [tmp_path / "first.h", tmp_path / "second.h"]
    key = compiled.build_key(source, [])
    assert set(key["headers"]) == {"first.h", "second.h"}
    directory = compiled.build_directory("module", source, [])
    for header in ("first.h", "second.h"):
        (tmp_path / header).write_text((tmp_path / header).read_text() + "// edited\n")
        assert compiled.build_key(source, []) != key, header
        assert compiled.build_directory("module", source, []) != directory, header
        key, directory = compiled.build_key(source, []), compiled.build_directory("module", source, [])
    (tmp_path / "unrelated.h").write_text("// edited\n")
    assert compiled.build_key(source, []) == key


@pytest.mark.parametrize("header, modules", [
    ("activations.h", ("rnnlab_loops", "rnnlab_cell_loops", "rnnlab_generate")),
    ("products.h", ("rnnlab_loops", "rnnlab_cell_loops")),
    ("checks.h", ("rnnlab_loops", "rnnlab_cell_loops")),
    ("upstream.h", ("rnnlab_loops", "rnnlab_cell_loops")),
    ("lstm.h", ("rnnlab_loops", "rnnlab_cell_loops")),
])
def test_every_module_that_includes_a_shared_header_hashes_it(header, modules):
    for name in modules:
        assert compiled.SOURCE.with_name(header) in compiled.local_headers(compiled.MODULES[name]), name


def test_a_build_copies_the_local_headers_beside_the_source(fake_build):
    calls, directory, source = fake_build
    (source.parent / "probe.h").write_text("// the probe's header\n")
    source.write_text('#include "probe.h"\n' + PROBE)
    with pytest.warns(compiled.BuildNote, match="building"):
        compiled.load_or_build(directory, "probe", source, [])
    assert (directory / "probe.h").read_text() == "// the probe's header\n"
    (source.parent / "probe.h").write_text("// edited\n")  # a new key: no longer verified
    assert compiled.verified(directory, "probe", compiled.build_key(source, [])) is None


BUILD_IN_CHILD = textwrap.dedent("""
    import json, sys, warnings
    from pathlib import Path
    from rnnlab.kernels import compiled
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as record:
        module = compiled.load_or_build(Path(sys.argv[1]), sys.argv[3], Path(sys.argv[2]), [])
    print(json.dumps({"module": getattr(module, "__file__", None), "notes": [str(w.message) for w in record]}))
    """)


def build_in_child(directory: Path, source: Path, name: str) -> dict:
    """load_or_build of the probe in a fresh process (a real compiler), under a timeout: never hangs."""
    done = subprocess.run([sys.executable, "-c", BUILD_IN_CHILD, str(directory), str(source), name],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    if result["module"] is None and any("cannot build" in n for n in result["notes"]):
        pytest.skip(f"no working compiler here: {result['notes']}")
    return result


def test_a_stale_lock_does_not_hang_the_build(tmp_path):
    """A build stopped by kill -9 leaves torch's lock file and ours (its holder gone): the next build
    says so, removes it and builds."""
    directory, source = tmp_path / "cache" / "probe", tmp_path / "probe.cpp"
    source.write_text(PROBE)
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # torch's FileBaton: its owner would wait on it forever
    (directory / compiled._LOCK).write_text(json.dumps({"pid": 999999, "host": "gone", "started": time.time()}))
    result = build_in_child(directory, source, "rnnlab_probe")
    assert result["module"] == str(directory / f"rnnlab_probe{compiled.LIBRARY_SUFFIX}")
    assert any("removing a stale build lock" in n for n in result["notes"])
    assert not (directory / "lock").exists() and compiled.verified(directory, "rnnlab_probe") is not None


def test_a_build_whose_process_is_killed_is_finished_not_hung(tmp_path):
    """kill -9 of a process while its build runs: the build child keeps the inherited lock, finishes
    and records its hash; the next process waits for it (bounded) and loads it without building."""
    directory, source = tmp_path / "cache" / "probe", tmp_path / "probe.cpp"
    source.write_text(PROBE)
    first = subprocess.Popen([sys.executable, "-c", BUILD_IN_CHILD, str(directory), str(source), "rnnlab_probe"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (directory / "probe.cpp").exists():  # copied just before the build child starts
        assert first.poll() is None and time.monotonic() < deadline, "the first build never started"
        time.sleep(0.05)
    time.sleep(0.5)
    first.kill()
    first.wait(timeout=30)
    result = build_in_child(directory, source, "rnnlab_probe")
    assert result["module"] == str(directory / f"rnnlab_probe{compiled.LIBRARY_SUFFIX}")
    assert not any(n.startswith("rnnlab: building") for n in result["notes"]), result["notes"]


def test_a_live_build_is_waited_for_with_a_bound(fake_build):
    """Another process holds the build lock (building): wait at most `timeout` from its start, then
    fall back to the Python loops, naming the holder."""
    calls, directory, source = fake_build
    directory.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, json, os, sys, time
        handle = open({str(directory / compiled._LOCK)!r}, "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps({{"pid": os.getpid(), "host": "here", "started": time.time()}})); handle.flush()
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.stdout.close()  # nothing more to read: an open pipe would outlive the test (ResourceWarning)
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert compiled.load_or_build(directory, "probe", source, [], timeout=1.0) is None
        assert time.monotonic() - start < 30
        notes = notes_of(record)
        assert any(f"waiting for process {holder.pid}" in n for n in notes)
        assert any("using the Python loops" in n for n in notes)
        assert calls["compiled"] == 0
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # its holder gone, the kernel has released the lock: the next call builds at once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", compiled.BuildNote)
        assert compiled.load_or_build(directory, "probe", source, [], timeout=1.0) is not None
    assert calls["compiled"] == 1


def test_a_build_that_overruns_is_stopped(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "_BUILD", "import time; time.sleep(60)")
    source = tmp_path / "probe.cpp"
    source.write_text(PROBE)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert compiled.load_or_build(tmp_path / "cache" / "probe", "probe", source, [], timeout=1.0) is None
    assert time.monotonic() - start < 30
    assert any("longer than 1 s and was stopped); using the Python loops" in n for n in notes_of(record))


# What a failed build prints (torch 2.13's load: the traceback quotes its `raise` lines, then ninja's output)
FAILED_BUILD = """\
Traceback (most recent call last):
  File "torch/utils/cpp_extension.py", line 2893, in _run_ninja_build
    raise CalledProcessError(retcode, process.args,
subprocess.CalledProcessError: Command '['ninja', '-v']' returned non-zero exit status 1.
RuntimeError: Error building extension 'probe': [1/2] c++ -c probe.cpp -o probe.o
FAILED: probe.o
{error}
ninja: build stopped: subcommand failed.
"""


@pytest.mark.parametrize("error", ["probe.cpp:2:15: error: expected primary-expression before 'return'",
                                   "probe.cpp:1:10: fatal error: Python.h: No such file or directory",
                                   "/usr/bin/ld: cannot find -lc10: No such file or directory"])
def test_a_failed_build_is_named_by_the_compilers_first_error(monkeypatch, tmp_path, error):
    """The note names the compiler's (or the linker's) first error, not a line of the traceback torch's
    builder prints before it (`raise CalledProcessError(...`, which holds 'error' too); the child's
    output is in NAME.build.log."""
    output = FAILED_BUILD.format(error=error)
    monkeypatch.setattr(compiled, "_BUILD", f"import sys; sys.stderr.write({output!r}); sys.exit(1)")
    monkeypatch.setattr(compiled, "_find_ninja", lambda: None)
    directory = tmp_path / "cache" / "probe"
    directory.mkdir(parents=True)
    assert compiled._compile(directory, "probe", tmp_path / "probe.cpp", [], 60.0) == error
    assert (directory / "probe.build.log").read_text() == output


@pytest.mark.skipif(EXTENSION is None, reason="the C++ loops are not built (tests never compile them)")
def test_a_verified_build_loads_without_ninja_or_compiler(monkeypatch):
    """Another environment (no ninja, no compiler on PATH) loads the cached build as it is."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(compiled, "_compile", lambda *args: pytest.fail("a verified build must not be rebuilt"))
    module = compiled.load_or_build(compiled.build_directory())
    assert module is not None and hasattr(module, "gated_forward")


# --- the C++ entry points check their inputs --------------------------------------------------------

T, B, H = 3, 2, 4


def zeros(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


WRONG_CALLS = {
    "states one step short": (ValueError, r"gated_forward: states must be \[3, 2, 4\]",
                              lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H), None, None,
                                                        zeros(B, H), zeros(T - 1, B, H), [])),
    "gates of the wrong gate count": (ValueError, r"gated_forward: gates must be \[3, 2, 12\]",
                                      lambda e: e.gated_forward("forget", "tanh", "sigmoid", zeros(T, B, H), None,
                                                                None, zeros(B, H), zeros(T, B, H), [])),
    "row counts for too few steps": (ValueError, "gated_forward: sizes must hold one row count per step",
                                     lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H), None,
                                                               None, zeros(B, H), zeros(T, B, H), [2, 2])),
    "a row count above B": (ValueError, r"sizes must be non-increasing row counts in \[0, 2\]",
                            lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H), None, None,
                                                      zeros(B, H), zeros(T, B, H), [2, 3, 1])),
    "float64 state with float32 gates": (TypeError, "gated_forward: s0 must be Float like gates; got Double",
                                         lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H), None,
                                                                   None, zeros(B, H, dtype=torch.float64),
                                                                   zeros(T, B, H), [])),
    "non-contiguous gates": (ValueError, "gated_forward: gates must be contiguous",
                             lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, H, B).transpose(1, 2),
                                                       None, None, zeros(B, H), zeros(T, B, H), [])),
    "a recurrent weight of the wrong shape": (ValueError, r"weight_hh must be \[4, 4\]",
                                              lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H),
                                                                        zeros(H, H + 1), None, zeros(B, H),
                                                                        zeros(T, B, H), [])),
    "float16 gates": (TypeError, "gates must be float32 or float64",
                      lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H, dtype=torch.float16),
                                                None, None, zeros(B, H), zeros(T, B, H), [])),
    "LSTM backward with a ring of c": (ValueError, r"lstm_backward: cs must be \[3, 2, 4\]",
                                       lambda e: e.lstm_backward("tanh", "sigmoid", zeros(T, B, 4 * H), zeros(2, B, H),
                                                                 zeros(T, B, H), zeros(B, H), zeros(T, B, H), None,
                                                                 None, zeros(B, H), zeros(B, H), zeros(T, B, 4 * H),
                                                                 [])),
    "GRU without its zh buffer": (ValueError, r"gru_forward: zhs \(with weight_hh\) is required",
                                  lambda e: e.gru_forward("tanh", "sigmoid", zeros(T, B, 3 * H), zeros(3 * H, H), None,
                                                          None, zeros(B, H), zeros(T, B, H), None, [])),
    "scan state of another batch": (ValueError, r"linear_scan_forward: the initial state must be \(B, H\) with B = 2",
                                    lambda e: e.linear_scan_forward(zeros(B, T, H), zeros(B, T, H), zeros(B + 1, H))),
    "scan lengths beyond T": (ValueError, r"cell_scan_forward: lengths must lie in \[0, 3\]; got 5",
                              lambda e: e.cell_scan_forward("residual", "tanh", "sigmoid", zeros(B, T, H),
                                                            zeros(B, T, H), zeros(B, H), None, zeros(B, T, H), None,
                                                            None, [1, 5])),
    "scan backward of the forget gate without the outputs": (
        ValueError, r"cell_scan_backward: out .* is required",
        lambda e: e.cell_scan_backward("forget", "tanh", "sigmoid", zeros(B, T, 3 * H), None, zeros(B, H), None, None,
                                       None, zeros(B, T, H), zeros(B, H), None, zeros(B, T, 3 * H), [])),
    "inputs without their weight": (ValueError, r"gated_forward: weight \(with inputs\) is required here",
                                    lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(1, B, H), None, None,
                                                              zeros(B, H), zeros(T, B, H), [],
                                                              inputs=zeros(T, B, 3))),
    "inputs of another batch": (ValueError, r"lstm_forward: inputs must be \[3, 2, -1\]",
                                lambda e: e.lstm_forward("tanh", "sigmoid", zeros(1, B, 4 * H), None, None, zeros(B, H),
                                                         zeros(B, H), zeros(T, B, H), zeros(2, B, H), zeros(1, B, H),
                                                         [], inputs=zeros(T, B + 1, 3), weight=zeros(4 * H, 3))),
    "a weight of the wrong width": (ValueError, r"gru_forward: weight must be \[12, 3\]",
                                    lambda e: e.gru_forward("tanh", "sigmoid", zeros(1, B, 3 * H), zeros(3 * H, H),
                                                            None, None, zeros(B, H), zeros(T, B, H),
                                                            zeros(1, B, 3 * H), [], inputs=zeros(T, B, 3),
                                                            weight=zeros(3 * H, 4))),
    "inputs whose rows overlap": (ValueError, "gated_forward: inputs must have contiguous rows that do not overlap",
                                  lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(1, B, H), None, None,
                                                            zeros(B, H), zeros(T, B, H), [],
                                                            inputs=zeros(T, 1, 3).expand(T, B, 3),
                                                            weight=zeros(H, 3))),
    "inputs strided along a row": (ValueError, "lstm_forward: inputs must have contiguous rows",
                                   lambda e: e.lstm_forward("tanh", "sigmoid", zeros(1, B, 4 * H), None, None,
                                                            zeros(B, H), zeros(B, H), zeros(T, B, H), zeros(2, B, H),
                                                            zeros(1, B, H), [], inputs=zeros(T, B, 6)[..., ::2],
                                                            weight=zeros(4 * H, 3))),
    "a copy of the inputs with lengths": (ValueError, r"gru_forward: inputs_copy needs every row at every step",
                                          lambda e: e.gru_forward("tanh", "sigmoid", zeros(1, B, 2 * H), None, None,
                                                                  None, zeros(B, H), zeros(T, B, H), None, [2, 2, 1],
                                                                  inputs=zeros(T, B, 3), weight=zeros(2 * H, 3),
                                                                  inputs_copy=zeros(T, B, 3))),
    "a copy of the inputs without them": (ValueError, r"gated_forward: inputs_copy \(without inputs\) must be None",
                                          lambda e: e.gated_forward("vanilla", "tanh", "sigmoid", zeros(T, B, H), None,
                                                                    None, zeros(B, H), zeros(T, B, H), [],
                                                                    inputs_copy=zeros(T, B, 3))),
    "a tensor on another device": (ValueError, "gated_forward: gates must be on the CPU; got meta",
                                   lambda e: e.gated_forward("vanilla", "tanh", "sigmoid",
                                                             torch.zeros(T, B, H, device="meta"), None, None,
                                                             zeros(B, H), zeros(T, B, H), [])),
}


@pytest.mark.skipif(EXTENSION is None, reason="the C++ loops are not built (tests never compile them)")
@pytest.mark.parametrize("case", sorted(WRONG_CALLS))
def test_a_wrong_call_of_the_loops_raises(case):
    error, message, call = WRONG_CALLS[case]
    with pytest.raises(error, match=message):
        call(EXTENSION)
