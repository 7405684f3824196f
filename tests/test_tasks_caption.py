"""The caption task: strips built from real digits with captions from their labels, no source image
in both training and held-out strips, the metrics and baselines, the single-input model, tiny runs
through the Trainer and the CLI, exact resume, the caption command and its errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from rnnlab.cli import main
from rnnlab.data.images import read_image
from rnnlab.data.strips import DIGIT_WORDS, caption_vocabulary, caption_words, make_strips
from rnnlab.models import VectorToSequence
from rnnlab.tasks import CaptionConfig, CaptionTask
from rnnlab.tasks.caption import SlotBaseline, caption_scores, word_error_rate
from rnnlab.training import TrainConfig, Trainer

from resume_check import assert_resume_matches

SMALL = dict(vector=16, hidden=16, embed=8, batch_size=16, eval_size=100)
TINY = ["--vector", "16", "--hidden", "16", "--embed", "8", "--batch-size", "16", "--eval-size", "100",
        "--eval-every", "5", "--checkpoint-every", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    return CaptionTask(CaptionConfig(**SMALL))


def test_strips_put_digits_side_by_side_captioned_by_their_labels():
    images = torch.rand(7, 8, 8) + 0.1  # never blank
    labels = torch.arange(7)
    strips = make_strips(images, labels, 50, torch.Generator().manual_seed(1), max_digits=4)
    vocabulary = caption_vocabulary()
    assert strips.images.shape == (50, 8, 32) and strips.words.shape == (50, 5)
    assert set(strips.lengths.tolist()) == {2, 3, 4, 5}  # 1 to 4 digits, + <end>
    for image, words, length, sources in zip(strips.images, strips.words, strips.lengths, strips.sources):
        k = int(length) - 1
        assert caption_words(words, vocabulary) == " ".join(DIGIT_WORDS[int(labels[s])] for s in sources[:k])
        for slot in range(4):
            tile = image[:, 8 * slot: 8 * slot + 8]
            if slot < k:
                assert torch.equal(tile, images[sources[slot]])
            else:
                assert sources[slot] == -1 and tile.abs().sum() == 0 and vocabulary.tokens[int(words[slot])] == "<end>"
    with pytest.raises(ValueError, match="min_digits <= max_digits"):
        make_strips(images, labels, 5, torch.Generator(), max_digits=0)
    with pytest.raises(ValueError, match="labels"):
        make_strips(images, labels[:3], 5, torch.Generator())


def _rows(images):
    return {tuple(image.flatten().tolist()) for image in images}


def _tiles(strips, columns=8):
    n, rows, width = strips.images.shape
    tiles = strips.images.reshape(n, rows, width // columns, columns).permute(0, 2, 1, 3).reshape(-1, rows, columns)
    return tiles[(strips.sources >= 0).flatten()]


def test_no_source_image_is_in_both_training_and_held_out_strips(task):
    pools = {split: _rows(task.images[split][0]) for split in ("train", "val", "test")}
    assert not pools["train"] & pools["val"] and not pools["train"] & pools["test"] and not pools["val"] & pools["test"]
    batches = task.batches(0)
    training = set()
    for _ in range(20):
        batch = next(batches)
        n = len(batch.inputs)
        tiles = batch.inputs.reshape(n, 8, 5, 8).permute(0, 2, 1, 3).reshape(-1, 8, 8)
        training |= _rows(tiles[tiles.flatten(1).amax(1) > 0])
    assert training <= pools["train"] and len(training) > 500
    for split in ("val", "test"):
        held_out = _rows(_tiles(task.held_out[split]))
        assert held_out <= pools[split] and not held_out & training and len(held_out) > 100


def test_word_error_rate_and_exact_match_on_known_captions():
    assert word_error_rate([["one", "two"]], [["one", "two"]]) == 0.0
    assert word_error_rate([["one"]], [["one", "two"]]) == 0.5  # a deletion
    assert word_error_rate([["one", "three", "two"]], [["one", "two"]]) == 0.5  # an insertion
    assert word_error_rate([["two", "one"], []], [["one", "two"], ["five"]]) == 1.0  # 2 substitutions + 1 deletion / 3
    scores = caption_scores(["one two", "three"], ["one two", "four"])
    assert scores == {"exact": 0.5, "wer": pytest.approx(1 / 3)}


def test_slot_baseline_reads_separable_digits_and_knows_their_number():
    images = torch.zeros(10, 8, 8)
    images[torch.arange(10), torch.arange(10) % 8, torch.arange(10) // 8] = 1.0  # digit d lights one pixel
    baseline = SlotBaseline(images, torch.arange(10), ridge=1e-3)
    strips = make_strips(images, torch.arange(10), 30, torch.Generator().manual_seed(0), max_digits=3)
    assert baseline.caption(strips.images) == [caption_words(w, caption_vocabulary()) for w in strips.words]


def test_the_model_is_single_input_and_captions_end_at_the_end_token(task):
    assert isinstance(task.model.decoder, VectorToSequence)
    logits = task.model(task.held_out["val"].images[:4], task.steps)
    assert logits.shape == (4, 6, len(caption_vocabulary()))
    captions = task.caption(task.model, task.held_out["val"].images[:20, :, :17])  # narrower: padded with blanks
    assert len(captions) == 20 and all(len(c.split()) <= 6 and "<end>" not in c for c in captions)
    with pytest.raises(ValueError, match=r"images must be \(N, 8, W\) with 1 <= W <= 40; got \(2, 9, 8\)"):
        task.caption(task.model, torch.zeros(2, 9, 8))


def test_a_few_steps_through_the_trainer_lower_the_loss():
    torch.manual_seed(0)
    task = CaptionTask(CaptionConfig(**SMALL))
    before = task.evaluate(task.model)
    result = Trainer(task.model, task.batches(0), task.loss, TrainConfig(steps=30, lr=1e-2, eval_every=30, threads=1),
                     evaluate=task.evaluate).fit()
    assert result.last_eval["loss"] < before["loss"] - 0.1 and result.last_eval["wer"] < before["wer"]


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    def trainer(steps, run_dir):
        torch.manual_seed(0)
        task = CaptionTask(CaptionConfig(**SMALL))
        config = TrainConfig(steps=steps, lr=1e-2, eval_every=3, checkpoint_every=3, lr_schedule="constant", threads=1)
        return task, Trainer(task.model, task.batches(0), task.loss, config, evaluate=task.evaluate, run_dir=run_dir)

    assert_resume_matches(trainer, tmp_path)


def test_train_then_caption_through_the_cli(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "caption", *TINY, "--steps", "30", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "strips of 1-5 digits, 8x40 pixels" in out and "test strips: exact match" in out
    assert "baseline majority caption" in out and "baseline per slot" in out and "by digits in the strip" in out
    assert (run / "captions.png").stat().st_size > 5000
    assert main(["eval", str(run)]) == 0
    assert "word error rate" in capsys.readouterr().out

    monkeypatch.chdir(tmp_path)  # from another directory, as a user would
    assert main(["caption", str(run), "--out", "grid.png", "--count", "4"]) == 0
    assert "wrote grid.png" in capsys.readouterr().out and (tmp_path / "grid.png").stat().st_size > 2000
    assert main(["caption", str(run), "--out", "grid.png", "--count", "2"]) == 0  # its own grid: replaced
    capsys.readouterr()
    task = CaptionTask(CaptionConfig(**SMALL))
    strip = task.held_out["test"].images[0]
    Image.fromarray((255 * (1 - strip)).round().byte().numpy()).save(tmp_path / "dark-ink.png")  # black on white
    assert torch.allclose(read_image(tmp_path / "dark-ink.png"), strip, atol=1 / 255)
    assert main(["caption", str(run), "dark-ink.png"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("dark-ink.png: ") and all(w in DIGIT_WORDS for w in line.split(": ", 1)[1].split())

    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "mnist.png")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "strips").mkdir()
    photo = (tmp_path / "mnist.png").read_bytes()
    for args, message in ((["mnist.png"], "mnist.png is 28x28 pixels (rows x columns); this run reads strips 8 "
                                          "pixels high and 1 to 40 wide"),
                          (["notes.png"], "notes.png must be an image"),
                          (["missing.png"], "'missing.png', which does not exist"),
                          (["strips"], "'strips', which is a folder"),  # it said "which does not exist"
                          # the grid's flags with IMAGE were ignored: no grid, not a word
                          (["dark-ink.png", "--out", "g.png"], "--out sets the grid of held-out strips, drawn only "
                                                               "without IMAGE; with IMAGE the captions are printed"),
                          (["dark-ink.png", "--count", "3"], "got --count with 1 IMAGE"),
                          (["--count", "0"], "--count must be >= 1"),
                          (["--out", "grid.txt"], "--out must be a .png file"),
                          (["--out", "mnist.png"], "--out 'mnist.png' exists and is not a figure rnnlab drew"),
                          (["--out", "notes.png"], "--out 'notes.png' exists and is not a figure rnnlab drew")):
        assert main(["caption", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(("rnnlab: error: ", "rnnlab caption: error: ")), err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "mnist.png").read_bytes() == photo and (tmp_path / "notes.png").read_text() == "not a picture"


def test_caption_out_is_checked_before_the_run_is_read(tmp_path, capsys):
    (tmp_path / "photo.png").write_bytes(b"a user's picture")
    for out, message in (("grid.txt", "--out must be a .png file"), ("photo.png", "is not a figure rnnlab drew")):
        assert main(["caption", str(tmp_path / "no-run"), "--out", str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err  # not "RUN_DIR must be a run directory": it came after the load
    assert (tmp_path / "photo.png").read_bytes() == b"a user's picture"


def test_other_commands_name_the_command_that_serves_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "caption", *TINY, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run)]) == 2
    assert "rnnlab caption" in capsys.readouterr().err
    digits = tmp_path / "digits"
    assert main(["train", "digits", "--hidden", "8", "--steps", "1", "--threads", "1", "--out", str(digits)]) == 0
    capsys.readouterr()
    assert main(["caption", str(digits)]) == 2
    assert "does not caption images" in capsys.readouterr().err
    for weights in run.glob("*.safetensors"):
        weights.unlink()  # explore refuses a caption run before loading its weights (it loaded them first)
    assert main(["explore", str(run)]) == 2
    assert "the run is a 'caption' run; what serves it: rnnlab eval, rnnlab caption" in capsys.readouterr().err


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="max_digits must be an int >= 1"):
        CaptionConfig(max_digits=0)
    with pytest.raises(ValueError, match="encoder must be one of"):
        CaptionConfig(encoder="vit")
