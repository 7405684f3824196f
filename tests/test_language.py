"""The language-model task and its commands: train, resume, sample and eval on a tiny run."""

import json
from pathlib import Path

import pytest
import torch

from rnnlab.cli import main
from rnnlab.tasks import LanguageConfig, LanguageTask
from rnnlab.tasks.language import next_token_logits, sample

from play_text import write_play

TINY = ["--hidden", "16", "--embedding", "8", "--batch-size", "4", "--seq-len", "12", "--eval-tokens", "200",
        "--eval-every", "5", "--log-every", "5", "--threads", "1"]


@pytest.fixture
def tiny_run(tmp_path, capsys):
    text = write_play(tmp_path / "play.txt")
    run = tmp_path / "run"
    assert main(["train", "--text", str(text), *TINY, "--steps", "10", "--out", str(run), "--sample-length", "30"]) == 0
    return run, capsys.readouterr()


def test_train_prints_validation_and_a_sample(tiny_run):
    run, out = tiny_run
    assert "validation:" in out.out and "nats/char" in out.out and "--- sample 1" in out.out
    assert json.loads((run / "config.json").read_text())["task_config"]["hidden"] == 16
    assert (run / "vocabulary.json").is_file()


def test_eval_reports_nats_and_bits_per_char(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nats/char" in out and "bits/char" in out and "best.safetensors" in out
    assert "baselines, same held-out chars and vocabulary: uniform" in out and "unigram perplexity" in out


def test_sample_continues_the_prompt_and_reads_unknown_characters_as_unk(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["sample", str(run), "--prompt", "ROMEO:", "--length", "40", "--top-k", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ROMEO:") and len(out.out) >= len("ROMEO:") + 40
    assert main(["sample", str(run), "--prompt", "ROMÉO:", "--length", "10", "--temperature", "0"]) == 0
    assert "['É']" in capsys.readouterr().err


def test_resume_continues_and_refuses_a_changed_model(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["train", "--resume", str(run), "--steps", "12", "--sample-length", "5", "--prompt", "ROMÉO:"]) == 0
    out = capsys.readouterr()
    assert "stopped (steps) at step 12" in out.out
    assert "note: the prompt's ['É'] are not in the vocabulary" in out.err  # as rnnlab sample says; it said nothing
    assert main(["train", "--resume", str(run), "--hidden", "32"]) == 2
    assert "--hidden 32 (the run has 16)" in capsys.readouterr().err
    assert main(["eval", str(run.parent / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [{"level": "char"}, {"level": "char", "tokens": ["a", "a"]}, ["a", "b"]])
def test_a_damaged_vocabulary_is_one_line_naming_the_file(tiny_run, capsys, damage):
    run, _ = tiny_run
    (run / "vocabulary.json").write_text(json.dumps(damage))
    for command in (["eval", str(run)], ["sample", str(run), "--length", "5"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnlab: error: vocabulary.json: ") and err.count("\n") == 1, err


def test_word_level_model_samples_words(tmp_path):
    text = write_play(tmp_path / "play.txt")
    task = LanguageTask(LanguageConfig(text=str(text), level="word", max_vocab=12, hidden=8, embedding=4))
    assert len(task.vocabulary) == 12 and (task.train_ids == 0).any()  # rare words became <unk>
    words = task.sample_text(task.model, "ROMEO :", 20)
    assert "<unk>" not in words and len(words.split()) >= 5


@pytest.mark.parametrize("level", ["char", "word"])
def test_the_two_ends_of_sampling_that_another_engine_needs(tmp_path, level):
    """TextGenerator's prompt_ids (a new line, then the prompt) and continuation (the ids as the text after
    the prompt: at word level a space before a word), which sample_text and the onnxruntime engine share."""
    text = write_play(tmp_path / "play.txt")
    task = LanguageTask(LanguageConfig(text=str(text), level=level, hidden=8, embedding=4))
    prompt = "ROMEO:"
    ids = task.prompt_ids(prompt)
    assert ids[0] == task.vocabulary.encode(["\n"])[0] and task.vocabulary.decode(ids[1:]) == prompt
    assert task.continuation(ids[1:]) == (" " + prompt if level == "word" else prompt)
    chosen = sample(task.model, ids, 12, 0.0)
    assert task.sample_text(task.model, prompt, 12, temperature=0.0) == task.continuation(chosen)


@pytest.mark.parametrize("cell", ["vanilla", "residual", "input", "forget", "lstm", "gru"])
def test_every_cell_of_the_ladder_trains_as_a_language_model(tmp_path, cell):
    task = LanguageTask(LanguageConfig(text=str(write_play(tmp_path / "play.txt")), cell=cell, hidden=8, embedding=4,
                                       batch_size=4, seq_len=20))
    batch = next(task.batches(0))
    loss, state, count = task.loss(task.model, batch, None, 1.0)
    loss.backward()
    assert count == 4 * 20 and torch.isfinite(loss)


def test_feedback_model_reads_its_output_not_an_input(tmp_path):
    task = LanguageTask(LanguageConfig(text=str(write_play(tmp_path / "play.txt")), cell="feedback", feedback=True,
                                       hidden=8, embedding=4))
    model = task.model
    assert model.input_map is None and model.core.input_size == 0 and model.core.feedback_size == 4
    ids = task.train_ids[:30][None]
    teacher_forced, _ = next_token_logits(model, ids)
    # step by step, each step reading the embedding of the previous character, gives the same logits
    state, steps = model.core.initial_state(1), []
    for t in range(30):
        out, state = model.core.step(ids.new_zeros(1, 0).float(), state, model.feedback_map.from_target(ids[:, t]))
        steps.append(model.readout(out))
    assert torch.allclose(teacher_forced[0], torch.cat(steps), atol=1e-6)
    assert len(sample(model, ids[0, :3], 10)) == 10


def test_word_level_report_prints_the_count_baselines(tmp_path, capsys):
    text = write_play(tmp_path / "play.txt")
    run = tmp_path / "words"
    assert main(["train", "--text", str(text), "--level", "word", *TINY, "--steps", "2", "--samples", "0",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "unigram perplexity" in out and "interpolated Kneser-Ney trigram" in out


def test_a_text_too_short_for_the_batches_names_the_flags_that_fit(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 60)  # 2,580 characters
    assert main(["train", "--text", str(text), "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("rnnlab: error: LanguageTask: the training part of the text holds") and "\n" not in error
    assert "--batch-size 32 and --seq-len 100" in error
    suggested = error.split("use e.g. ")[1]
    batch_size = int(suggested.split("--batch-size ")[1].split()[0])
    assert main(["train", "--text", str(text), "--batch-size", str(batch_size), "--hidden", "8", "--steps", "1",
                 "--eval-tokens", "50", "--threads", "1", "--samples", "0", "--out", str(tmp_path / "fits")]) == 0


@pytest.mark.parametrize("make, came", [
    (lambda path: path.mkdir(), "which is a folder"),
    (lambda path: None, "which does not exist"),
    (lambda path: path.write_text(""), "which is empty"),
    (lambda path: path.write_bytes(b"\xff\xfe text"), "which is not UTF-8 (byte 0: invalid start byte)"),
    (lambda path: path.write_text("ab"), "which holds 2 chars"),  # too short to split into training and validation
    ("", "which names no file"),  # --text '': Path('') is the working folder, "which is a folder"
])
def test_a_text_that_cannot_be_read_is_one_line_naming_the_flag(tmp_path, capsys, make, came):
    """They named the library's functions and arguments (`read_text: path must name a text file`,
    `split_blocks: tokens must be long enough ...`), and a folder 'must be UTF-8 text'."""
    text = tmp_path / "text.txt"
    if make == "":
        text = ""
    else:
        make(text)
    assert main(["train", "--text", str(text), *TINY, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("rnnlab train: error: --text must be a ") and "\n" not in error, error
    assert error.endswith(f"got {str(text)!r}, {came}"), error
    assert not (tmp_path / "run").exists()


def test_eval_of_a_run_whose_text_is_gone_names_the_runs_flag(tiny_run, capsys):
    run, _ = tiny_run
    text = json.loads((run / "config.json").read_text())["task_config"]["text"]
    Path(text).unlink()
    assert main(["eval", str(run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"rnnlab eval: error: the run's --text must be a UTF-8 text file; got {text!r}, "
                     f"which does not exist")
