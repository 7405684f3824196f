"""The run directory (rnnlab/checkpoints.py) under faults: what a killed, doubled, starved or
tampered-with run does. Nothing is lost, nothing waits without a bound, nothing wrong is loaded in
silence (docs/RELIABILITY.md lists the promises)."""

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from rnnlab import checkpoints
from rnnlab.checkpoints import CheckpointError, RunDir, weights_digest
from rnnlab.cli import main
from rnnlab.errors import RunDirError, RunLockedError, WriteError
from rnnlab.tasks import changed_data, load_weights, open_run

ROOT = Path(__file__).resolve().parents[1]
TINY_ADDING = ["--T", "10", "--hidden", "4", "--batch-size", "8", "--eval-size", "16", "--eval-every", "2",
               "--checkpoint-every", "2", "--log-every", "2", "--threads", "1"]
TINY_LANGUAGE = ["--hidden", "8", "--embedding", "4", "--batch-size", "4", "--seq-len", "16", "--eval-every", "2",
                 "--checkpoint-every", "2", "--log-every", "2", "--threads", "1", "--samples", "0",
                 "--eval-tokens", "200"]


def train_adding(run, steps=4, *extra):
    return main(["train", "adding", *TINY_ADDING, "--steps", str(steps), "--out", str(run), *extra])


def write_text(path: Path) -> Path:
    path.write_text("To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer.\n" * 40)
    return path


