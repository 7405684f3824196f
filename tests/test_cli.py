"""The command line's bad inputs: each is exit status 2 and one line on stderr, `rnnlab: error: ...`
(`rnnlab COMMAND: error: --flag ...` for a flag's value),
naming the flag or file at fault; no traceback (that is for bugs of ours, or `--debug`)."""

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from rnnlab.cli import _task_named, build_parser, main

TINY = ["--T", "10", "--hidden", "4", "--batch-size", "8", "--eval-size", "16", "--eval-every", "2",
        "--checkpoint-every", "2", "--log-every", "2", "--threads", "1", "--steps", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny adding run, shared: the tests that change it copy it first."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "adding", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def one_line_error(capsys, argv, *names):
    """Run argv; assert exit 2 and a single stderr line naming each of `names`; return the line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and re.match(r"rnnlab( [a-z]+)?: error: ", lines[0]), err  # 'rnnlab train: ' names a flag
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- sample ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, names", [
    ("--top-k", "0", ("--top-k", "got 0")),
    ("--top-k", "-5", ("--top-k", "got -5")),
    ("--temperature", "-0.5", ("--temperature", "got -0.5")),
    ("--temperature", "inf", ("--temperature", "a finite number", "got inf")),
    ("--length", "-1", ("--length", "got -1")),
    ("--length", "1000001", ("--length", "at most 1,000,000", "got 1,000,001")),  # no bound: days, or out of memory
    ("--threads", "0", ("--threads", "got 0")),
    ("--threads", "99999", ("--threads", "at most 1024", "got 99999")),  # OpenMP's segfault otherwise
    ("--seed", "-1", ("--seed", "got -1")),
    ("--seed", "99999999999999999999999", ("--seed", "at most 4294967295")),  # torch: 'Overflow when unpacking'
])
def test_sample_flags_out_of_range(trained, capsys, flag, value, names):
    one_line_error(capsys, ["sample", str(trained), flag, value], *names)


def test_sample_on_a_task_that_cannot_generate_names_what_serves_it(trained, capsys):
    line = one_line_error(capsys, ["sample", str(trained)], "'adding' run does not generate text", "rnnlab eval")
    assert "rnnlab sample" in line


def test_a_run_named_in_a_message_takes_the_article_its_name_does(trained, capsys):
    """It said "a 'adding' run"; the article is chosen from the word (checks.with_article)."""
    from rnnlab.checks import with_article

    assert "rnnlab sample: error: an 'adding' run does not generate text" in one_line_error(
        capsys, ["sample", str(trained)])
    assert "rnnlab translate: error: an 'adding' run does not translate" in one_line_error(
        capsys, ["translate", str(trained), "a sentence"])
    assert [with_article(w) for w in ("'adding'", "'copy'", "int", "Stacked", "'explore'")] == [
        "an 'adding'", "a 'copy'", "an int", "a Stacked", "an 'explore'"]


OUT_COMMANDS = [(["train", "adding"], "a folder"), (["seeds", "adding"], "a folder"),
                (["ladder", "adding"], "a folder"), (["complexity"], "a folder"), (["gradients"], "a folder"),
                (["export", "RUN"], "a .onnx file"), (["explore", "RUN"], "an .html file"),
                (["caption", "RUN"], "a .png file")]


@pytest.mark.parametrize("command, named", OUT_COMMANDS, ids=lambda c: c[0] if isinstance(c, list) else "")
def test_an_empty_out_is_refused_naming_the_flag(tmp_path, capsys, monkeypatch, command, named):
    """`--out ''` silently meant the default folder (Path('') is the working folder); now one line, as
    `--text ''` is, before anything is read or written."""
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*command, "--out", ""], f"--out must name {named}; got ''")
    assert line.startswith(f"rnnlab {command[0]}: error: ") and not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_device_cuda_without_cuda(trained, capsys, no_cuda, command):
    one_line_error(capsys, [command, str(trained), "--device", "cuda"], "--device", "'cuda'", "CUDA is not available")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_device_that_is_no_device(trained, capsys, command):
    one_line_error(capsys, [command, str(trained), "--device", "gpu7"], "--device", "'gpu7'")


def test_eval_threads_zero(trained, capsys):
    one_line_error(capsys, ["eval", str(trained), "--threads", "0"], "--threads", "got 0")


def test_eval_threads_is_applied(trained, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["eval", str(trained), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "MSE" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_run_dir_that_does_not_exist(tmp_path, capsys, command):
    one_line_error(capsys, [command, str(tmp_path / "nowhere")], str(tmp_path / "nowhere"), "does not exist")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_run_dir_that_is_a_file(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, [command, str(tmp_path / "afile")], str(tmp_path / "afile"), "is a file")


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    one_line_error(capsys, ["eval", str(tmp_path)], "config.json is missing", str(tmp_path))


def test_eval_with_config_json_not_json(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    (run / "config.json").write_text("{not json")
    one_line_error(capsys, ["eval", str(run)], "config.json is corrupt")


def test_eval_with_config_json_whose_data_is_not_an_object(trained, tmp_path, capsys):
    """An AttributeError traceback ('list' object has no attribute 'items') before."""
    run = shutil.copytree(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": [1]}))
    one_line_error(capsys, ["eval", str(run)], "config.json: data must be an object of data files; got [1]")
    one_line_error(capsys, ["train", "--resume", str(run)], "config.json: data must be an object")


def test_eval_with_config_json_naming_an_unknown_task(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "task": "chess"}))
    one_line_error(capsys, ["eval", str(run)], "config.json", "task must be one of", "'chess'")


def test_eval_with_a_hand_edited_wrongly_typed_value(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["task_config"]["eval_size"] = "16"
    (run / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, ["eval", str(run)], "config.json", "eval_size must be int", "'16'")


def test_eval_with_a_hand_edited_unknown_field(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["train"]["learning_rate"] = 0.1
    (run / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, ["eval", str(run)], "config.json", "learning_rate")


def test_eval_with_a_hand_edited_value_out_of_range(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["task_config"]["hidden"] = -5
    (run / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, ["eval", str(run)], "config.json", "hidden", "-5")


def test_eval_without_best_or_checkpoint(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    (run / "best.safetensors").unlink()
    (run / "checkpoint.json").unlink()
    one_line_error(capsys, ["eval", str(run)], "checkpoint.json is missing")


# --- train ----------------------------------------------------------------------------------------------


def test_train_device_cuda_without_cuda(tmp_path, capsys, no_cuda):
    one_line_error(capsys, ["train", "adding", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")],
                   "--device", "CUDA is not available")
    assert not (tmp_path / "r").exists()


def test_train_out_is_an_existing_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    one_line_error(capsys, ["train", "adding", *TINY, "--out", str(tmp_path / "afile")], str(tmp_path / "afile"),
                   "is a file")
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("flags, why", [
    (["--implementation", "scan"], "build the cell with --no-state-read"),  # the LSTM reads its state: no scan
    (["--cell", "gru", "--implementation", "fused", "--zoneout", "0.1"], "fused has no --zoneout"),
    (["--implementation", "native", "--recurrent-dropout", "0.1"], "torch.nn has no recurrent-dropout mask"),
    (["--cell", "vanilla", "--depth", "2", "--implementation", "fused"], "no deep transition (--depth > 1)"),
    (["--cell", "vanilla", "--activation", "gelu", "--implementation", "fused"], "which --activation='gelu' does"),
    (["--cell", "lstm", "--no-state-read", "--implementation", "native"], "torch.nn has no --no-state-read")])
def test_an_implementation_the_cell_refuses_fails_before_anything_is_written(tmp_path, capsys, monkeypatch, flags,
                                                                              why):
    """It failed at the first step, after the run directory (config, marker) was made. The reason names
    the flags the user typed, where it named the cell's Python arguments (reads_state=False, depth)."""
    monkeypatch.chdir(tmp_path)  # no --out: the default runs/adding-<time> must not appear either
    implementation = flags[flags.index("--implementation") + 1]
    one_line_error(capsys, ["train", "adding", *TINY, *flags], f"implementation={implementation!r}", why)
    one_line_error(capsys, ["train", "adding", *TINY, *flags, "--out", "run"], "cannot run", why)
    one_line_error(capsys, ["seeds", "adding", *TINY, *flags, "--count", "1", "--out", "seeds"], "cannot run", why)
    assert list(tmp_path.iterdir()) == []


def test_train_out_below_a_file_cannot_be_written(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    one_line_error(capsys, ["train", "adding", *TINY, "--out", str(tmp_path / "afile" / "run")],
                   "cannot write", str(tmp_path / "afile" / "run"))


def test_train_out_in_an_unwritable_folder(tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # root ignores chmod: refuse as a read-only folder would
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    one_line_error(capsys, ["train", "adding", *TINY, "--out", str(tmp_path / "ro" / "run")],
                   "cannot write", "permission denied", str(tmp_path / "ro" / "run"))


def test_train_out_is_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    one_line_error(capsys, ["train", "adding", *TINY, "--out", str(tmp_path)], "--out", "notes.txt",
                   "not an rnnlab run directory")


def test_train_resume_a_folder_that_does_not_exist(tmp_path, capsys):
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "nowhere")], "--resume", "no such run directory")


