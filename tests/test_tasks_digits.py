"""The digits task: fixed splits, the linear baseline, tiny runs through the Trainer and the CLI
(the 8x8 digits and a small fake Fashion-MNIST in IDX files), exact resume, clear errors."""

import gzip

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rnnlab.cli import main
from rnnlab.data.images import load_digits
from rnnlab.tasks import DigitsConfig, DigitsTask
from rnnlab.tasks.digits import linear_baseline, load_splits
from rnnlab.training import TrainConfig, Trainer

TINY = ["--hidden", "8", "--batch-size", "32", "--eval-every", "2", "--log-every", "2", "--checkpoint-every", "2",
        "--threads", "1", "--lr-schedule", "constant"]  # constant: a run cut and resumed then matches one run


def write_idx(path, array: np.ndarray) -> None:
    codes = {np.uint8: 0x08}
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + dims
    path.write_bytes(gzip.compress(header + array.tobytes(), compresslevel=1))


@pytest.fixture
def fake_fashion(tmp_path):
    """A Fashion-MNIST look-alike: 5,100 training and 20 test images of 28x28, class k a bright row k."""
    def images(labels):
        out = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        out[np.arange(len(labels)), 2 * labels] = 255
        return out

    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 10, 5100).astype(np.uint8), rng.integers(0, 10, 20).astype(np.uint8)
    for name, array in (("train-images-idx3-ubyte.gz", images(train)), ("train-labels-idx1-ubyte.gz", train),
                        ("t10k-images-idx3-ubyte.gz", images(test)), ("t10k-labels-idx1-ubyte.gz", test)):
        write_idx(tmp_path / name, array)
    return tmp_path


def test_digit_splits_are_fixed_disjoint_and_complete():
    splits = load_splits(DigitsConfig())
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 1257, "val": 180, "test": 360}
    assert torch.equal(load_splits(DigitsConfig())["test"][0], splits["test"][0])
    images, labels = load_digits()
    together = torch.cat([splits[k][0] for k in ("train", "val", "test")]).reshape(1797, 64)
    assert torch.equal(together.sum(0), images.reshape(1797, 64).sum(0))  # every image in exactly one split
    assert torch.equal(torch.cat([splits[k][1] for k in splits]).bincount(), labels.bincount())
    assert splits["train"][0].shape[1:] == (8, 8)


def test_linear_baseline_on_known_inputs():
    images = torch.eye(10).repeat(3, 1).reshape(30, 2, 5)  # class k lights pixel k: linearly separable
    labels = torch.arange(10).repeat(3)
    assert linear_baseline((images, labels), (images, labels), ridge=1e-3) == 1.0
    splits = load_splits(DigitsConfig())
    assert 0.9 < linear_baseline(splits["train"], splits["test"]) < 0.95


def test_a_few_steps_through_the_trainer_lower_the_loss():
    torch.manual_seed(0)
    task = DigitsTask(DigitsConfig(hidden=16))
    before = task.evaluate(task.model)["loss"]
    result = Trainer(task.model, task.batches(0), task.loss, TrainConfig(steps=30, lr=3e-2, eval_every=30, threads=1),
                     evaluate=task.evaluate).fit()
    assert result.last_eval["loss"] < before and result.last_eval["accuracy"] > 0.3


def test_train_resume_report_and_confusion_matrix_through_the_cli(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "digits", *TINY, "--steps", "4", "--out", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "8 steps of 8 pixels" in out and "1,257 / 180 / 360 images" in out
    assert "test accuracy" in out and "linear least squares on the pixels 92.22%" in out
    assert (straight / "confusion.png").stat().st_size > 1000
    assert main(["train", "digits", *TINY, "--steps", "2", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--steps", "4"]) == 0
    weights = [load_file(run / "model-0000004.safetensors") for run in (straight, split)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert main(["eval", str(split)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_fashion_reads_idx_files_row_by_row(fake_fashion, tmp_path, capsys):
    task = DigitsTask(DigitsConfig(dataset="fashion", root=str(fake_fashion), hidden=8))
    assert {k: len(v[1]) for k, v in task.data.items()} == {"train": 100, "val": 5000, "test": 20}
    assert task.data["train"][0].shape[1:] == (28, 28) and task.data["train"][0].max() == 1.0
    assert main(["train", "digits", "--dataset", "fashion", "--root", str(fake_fashion), *TINY, "--steps", "2",
                 "--out", str(tmp_path / "run")]) == 0
    assert "28 steps of 28 pixels" in capsys.readouterr().out


def test_errors_are_clear(tmp_path, capsys):
    assert main(["train", "digits", "--dataset", "fashion", "--root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "apt-get install dataset-fashion-mnist" in err
    with pytest.raises(ValueError, match="root must be None unless dataset='fashion'"):
        DigitsConfig(root="/tmp")
    (tmp_path / "afile").write_text("not a folder")
    for root, came in (("afile", "which is a file"), ("nowhere", "which does not exist")):
        # it said "Fashion-MNIST not found under FILE (missing ...)": now the flag, what it must be, what came
        path = str(tmp_path / root)
        assert main(["train", "digits", "--dataset", "fashion", "--root", path, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err == (f"rnnlab train: error: --root must be a folder holding the Fashion-MNIST IDX files; "
                       f"got {path!r}, {came}\n")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="dataset must be one of"):
        DigitsConfig(dataset="mnist")
    with pytest.raises(ValueError, match="dropout must be a number in"):
        DigitsConfig(dropout=1.5)