def train_language(run, text, steps=4):
    return main(["train", "--text", str(text), *TINY_LANGUAGE, "--steps", str(steps), "--out", str(run)])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def child_env():
    return {**os.environ, "RNNLAB_NO_EXTENSION": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def adding_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_adding(run) == 0
    capsys.readouterr()
    return run


# --- --out never overwrites what is not a run ------------------------------------------------


def test_out_naming_a_folder_of_user_files_is_refused_and_left_untouched(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    (folder / "model-0000001.safetensors").write_bytes(b"precious")
    assert train_adding(folder) == 2
    line = error_line(capsys)
    assert "--out" in line and str(folder) in line and "config.json" in line and "not an rnnlab run" in line
    assert (folder / "config.json").read_text() == '{"mine": true}'
    assert (folder / "model-0000001.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model-0000001.safetensors"]


def test_the_trainer_api_refuses_a_folder_of_user_files_and_deletes_nothing(tmp_path):
    from rnnlab.tasks import AddingConfig, AddingTask
    from rnnlab.training import TrainConfig, Trainer

    leftovers = ["model-0000001.safetensors", "trainer-0000001.pt", ".notes.txt.tmp-1"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"the user's")
    task = AddingTask(AddingConfig(T=5, hidden=4, batch_size=4, eval_size=8))
    trainer = Trainer(task.model, task.batches(0), task.loss, TrainConfig(steps=2), run_dir=tmp_path)
    with pytest.raises(RunDirError, match="not an rnnlab run directory"):
        trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(leftovers)
    assert RunDir(tmp_path).clean() == []  # cleaning never touches a folder that is not a run


def test_check_new_raises_run_dir_error_naming_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match=r"--out .* not an rnnlab run directory \(it holds notes\.txt\)"):
        RunDir(tmp_path).check_new()


def test_out_naming_an_existing_run_is_refused_unless_resume(adding_run, capsys):
    assert train_adding(adding_run) == 2
    line = error_line(capsys)
    assert "already holds a run" in line and f"--resume {adding_run}" in line
    assert main(["train", "--resume", str(adding_run), "--steps", "6"]) == 0
    assert RunDir(adding_run).load()[0] == 6


def test_out_naming_an_empty_folder_trains_and_marks_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train_adding(tmp_path / "empty") == 0
    run = RunDir(tmp_path / "empty")
    assert run.marker_file.is_file() and run.is_run() and run.has_checkpoint()


def test_a_run_killed_before_its_first_checkpoint_can_start_again_in_its_folder(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.start_new()  # what a run does first; then it was killed
    (run.path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    assert main(["train", "--resume", str(run.path)]) == 2
    assert "before its first checkpoint" in error_line(capsys)
    for command in ("eval", "sample", "explore", "export"):  # they asked "is this a run directory?" of a run
        assert main([command, str(run.path)]) == 2
        assert error_line(capsys) == (f"rnnlab: error: run directory {run.path}: the run stopped before its first "
                                      f"checkpoint, so it has no config.json and no weights; start it again with "
                                      f"--out {run.path}")
    assert train_adding(run.path) == 0
    assert run.load()[0] == 4


# --- one process per run directory -------------------------------------------------------------


# Another process holding a run's lock as rnnlab does (flock, then "pid what" in the file); plain
# Python, so that the test does not wait for a second import of torch.
HOLD_LOCK = ("import fcntl, os, pathlib, sys, time\n"
             "folder = pathlib.Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)\n"
             "handle = open(folder / '.rnnlab.lock', 'a+'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
             "handle.truncate(0); handle.write(f'{os.getpid()} holder for a test\\n'); handle.flush()\n"
             "print('locked', flush=True); time.sleep(60)\n")


def hold_lock(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True,
                              env=child_env())
    assert holder.stdout.readline().strip() == "locked"
    holder.stdout.close()  # nothing more to read: an open pipe would outlive the test (ResourceWarning)
    return holder


def test_a_second_process_gets_an_error_naming_the_holders_pid_at_once(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} \(holder for a test\)") as error:
            with RunDir(tmp_path / "run").locked():
                pass
        assert error.value.pid == holder.pid and time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_training_into_a_locked_run_directory_is_one_line_naming_the_pid(tmp_path, capsys):
    holder = hold_lock(tmp_path / "run")
    try:
        assert train_adding(tmp_path / "run") == 2
        line = error_line(capsys)
        assert f"process {holder.pid}" in line and str(tmp_path / "run") in line
        assert not (tmp_path / "run" / "config.json").exists()  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_not_a_hang(tmp_path):
    holder = hold_lock(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert str(holder.pid) in (tmp_path / "run" / ".rnnlab.lock").read_text()  # the stale file stays...
    started = time.monotonic()
    with RunDir(tmp_path / "run").locked("me"):  # ...but the kernel dropped the lock
        assert (tmp_path / "run" / ".rnnlab.lock").read_text().split()[0] == str(os.getpid())
    assert time.monotonic() - started < 5


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.locked():
        with run.locked():
            pass
        assert os.path.realpath(run.path) in checkpoints._HELD
    assert os.path.realpath(run.path) not in checkpoints._HELD


def test_kill_9_mid_training_then_resume_finishes_the_run(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-c", "import sys; from rnnlab.cli import main; sys.exit(main(sys.argv[1:]))",
               "train", "adding", *TINY_ADDING, "--steps", "100000", "--out", str(run)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.json").is_file():
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.2)
    finally:
        child.kill()
        child.wait()
    step = RunDir(run).load()[0]
    result = subprocess.run(command[:3] + ["train", "--resume", str(run), "--steps", str(step + 2)],
                            capture_output=True, text=True, env=child_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert RunDir(run).load()[0] == step + 2
    assert not list(run.glob(".*.tmp-*"))


# --- a full disk ---------------------------------------------------------------------------------


def full_disk_for(monkeypatch, fragment: str):
    """Writes whose path contains `fragment` fail with ENOSPC after creating their temporary file."""
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and fragment in str(file):
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return handle

    monkeypatch.setattr(checkpoints, "open", fake_open, raising=False)


def test_a_full_disk_while_saving_raises_write_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save(5, {"w": torch.ones(3)}, {"step": 5})
    full_disk_for(monkeypatch, "trainer-0000010")
    with pytest.raises(WriteError, match=r"cannot write .*trainer-0000010\.pt: no space left on the device") as error:
        run.save(10, {"w": torch.zeros(3)}, {"step": 10})
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, OSError)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp-*"))  # the failed write removed its temporary file
    step, weights, _ = run.load()
    assert step == 5 and torch.equal(weights["w"], torch.ones(3))


def test_a_full_disk_during_cli_training_is_one_line_and_resume_continues(tmp_path, monkeypatch, capsys):
    full_disk_for(monkeypatch, "trainer-0000004")
    assert train_adding(tmp_path / "run", steps=6) == 2
    line = error_line(capsys)
    assert line.startswith("rnnlab: error: cannot write") and "trainer-0000004.pt" in line and "no space left" in line
    monkeypatch.undo()
    assert RunDir(tmp_path / "run").load()[0] == 2  # the previous checkpoint, whole
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert RunDir(tmp_path / "run").load()[0] == 6
    assert not list((tmp_path / "run").glob("model-0000004*"))  # the orphan of the failed save is gone


def test_temporaries_and_orphans_of_a_killed_run_are_removed_on_the_next_start(adding_run, capsys):
    leftovers = [adding_run / ".model-0000006.safetensors.tmp-99999", adding_run / ".checkpoint.json.tmp-4242",
                 adding_run / "model-0000006.safetensors"]
    for file in leftovers:
        file.write_bytes(b"half written")
    assert main(["train", "--resume", str(adding_run), "--steps", "6"]) == 0
    assert not any(f.exists() and f.read_bytes() == b"half written" for f in leftovers)
    assert not list(adding_run.glob(".*.tmp-*"))


def test_a_permission_error_is_a_write_error_naming_the_file(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoints, "open", denied, raising=False)
    with pytest.raises(WriteError, match=r"cannot write .*config\.json: permission denied"):
        RunDir(tmp_path).write_json("config.json", {})


# --- checksums ---------------------------------------------------------------------------------


def flip_byte(file: Path, offset_from_end: int = 10):
    data = bytearray(file.read_bytes())
    data[-offset_from_end] ^= 0xFF
    file.write_bytes(bytes(data))


def test_every_weights_file_a_run_writes_carries_a_checksum_of_its_tensors(adding_run):
    files = [adding_run / "best.safetensors", *adding_run.glob("model-*.safetensors")]
    assert len(files) == 2
    for file in files:
        data = file.read_bytes()
        recorded = checkpoints._metadata(data)[checkpoints.CHECKSUM_KEY]
        assert recorded == weights_digest(RunDir(adding_run).load_weights(file))


def test_a_flipped_byte_in_best_is_a_checkpoint_error_naming_the_file(adding_run):
    flip_byte(adding_run / "best.safetensors")
    task, _ = open_run(adding_run)
    with pytest.raises(CheckpointError, match=r"best\.safetensors is corrupt: the sha256 of its tensors"):
        load_weights(task, adding_run, "best")


def test_a_damaged_header_of_best_is_a_checkpoint_error_naming_the_file(adding_run):
    file = adding_run / "best.safetensors"
    data = bytearray(file.read_bytes())
    data[12] ^= 0xFF  # inside the JSON header
    file.write_bytes(bytes(data))
    task, _ = open_run(adding_run)
    with pytest.raises(CheckpointError, match=r"best\.safetensors is corrupt"):
        load_weights(task, adding_run, "best")


def test_eval_and_sample_of_a_corrupt_best_are_one_line(adding_run, capsys):
    flip_byte(adding_run / "best.safetensors")
    assert main(["eval", str(adding_run)]) == 2
    line = error_line(capsys)
    assert "best.safetensors is corrupt" in line and str(adding_run) in line


def test_a_flipped_byte_in_the_last_checkpoint_refuses_resume(adding_run, capsys):
    flip_byte(adding_run / "model-0000004.safetensors")
    assert main(["train", "--resume", str(adding_run), "--steps", "6"]) == 2
    assert "model-0000004.safetensors is corrupt" in error_line(capsys)


@pytest.mark.parametrize("step, expected", [('"x"', "step must be an int; got 'x'"),
                                            ("null", "missing or malformed entry")])
def test_a_hand_edited_step_in_the_manifest_is_one_line_naming_it(adding_run, capsys, step, expected):
    manifest = adding_run / "checkpoint.json"
    manifest.write_text(manifest.read_text().replace('"step": 4', f'"step": {step}'))
    assert main(["train", "--resume", str(adding_run), "--steps", "6"]) == 2
    line = error_line(capsys)
    assert "checkpoint.json is corrupt: " in line and expected in line, line


def test_a_metrics_line_that_is_no_record_is_skipped_on_resume(adding_run, capsys):
    """A line such as [1] (valid JSON, not a record) was an AttributeError traceback on --resume."""
    with open(adding_run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('[1]\n"text"\n')
    assert main(["train", "--resume", str(adding_run), "--steps", "6"]) == 0
    assert all(isinstance(json.loads(line), dict) for line in (adding_run / "metrics.jsonl").read_text().splitlines())


def test_weights_written_before_checksums_load_with_a_warning(adding_run):
    run = RunDir(adding_run)
    weights = run.load_weights(run.best_file)
    run.best_file.write_bytes(save_safetensors(weights))  # the old format: no metadata
    task, _ = open_run(adding_run)
    with pytest.warns(UserWarning, match=r"best\.safetensors carries no checksum"):
        load_weights(task, adding_run, "best")
    assert all(torch.equal(task.model.state_dict()[k], v) for k, v in weights.items())


def test_a_run_directory_made_before_the_marker_still_resumes_and_evaluates(adding_run, capsys):
    (adding_run / "rnnlab-run.json").unlink()
    (adding_run / ".rnnlab.lock").unlink()
    assert RunDir(adding_run).is_run()  # config.json + checkpoint.json
    assert main(["eval", str(adding_run)]) == 0
    assert main(["train", "--resume", str(adding_run), "--steps", "6"]) == 0


# --- the data a run was trained on ---------------------------------------------------------------


@pytest.fixture
def language_run(tmp_path, capsys):
    text = write_text(tmp_path / "play.txt")
    assert train_language(tmp_path / "lm", text) == 0
    capsys.readouterr()
    return tmp_path / "lm", text


def test_a_run_records_the_content_hash_and_absolute_path_of_its_text(language_run):
    run, text = language_run
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["text"]["path"] == str(text.resolve()) == config["task_config"]["text"]
    assert len(config["data"]["text"]["sha256"]) == 64 and changed_data(run) == []


def test_resume_refuses_changed_text_naming_the_file(language_run, capsys):
    run, text = language_run
    text.write_text(text.read_text() + "A new line.\n")
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 2
    line = error_line(capsys)
    assert f"--text {text.resolve()} has changed" in line and "resume" in line
    assert RunDir(run).load()[0] == 4


def test_resume_refuses_missing_text_naming_the_file(language_run, capsys):
    run, text = language_run
    text.unlink()
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 2
    assert f"--text {text.resolve()} is missing" in error_line(capsys)


def test_eval_on_changed_text_warns_naming_the_file_and_still_reports(language_run, capsys):
    run, text = language_run
    text.write_text(text.read_text().replace("question", "answer"))
    assert main(["eval", str(run)]) == 0
    captured = capsys.readouterr()
    assert f"rnnlab: warning: --text {text.resolve()} has changed" in captured.err
    assert "validation:" in captured.out


def test_sample_from_another_directory_does_not_need_the_text(language_run, monkeypatch, capsys):
    run, text = language_run
    text.unlink()
    monkeypatch.chdir(run.parent.parent)
    assert main(["sample", str(run), "--length", "12", "--prompt", "To be"]) == 0
    assert capsys.readouterr().out.startswith("To be")


# --- a hand-edited config.json --------------------------------------------------------------------


@pytest.mark.parametrize("section, field, value, expected", [
    ("task_config", "hidden", "64", "hidden must be int; got '64'"),
    ("task_config", "cell", 3, "cell must be str; got 3"),
    ("train", "lr", "3e-3", "lr must be float; got '3e-3'"),
    ("train", "threads", True, "threads must be int or null; got True"),
])
def test_a_wrongly_typed_value_in_config_json_names_file_and_field(adding_run, capsys, section, field, value, expected):
    config = json.loads((adding_run / "config.json").read_text())
    config[section][field] = value
    (adding_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"config\.json: {section}: {expected}"):
        open_run(adding_run)
    assert main(["eval", str(adding_run)]) == 2
    line = error_line(capsys)
    assert "config.json" in line and f"{field} must be" in line


def test_a_file_system_without_locks_trains_unlocked_with_a_warning(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoints.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock files; training unlocked"):
        with RunDir(tmp_path / "run").locked():
            assert (tmp_path / "run" / ".rnnlab.lock").read_text().split()[0] == str(os.getpid())


def test_the_full_validation_reports_its_progress(language_run):
    from rnnlab import progress

    run, _ = language_run
    task, _ = open_run(run)
    seen = []
    with progress.reporting(lambda done, total: seen.append((done, total))):
        task.report(task.model, run)
    assert seen and seen[-1][0] == seen[-1][1] == seen[0][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    progress.advance(1, 2)  # nobody listening: nothing happens


def test_the_weights_digest_is_the_sha256_of_names_dtypes_shapes_and_raw_bytes():
    import hashlib
    import struct

    weights = {"b": torch.tensor([1.5, -2.0], dtype=torch.float64), "a": torch.tensor([[1.0, 2.0]]),
               "c": torch.tensor(7), "d": torch.empty(0, 3), "e": torch.arange(6.0).view(2, 3)[:, ::2]}
    expected = hashlib.sha256()
    expected.update(b"a|torch.float32|(1, 2)\n" + struct.pack("<2f", 1.0, 2.0))
    expected.update(b"b|torch.float64|(2,)\n" + struct.pack("<2d", 1.5, -2.0))
    expected.update(b"c|torch.int64|()\n" + struct.pack("<q", 7))
    expected.update(b"d|torch.float32|(0, 3)\n")
    expected.update(b"e|torch.float32|(2, 2)\n" + struct.pack("<4f", 0.0, 2.0, 3.0, 5.0))  # made contiguous
    assert weights_digest(weights) == expected.hexdigest()


# --- a config.json written by another version of rnnlab ------------------------------------------

TINY_COPY = ["--T", "3", "--hidden", "4", "--batch-size", "4", "--eval-size", "8", "--eval-every", "2",
             "--checkpoint-every", "2", "--log-every", "2", "--threads", "1", "--lr-schedule", "constant",
             "--curriculum", "4", "--stop-at", "none"]


def files_of(run: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir()) if p.is_file()}


def test_a_copy_run_made_before_mix_and_chrono_resumes_as_its_own_continuation(tmp_path, capsys):
    """Runs of the copy task made before --mix and --chrono existed trained without them; their
    config.json lacks both. Resumed, such a run continues exactly as it would have gone on (not with
    today's defaults, mix 0.5 and chrono on), and eval rebuilds that model."""
    old_behaviour = ["--mix", "0", "--no-chrono"]
    assert main(["train", "copy", *TINY_COPY, *old_behaviour, "--steps", "6", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", "copy", *TINY_COPY, *old_behaviour, "--steps", "3", "--out", str(tmp_path / "old")]) == 0
    old = tmp_path / "old"
    config = json.loads((old / "config.json").read_text())
    for field in ("mix", "chrono"):  # as rnnlab wrote it before the fields existed
        del config["task_config"][field]
    for field in ("ema_decay", "precision"):
        del config["train"][field]
    del config["rnnlab_version"]
    (old / "config.json").write_text(json.dumps(config))
    task, train_config = open_run(old)
    assert (task.config.mix, task.config.chrono, train_config.ema_decay, train_config.precision) == (0.0, False, None,
                                                                                                     "32")
    capsys.readouterr()
    assert main(["train", "--resume", str(old), "--steps", "6"]) == 0
    assert "chrono" not in capsys.readouterr().out  # describe() names the chrono initialisation where it applied
    step, resumed, _ = RunDir(old).load()
    _, straight, _ = RunDir(tmp_path / "straight").load()
    assert step == 6 and all(torch.equal(resumed[name], straight[name]) for name in straight)
    assert json.loads((old / "config.json").read_text()) == config  # the run's own record is kept as it was
    assert main(["eval", str(old)]) == 0 and "copied symbols right" in capsys.readouterr().out


def test_a_seed_folder_made_before_a_field_existed_matches_the_flags_of_what_it_did(tmp_path):
    from rnnlab.seeds import _check_same_config
    from rnnlab.tasks import CopyConfig
    from rnnlab.training import TrainConfig

    run, train = RunDir(tmp_path), dataclasses.asdict(TrainConfig())
    plain = dataclasses.asdict(CopyConfig(mix=0.0, chrono=False))  # what the copy task was before the fields
    written = {k: v for k, v in plain.items() if k not in ("mix", "chrono")}
    run.write_json("config.json", {"task": "copy", "task_config": written, "train": train})
    _check_same_config(run, {"task": "copy", "task_config": plain, "train": train}, CopyConfig)
    with pytest.raises(RunDirError, match=r"another configuration \(chrono, mix differ\)"):
        today = dataclasses.asdict(CopyConfig())
        _check_same_config(run, {"task": "copy", "task_config": today, "train": train}, CopyConfig)


@pytest.mark.parametrize("section", ["task_config", "train"])
@pytest.mark.parametrize("version, says", [
    ("9.1.0", "it was written by rnnlab 9.1.0 and this is rnnlab 0.1.0; open it with rnnlab 9.1.0"),
    (None, "the file names no rnnlab version"),
])
def test_a_config_json_of_a_newer_rnnlab_is_one_line_naming_the_field_and_nothing_is_written(adding_run, capsys,
                                                                                             section, version, says):
    config = json.loads((adding_run / "config.json").read_text())
    config[section]["warp_drive"] = 3
    config["rnnlab_version"] = version
    (adding_run / "config.json").write_text(json.dumps(config))
    before = files_of(adding_run)
    for command in (["eval", str(adding_run)], ["train", "--resume", str(adding_run), "--steps", "6"]):
        assert main(command) == 2
        line = error_line(capsys)
        assert f"config.json: {section} has field(s) ['warp_drive'] that" in line and says in line
        assert "nothing was changed" in line
    assert files_of(adding_run) == before


def test_a_run_of_a_task_this_rnnlab_lacks_names_the_versions(adding_run, capsys):
    config = json.loads((adding_run / "config.json").read_text())
    (adding_run / "config.json").write_text(json.dumps({**config, "task": "chess", "rnnlab_version": "2.0"}))
    assert main(["eval", str(adding_run)]) == 2
    assert "got 'chess' (it was written by rnnlab 2.0 and this is rnnlab 0.1.0" in error_line(capsys)


def test_config_json_records_the_rnnlab_version_that_wrote_it(adding_run):
    from rnnlab import __version__

    assert json.loads((adding_run / "config.json").read_text())["rnnlab_version"] == __version__