def test_train_resume_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    one_line_error(capsys, ["train", "--resume", str(tmp_path)], "--resume", "not an rnnlab run directory")


def test_train_resume_and_out_together(trained, tmp_path, capsys):
    one_line_error(capsys, ["train", "--resume", str(trained), "--out", str(tmp_path / "x")], "--out", "--resume")


def test_train_resume_changing_the_model(trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    one_line_error(capsys, ["train", "--resume", str(run), "--hidden", "8"], "--hidden 8", "the run has 4")


@pytest.mark.parametrize("flag", ["--samples", "--sample-length"])
def test_train_sampling_flags_below_zero(tmp_path, capsys, flag):
    text = tmp_path / "t.txt"
    text.write_text("abc " * 200)
    one_line_error(capsys, ["train", "--text", str(text), flag, "-1", "--out", str(tmp_path / "r")], flag, "got -1")


def test_train_sample_length_beyond_the_bound(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc " * 200)
    argv = ["train", "--text", str(text), "--sample-length", "99999999999", "--out", str(tmp_path / "r")]
    one_line_error(capsys, argv, "--sample-length must be at most 1,000,000", "got 99,999,999,999")
    assert not (tmp_path / "r").exists()


def test_train_text_that_does_not_exist(tmp_path, capsys):
    one_line_error(capsys, ["train", "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r")],
                   "missing.txt")


def test_train_config_value_out_of_range(tmp_path, capsys):
    one_line_error(capsys, ["train", "adding", *TINY, "--lr", "-1", "--out", str(tmp_path / "r")], "lr", "-1")


@pytest.mark.parametrize("command", [["train", "adding", *TINY], ["ladder", "adding", "--cells", "gru"],
                                     ["bench", "--threads", "1,99999"], ["complexity", "--quick"], ["gradients"]])
def test_threads_beyond_what_openmp_can_make_are_refused(tmp_path, capsys, command):
    """torch.set_num_threads(99999) kills the process (a segmentation fault in OpenMP's thread creation)."""
    out = str(tmp_path / "r")
    rest = ["--json", out] if "bench" in command else ["--threads", "99999", "--out", out]
    one_line_error(capsys, [*command, *rest], "--threads", "1024", "99999")
    assert not (tmp_path / "r").exists()


def test_seeds_beyond_what_torch_reads_are_refused(tmp_path, capsys):
    """torch's CPU generator reads a seed's low 32 bits: --seed 4294967296 ran the run of --seed 0, and a
    seed beyond 2**64 failed with torch's 'Overflow when unpacking long long', naming no flag."""
    one_line_error(capsys, ["train", "adding", *TINY, "--seed", "4294967296", "--out", str(tmp_path / "r")],
                   "--seed", "[0, 4294967295]", "got 4294967296")
    one_line_error(capsys, ["seeds", "adding", *TINY, "--first", "4294967295", "--count", "2",
                            "--out", str(tmp_path / "s")], "--first", "4294967295 to 4294967296")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_resume_refuses_a_change_of_a_flag_only_the_runs_task_has(trained, capsys):
    # the parser takes the run's task's flags from its config.json: --T is the adding task's, not the language model's
    line = one_line_error(capsys, ["train", "--resume", str(trained), "--T", "300"], "--T 300", "the run has 10")
    assert "a resumed run keeps its configuration" in line


@pytest.mark.parametrize("argv, command, flag", [
    (["complexity", "--lengths", "0"], "rnnlab complexity", "--lengths"),
    (["train", "copy", "--nosuch", "3"], "rnnlab train", "--nosuch"),
    # the value after a misspelt flag was read as the optional TASK: "argument task: invalid choice: '300'"
    (["train", "--hiden", "300"], "rnnlab train", "--hiden"),
    (["sample", "--promt", "x", "runs/x"], "rnnlab sample", "--promt"),
    (["train", "--steps=3", "--hiden=3"], "rnnlab train", "--hiden=3"),
    (["--nosuch"], "rnnlab", "--nosuch")])
def test_an_unknown_flag_is_named_by_its_command(capsys, argv, command, flag):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{command}: error: unrecognized arguments: {flag} ("), err
    assert f"(see {command} --help)" in err[0]


@pytest.mark.parametrize("argv, read", [
    (["sample", "runs/x", "--prompt", "--- ROMEO: hi"], ("prompt", "--- ROMEO: hi")),
    (["train", "--prompt", "-- hence, away"], ("prompt", "-- hence, away")),
    (["translate", "runs/x", "-- a sentence"], ("sentence", "-- a sentence")),
    (["sample", "runs/x", "--prompt=--x"], ("prompt", "--x")),
    (["translate", "runs/x", "--", "--x"], ("sentence", "--x")),
    (["train", "--hid", "3"], ("hidden", 3))])  # a prefix argparse takes
def test_a_value_that_starts_with_two_dashes_is_read_as_argparse_reads_it(argv, read):
    """The unknown-flag check before argparse judges a word as argparse does: one with a space in it is a
    value (a prompt or a sentence that starts with '--'), not a flag; it was refused as an unknown flag."""
    args = build_parser(_task_named(argv)).parse_args(argv)
    assert getattr(args, read[0]) == read[1]


@pytest.mark.parametrize("argv, flag", [(["bench", "--threads", "1,,2"], "--threads"),
                                        (["bench", "--cells", "lstm,"], "--cells"),
                                        (["bench", "--sizes", "1x8x8x10,"], "--sizes"),  # refused before too
                                        (["ladder", "adding", "--cells", ",gru"], "--cells"),
                                        (["gradients", "--cells", "lstm,,gru"], "--cells"),
                                        (["complexity", "--regimes", "bptt,"], "--regimes")])
def test_an_empty_item_in_a_list_valued_flag_is_one_line_naming_the_flag(capsys, argv, flag):
    """'1,,2' was read as 1,2 while --sizes refused '...,': every list-valued flag now refuses it."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1, err
    assert f"error: argument {flag}: " in err[0] and repr(argv[-1]) in err[0], err


def test_the_task_may_come_after_flags(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "adding", *TINY]) == 0
    assert '"task": "adding"' in (run / "config.json").read_text()


def test_a_json_report_is_written_whole_in_a_folder_it_creates(tmp_path, monkeypatch):
    from rnnlab import cli

    path = tmp_path / "new" / "deeper" / "report.json"
    assert cli.write_json_report(path, {"rows": [1.5, None]}) == path
    assert json.loads(path.read_text()) == {"rows": [1.5, None]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temporary file left
    # a write that fails at the end (a full disk) leaves the old report as it was, and no temporary file
    from rnnlab import checkpoints

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "replace", full)
    with pytest.raises(OSError, match="no space left"):
        cli.write_json_report(path, {"rows": []})
    assert json.loads(path.read_text()) == {"rows": [1.5, None]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


@pytest.mark.parametrize("command", [["bench", "--sizes", "2x4x3x5", "--cells", "lstm", "--reps", "1"],
                                     ["complexity", "--quick"]])
def test_a_json_path_that_cannot_be_written_fails_before_the_run(command, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if command[0] == "complexity":
        command = [*command, "--out", str(tmp_path / "out")]
    assert main([*command, "--json", str(blocker / "report.json")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"rnnlab: error: cannot write {blocker / 'report.json'}: {blocker} is not a folder"
    assert "rnnlab bench  cpu" not in captured.out and "measuring" not in captured.out  # nothing was run


# Every cell option `train` and `seeds` take (rnnlab.tasks.cell_options.CellOptions), each with a value the
# config or the cell refuses: the line names the flag typed, never the cell's Python argument
# (`proj_size`, `reads_state`, `hidden_size`), which the library's own error keeps naming.
CELL_OPTION_ERRORS = {
    "activation": (["--activation", "nope"], ["--activation"]),
    "gate_activation": (["--gate-activation", "nope"], ["--gate-activation"]),
    "depth": (["--cell", "gru", "--depth", "2"], ["GRUCell: --depth must be 1", "got 2"]),
    "residual": (["--cell", "residual", "--residual", "inside"], ["--residual"]),
    "init": (["--init", "glorot"], ["--init"]),
    "input_dropout": (["--input-dropout", "1"], ["--input-dropout"]),
    "recurrent_dropout": (["--recurrent-dropout", "1"], ["--recurrent-dropout"]),
    "zoneout": (["--zoneout", "1"], ["--zoneout"]),
    "max_norm": (["--max-norm", "0"], ["--max-norm"]),
    "l1": (["--l1", "-1"], ["--l1"]),
    "l2": (["--l2", "-1"], ["--l2"]),
    "activity_l2": (["--activity-l2", "-1"], ["--activity-l2"]),
    "state_read": (["--no-state-read", "--recurrent-dropout", "0.1"],
                   ["LSTMCell: --recurrent-dropout must be 0 with --no-state-read", "got 0.1"]),
    "proj_size": (["--cell", "projected-lstm", "--proj-size", "4"],  # TINY's --hidden 4
                  ["ProjectedLSTMCell: --proj-size must be an int in [1, --hidden) = [1, 4); got 4"]),
}


def test_the_cell_option_errors_cover_every_cell_option():
    from rnnlab.tasks.cell_options import CellOptions

    assert set(CELL_OPTION_ERRORS) == set(CellOptions.__dataclass_fields__)


@pytest.mark.parametrize("command", ["train", "seeds"])
@pytest.mark.parametrize("field", sorted(CELL_OPTION_ERRORS))
def test_a_cell_options_error_names_the_flag_typed_not_the_python_argument(tmp_path, capsys, command, field):
    """`--proj-size 999` said 'ProjectedLSTMCell: proj_size must be ...', `--cell gru --depth 2` 'GRUCell: depth
    ...', `--no-state-read --recurrent-dropout 0.1` 'recurrent_dropout needs reads_state=True': the cell's names."""
    flags, names = CELL_OPTION_ERRORS[field]
    argv = [command, "adding", *TINY, *flags, "--out", str(tmp_path / "r")] + (["--count", "1"] if command == "seeds"
                                                                              else [])
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusal (a choice)
        code = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"rnnlab {command}: error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    for python in ("proj_size", "reads_state", "recurrent_dropout", "hidden_size", "input_dropout", "activity_l2",
                   "gate_activation", "max_norm", "state_read"):
        assert python not in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


def test_the_library_keeps_naming_the_cells_arguments():
    from rnnlab import GRUCell, LSTMCell, ProjectedLSTMCell

    with pytest.raises(ValueError, match=r"^ProjectedLSTMCell: proj_size must be an int in \[1, hidden_size\) = "
                                         r"\[1, 4\); got 4$"):
        ProjectedLSTMCell(2, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"^GRUCell: depth must be 1; .*; got 2$"):
        GRUCell(2, 4, depth=2)
    with pytest.raises(ValueError, match=r"^LSTMCell: recurrent_dropout must be 0 with reads_state=False"):
        LSTMCell(2, 4, reads_state=False, recurrent_dropout=0.1)


# --- --threads beyond the CPUs ---------------------------------------------------------------------


def test_usable_cpus_is_the_affinity_mask_else_the_machines_count(monkeypatch):
    from rnnlab import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert cli.usable_cpus() == 3
    monkeypatch.delattr(cli.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 7)
    assert cli.usable_cpus() == 7


@pytest.fixture
def stop_after_setup(monkeypatch):
    """Each command's work after its flags are read raises ValueError('stop'): the note, if any, comes first.
    The commands on a trained run get a stand-in task that has every capability."""
    from rnnlab import bench, cli, complexity, gradient_flow, ladder, seeds, tasks

    def stop(*args, **kwargs):
        raise ValueError("stop")

    for module, name in [(cli, "_train"), (seeds, "run_seeds"), (bench, "run_bench"), (complexity, "measure"),
                         (gradient_flow, "measure_gradient_flow"), (ladder, "run_ladder"), (tasks, "load_weights")]:
        monkeypatch.setattr(module, name, stop)

    class Capable(tasks.TextGenerator, tasks.Captioner, tasks.Translator):
        pass

    Capable.__abstractmethods__ = frozenset()
    monkeypatch.setattr(tasks, "open_run", lambda run_dir: (object.__new__(Capable), None))
    monkeypatch.setattr(cli, "usable_cpus", lambda: 2)


THREADS_COMMANDS = [["train", "adding", *TINY[:-4], "--steps", "2"], ["seeds", "adding", "--count", "1"],
                    ["ladder", "adding"], ["complexity", "--quick"], ["gradients"], ["sample", "RUN"], ["eval", "RUN"],
                    ["caption", "RUN"], ["translate", "RUN", "a sentence"]]


@pytest.mark.parametrize("command", THREADS_COMMANDS, ids=lambda c: c[0])
def test_threads_beyond_the_cpus_is_one_note_naming_the_count_and_the_cpus(tmp_path, capsys, stop_after_setup,
                                                                          command):
    """torch's matrix products ran 3 threads on 2 CPUs without a word (3-18x slower, docs/BENCHMARKS.md)."""
    argv = [*command, *([] if "RUN" in command else ["--out", str(tmp_path / "r")]), "--threads"]
    assert main([*argv, "3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "rnnlab: error: stop", lines
    assert lines[0].startswith(f"rnnlab {command[0]}: note: --threads 3 asks for more threads than the 2 CPUs "
                               f"this process may use"), lines[0]
    assert "--threads 2 or fewer" in lines[0]
    assert main([*argv, "2"]) == 2  # as many as the CPUs: no note
    assert capsys.readouterr().err.strip().splitlines() == ["rnnlab: error: stop"]


def test_bench_names_its_list_of_thread_counts(capsys, stop_after_setup):
    assert main(["bench", "--threads", "1,3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("rnnlab bench: note: --threads 1,3 asks for more threads than the 2 "
                                                   "CPUs"), lines
    assert "run 3 threads on them" in lines[0]
    assert main(["bench", "--threads", "1,2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["rnnlab: error: stop"]


def test_a_resumed_run_whose_threads_exceed_the_cpus_here_is_noted_as_the_runs(trained, tmp_path, capsys, monkeypatch):
    """A run made with --threads 3 on a larger machine, resumed here without the flag."""
    from rnnlab import cli

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["threads"] = 3
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(cli, "usable_cpus", lambda: 2)
    monkeypatch.setattr(cli, "_train", lambda *args: 0)
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rnnlab train: note: --threads 3 (the run's) asks for more threads than the 2 CPUs this process "
                   "may use: rnnlab's C++ loops keep to 2, but torch's matrix products run 3 threads on them, often "
                   "several times slower; --threads 2 or fewer avoids that"], err


@pytest.mark.parametrize("argv, figure", [
    (["gradients", "--cells", "lstm", "--steps", "1", "--T", "10"], "gradients.png"),
    (["ladder", "adding", "--cells", "lstm", "--steps", "1", "--T", "10"], "ladder.png"),
    (["complexity", "--quick"], "flops.png"),
])
def test_a_users_picture_where_a_figure_goes_is_refused_before_the_run_and_left_untouched(tmp_path, capsys, argv,
                                                                                        figure):
    """gradients, ladder and complexity drew their PNGs over any file of that name in --out (their JSON reports
    were checked, their figures not), as caption --out did before it was checked."""
    (tmp_path / figure).write_bytes(b"a user's picture")
    line = one_line_error(capsys, [*argv, "--out", str(tmp_path)], str(tmp_path / figure),
                          "is not a figure rnnlab drew")
    assert line.startswith("rnnlab: error: cannot write ")
    assert (tmp_path / figure).read_bytes() == b"a user's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == [figure]  # nothing measured or trained, nothing written


def test_a_figure_rnnlab_drew_is_replaced(tmp_path):
    from rnnlab import cli
    from rnnlab.plots import pyplot, save_figure

    save_figure(pyplot().figure(), tmp_path / "ladder.png")
    cli.check_figures(tmp_path / "ladder.png", tmp_path / "absent.png")  # no error


def test_resume_with_steps_the_run_has_passed_says_that_nothing_trains(trained, tmp_path, capsys):
    """`--steps 1` on a run at step 2 (read as "one more") trained nothing and said only "stopped (steps)"."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "--resume", str(run), "--steps", "1"]) == 0
    captured = capsys.readouterr()
    assert ("note: the run is at step 2, not below --steps 1: nothing is trained (--steps counts from the run's "
            "start; give more than 2 to train on)") in captured.err
    assert "stopped (steps) at step 2" in captured.out
    assert main(["train", "--resume", str(run), "--steps", "3"]) == 0
    captured = capsys.readouterr()
    assert "nothing is trained" not in captured.err and "stopped (steps) at step 3" in captured.out


def test_train_samples_beyond_the_bound(tmp_path, capsys):
    """--samples 999999999 (of 500 tokens each) sampled for days after the training, the run already made."""
    text = tmp_path / "t.txt"
    text.write_text("abc " * 200)
    for samples, length in (("999999999", "500"), ("2001", "500"), ("1000001", "0")):
        argv = ["train", "--text", str(text), "--samples", samples, "--sample-length", length,
                "--out", str(tmp_path / "r")]
        one_line_error(capsys, argv, "--samples x --sample-length must be at most 1,000,000 tokens in all",
                       f"got {int(samples):,} x {length}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["bench", "--sizes", "2x4x3x5", "--cells", "lstm", "--reps", "1", "--json"],
                                     ["complexity", "--quick", "--out"], ["gradients", "--steps", "1", "--out"]])
def test_a_report_in_a_read_only_folder_fails_before_the_run(command, tmp_path, capsys, monkeypatch):
    """The folder existed, so making it passed; the report's write failed after the measuring (minutes)."""
    from rnnlab import cli

    real_access = cli.os.access
    monkeypatch.setattr(cli.os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    target = tmp_path / "report.json" if command[0] == "bench" else tmp_path
    line = one_line_error(capsys, [*command, str(target)], "cannot write", "is read-only (permission denied)")
    assert "measuring" not in capsys.readouterr().out and line.startswith(f"rnnlab: error: cannot write {tmp_path}/")
    assert list(tmp_path.iterdir()) == []



PROBE = """
import resource, sys
from rnnlab import cli, Recurrent
from rnnlab.cells import LSTMCell
import torch

def train_steps():  # the fused LSTM at the adding task's size, forward+backward: a step's buffers, freed at its end
    torch.set_num_threads(1)
    lstm = Recurrent(LSTMCell(2, 64), "fused")
    xs = torch.randn(64, 200, 2)
    for _ in range(3):
        lstm(xs)[0].sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        lstm(xs)[0].sum().backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return 0

cli.main = train_steps
cli.keep_freed_memory = lambda made=cli.keep_freed_memory: print(made()) or True
sys.exit(cli.program())
"""


def _probe(**environment):
    import os
    import subprocess
    import sys

    from conftest import EXTENSION
    # this checkout's rnnlab, and the Python loops where the C++ loops are not built: tests never compile them
    # (a fresh cache: the child's fused LSTM would build them, 1-3 minutes, into the user's cache)
    own = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    own.update({"RNNLAB_NO_EXTENSION": "1"} if EXTENSION is None else {})
    environment = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")},
                   **own, **environment}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    made, faults = done.stdout.split()
    return made == "True", int(faults)


def test_the_program_keeps_freed_buffers_for_reuse_unless_the_environment_sets_malloc():
    """`rnnlab` (cli.program) has glibc keep freed buffers below 32 MB (mallopt's mmap and trim thresholds):
    the buffers of a training step (the fused LSTM, 64 x 200 steps of 64 units: about 30 MB a step, 7,500
    pages of 4 kB), freed at its end, are reused by the next steps without page faults (glibc's default
    returns them to the system or not depending on the process's history: 0 to 46,000 faults in ten steps
    here). Where the environment sets glibc's malloc itself (GLIBC_TUNABLES, MALLOC_*), it is left alone."""
    import platform
    made, faults = _probe()
    if platform.libc_ver()[0] != "glibc":
        assert not made
        pytest.skip("not glibc: its allocator is its own, and nothing is set")
    assert made and faults < 7_500, faults  # under a step's worth of pages in ten steps
    assert not _probe(GLIBC_TUNABLES="glibc.malloc.perturb=0")[0] and not _probe(MALLOC_ARENA_MAX="4")[0]
