"""rnnlab's error types (rnnlab/errors.py) and the rule they serve: a user's mistake or a fault of
the machine is one line (`rnnlab: error: ...`), a bug of ours keeps its traceback, and --debug
shows the traceback of a mistake too."""

import errno

import pytest
from test_cli import TINY, one_line_error

from rnnlab import checkpoints
from rnnlab.cli import main
from rnnlab.errors import RunDirError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny adding run for the commands that open one."""
    run = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", "adding", *TINY, "--out", str(run)]) == 0
    return run


def test_debug_shows_the_traceback_of_a_users_mistake(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        main(["--debug", "train", "--resume", str(tmp_path / "nowhere")])
    with pytest.raises(RunDirError):
        main(["train", "--resume", str(tmp_path / "nowhere"), "--debug"])  # anywhere on the line


def test_a_bug_of_ours_keeps_its_traceback(trained, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("rnnlab.tasks.open_run", bug)
    with pytest.raises(KeyError):
        main(["eval", str(trained)])


def test_ctrl_c_outside_training_is_a_line_not_a_traceback(trained, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rnnlab.tasks.open_run", interrupted)
    assert main(["eval", str(trained)]) == 130
    assert capsys.readouterr().err.strip() == "rnnlab: interrupted"


def test_a_full_disk_in_any_command_is_one_line(trained, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "metrics.jsonl")

    monkeypatch.setattr(checkpoints, "open", full, raising=False)
    one_line_error(capsys, ["train", "adding", *TINY, "--out", str(tmp_path / "r")], "no space left on the device")


def test_sizes_beyond_the_memory_of_the_machine_are_one_line(tmp_path, capsys):
    """A hidden size no machine can hold: torch's CPU allocator raises a RuntimeError (no type of its own)."""
    assert main(["train", "adding", "--T", "3", "--hidden", "99999999999999", "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("rnnlab: error: out of memory (tried to allocate ") and "\n" not in line, line
    assert not (tmp_path / "run").exists()


def test_a_runtime_error_that_is_not_memory_keeps_its_traceback(trained, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr("rnnlab.tasks.open_run", bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["eval", str(trained)])


def test_a_warning_of_the_core_is_one_line_with_one_prefix(trained, monkeypatch, capsys):
    """The C++ build's notes begin 'rnnlab: ' (for library users); the CLI showed 'rnnlab: warning: rnnlab: ...'."""
    import warnings

    from rnnlab.kernels.compiled import BuildNote
    from rnnlab.tasks import open_run as real_open_run

    def noted(*args, **kwargs):
        warnings.warn("rnnlab: cannot use the C++ loop cache /x; using the Python loops", BuildNote, stacklevel=2)
        return real_open_run(*args, **kwargs)

    monkeypatch.setattr("rnnlab.tasks.open_run", noted)
    with warnings.catch_warnings():
        warnings.simplefilter("always", BuildNote)  # as outside pytest, where a note is shown, not raised
        assert main(["eval", str(trained)]) == 0
    err = capsys.readouterr().err
    assert "rnnlab: warning: cannot use the C++ loop cache /x; using the Python loops\n" in err, err
