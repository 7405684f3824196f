"""The sentiment task, its batch source and the shared classification helpers: tiny runs through
the Trainer and the CLI, metrics on known inputs, exact resume, clear errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rnnlab.cli import main
from rnnlab.data.batches import ExampleBatches
from rnnlab.data.sentiment import tokens
from rnnlab.data.vocabulary import PAD, UNK, Vocabulary
from rnnlab.models import Ensemble, SequenceToVector
from rnnlab.tasks import SentimentConfig, SentimentTask
from rnnlab.tasks.classification import classification_loss, confusion_matrix, majority_baseline, predict, scores
from rnnlab.tasks.sentiment import LanguageModelHead, TokenDropout, encode_for_language_model, language_model_loss
from rnnlab.training import TrainConfig, Trainer

TINY = ["--hidden", "8", "--embedding", "8", "--batch-size", "16", "--eval-every", "2", "--log-every", "2",
        "--checkpoint-every", "2", "--threads", "1",
        "--lr-schedule", "constant"]  # constant: a run cut at step 2 and resumed to 4 then matches one run to 4


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    return SentimentTask(SentimentConfig(hidden=8, embedding=8, batch_size=16))


def test_example_batches_visit_every_example_once_per_epoch_and_resume_exactly():
    lengths = torch.randint(1, 9, (50,))
    inputs = torch.arange(50)[:, None].expand(50, 8).clone()  # row i holds i: the batch says who is in it
    source = ExampleBatches(inputs, torch.arange(50), 8, seed=3, lengths=lengths, bucket=True)
    epoch = [next(source) for _ in range(source.batches_per_epoch())]
    seen = torch.cat([b.targets for b in epoch])
    assert sorted(seen.tolist()) == list(range(50))
    for b in epoch:  # trimmed to the longest example of the batch, lengths kept
        assert b.steps == int(b.lengths.max()) and torch.equal(b.lengths, lengths[b.targets])
    state = source.state_dict()
    ahead = [next(source).targets for _ in range(9)]  # crosses into the third epoch
    again = ExampleBatches(inputs, torch.arange(50), 8, seed=3, lengths=lengths, bucket=True)
    again.load_state_dict(state)
    assert all(torch.equal(a, next(again).targets) for a in ahead)
    other = ExampleBatches(inputs, torch.arange(50), 8, seed=4, lengths=lengths, bucket=True)
    assert not torch.equal(next(other).targets, epoch[0].targets)
    with pytest.raises(ValueError, match="bucket=True needs lengths"):
        ExampleBatches(inputs, torch.arange(50), 8, bucket=True)


def test_metrics_on_known_inputs():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 0])
    result = scores(logits, targets)
    assert result["accuracy"] == pytest.approx(0.75)  # the tie argmaxes to class 0
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item())
    assert confusion_matrix(logits.argmax(1), targets, 2).tolist() == [[2, 0], [1, 1]]
    assert majority_baseline(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0, 0])) == (1, 0.25)
    with pytest.raises(ValueError, match="logits must be"):
        scores(logits[0], targets)


def test_predict_pads_and_sorts_without_changing_the_answer(task):
    ids, lengths, _ = task.data["val"]
    chosen = torch.tensor([5, 0, 17, 3])
    batched = predict(task.model, ids[chosen], lengths[chosen], batch_size=3)
    one_by_one = torch.cat([predict(task.model, ids[i:i + 1, :lengths[i]], lengths[i:i + 1]) for i in chosen])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_token_dropout_spares_padding_and_is_off_in_evaluation():
    ids = torch.tensor([[5, 6, 7, 0, 0]] * 200)
    layer = TokenDropout(0.5, unk=1)
    dropped = layer(ids)
    assert (dropped[:, 3:] == 0).all() and 0.4 < (dropped[:, :3] == 1).float().mean() < 0.6
    assert torch.equal(layer.eval()(ids), ids)


def test_a_few_steps_through_the_trainer_lower_the_loss(task):
    config = TrainConfig(steps=15, lr=1e-2, eval_every=15, threads=1)
    before = task.evaluate(task.model)["loss"]
    result = Trainer(task.model, task.batches(0), task.loss, config, evaluate=task.evaluate).fit()
    assert result.last_eval["loss"] < before and 0 <= result.last_eval["accuracy"] <= 1


def test_train_resume_and_report_through_the_cli(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "sentiment", *TINY, "--steps", "4", "--out", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "word vocabulary" in out and "test accuracy" in out and "majority baseline 53.0%" in out
    assert (straight / "vocabulary.json").is_file()
    assert main(["train", "sentiment", *TINY, "--steps", "2", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--steps", "4"]) == 0
    weights = [load_file(run / "model-0000004.safetensors") for run in (straight, split)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert main(["eval", str(split)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_bidirectional_char_model_trains():
    task = SentimentTask(SentimentConfig(level="char", bidirectional=True, cell="gru", hidden=8, embedding=8,
                                         batch_size=8))
    assert "bidirectional gru" in task.describe() and "char vocabulary" in task.describe()
    batch = next(task.batches(0))
    loss, _, count = task.loss(task.model, batch, None, 1.0)
    loss.backward()
    assert count == 8 and torch.isfinite(loss) and batch.steps == int(batch.lengths.max()) > 20


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="pool must be 'mean' or 'max' with bidirectional"):
        SentimentConfig(bidirectional=True, pool="last")
    with pytest.raises(ValueError, match=r"SentimentConfig: cell must be one of \(.vanilla."):
        SentimentConfig(cell="feedback")
    with pytest.raises(ValueError, match="word_dropout must be a number in"):
        SentimentConfig(word_dropout=1.0)
    with pytest.raises(ValueError, match="level must be one of"):
        Vocabulary([PAD, UNK, "a"], level="byte")
    with pytest.raises(ValueError, match="vocabulary level must be 'word'"):
        SentimentTask(SentimentConfig(), Vocabulary([PAD, UNK, "a"], level="char"))


def test_pretraining_trains_the_classifiers_embedding_and_core_on_the_unlabelled_text():
    torch.manual_seed(0)
    task = SentimentTask(SentimentConfig(hidden=8, embedding=8, batch_size=16, pretrain_steps=3, pretrain_outputs=50,
                                         members=1))
    assert SentimentTask(SentimentConfig(hidden=8, embedding=8)).pretraining(TrainConfig()) is None
    trainer = task.pretraining(TrainConfig(lr=1e-2, threads=1))
    assert isinstance(trainer.model, LanguageModelHead) and trainer.config.steps == 3
    text = task.unlabelled_text()
    lengths = trainer.batches.lengths
    assert len(lengths) == sum(len(task.vocabulary.encode(tokens(t, "word"))) >= 2 for t in text)  # every text
    inputs, _, targets = encode_for_language_model(task.vocabulary, ["a good film", "bad"])
    assert inputs.tolist() == [task.vocabulary.encode(["a", "good"]).tolist()] and targets.tolist() == [
        task.vocabulary.encode(["good", "film"]).tolist()]
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    batch = next(iter(task.pretraining(TrainConfig()).batches))
    logits = trainer.model(batch.inputs, batch.lengths)
    assert logits.shape == (*batch.inputs.shape, 50)
    loss, _, count = language_model_loss(trainer.model, batch, None, 1.0)
    assert count == int(batch.lengths.sum()) and torch.isfinite(loss)
    assert trainer.fit().step == 3
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("Embedding" in k or "input_map.1" in k for k in changed) and any(k.startswith("core") for k in changed)
    assert not any(k.startswith("readout") for k in changed)  # the classifier's readout is learnt from labels


def test_train_with_pretraining_through_the_cli_and_resume(tmp_path, capsys):
    run = tmp_path / "pre"
    flags = [*TINY, "--members", "1", "--pretrain-steps", "2", "--pretrain-outputs", "30"]
    assert main(["train", "sentiment", *flags, "--steps", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "pretrained (steps) 2 steps" in out and "language-model pretraining 2 steps" in out
    assert json.loads((run / "pretraining.json").read_text())["steps"] == 2
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    assert "pretrained (" not in capsys.readouterr().out  # the checkpoint holds the pretrained weights
    assert main(["train", "sentiment", *TINY, "--members", "1", "--bidirectional", "--pretrain-steps", "2"]) == 2
    assert "--pretrain-steps must be 0 with bidirectional" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "sentiment", "--pretrain-plots", "all"])
    assert "--pretrain-plots: invalid choice: 'all'" in capsys.readouterr().err


def test_concat_pool_reads_three_summaries_and_trains():
    task = SentimentTask(SentimentConfig(hidden=8, embedding=8, batch_size=8, pool="concat", members=1))
    assert task.model.readout[-1].in_features == 3 * 8 and "concat pool" in task.describe()
    loss, _, _ = task.loss(task.model, next(task.batches(0)), None, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and task.model.core.layers[0].cell.weight_hh.grad.abs().sum() > 0


def test_pretrained_layers_fine_tune_at_their_own_rate_and_start_frozen(tmp_path, capsys):
    assert SentimentTask(SentimentConfig(hidden=8, embedding=8, pretrain_steps=2, members=1)).parameter_groups() is None
    task = SentimentTask(SentimentConfig(hidden=8, embedding=8, pretrain_steps=2, pretrained_lr=0.3, frozen_steps=5,
                                         members=1))
    pretrained, readout = task.parameter_groups()
    assert (pretrained["lr_scale"], pretrained["frozen_steps"]) == (0.3, 5) and "lr_scale" not in readout
    ids = {id(p) for g in (pretrained, readout) for p in g["params"]}
    assert ids == {id(p) for p in task.model.parameters()} and len(pretrained["params"]) + len(readout["params"]) \
        == len(list(task.model.parameters()))
    assert {id(p) for p in readout["params"]} == {id(p) for p in task.model.readout.parameters()}
    assert "0.3 x the readout's learning rate" in task.describe() and "frozen for the first 5 steps" in task.describe()
    task.pretraining(TrainConfig(threads=1)).fit()
    pretrained_weights = {k: v.clone() for k, v in task.model.state_dict().items()}
    Trainer(task.model, task.batches(0), task.loss, TrainConfig(steps=3, threads=1),
            parameter_groups=task.parameter_groups()).fit()
    changed = {k for k, v in task.model.state_dict().items() if not torch.equal(v, pretrained_weights[k])}
    assert changed == {"readout.1.weight", "readout.1.bias"}  # the pretrained layers wait for step 5
    run = tmp_path / "run"
    flags = [*TINY, "--members", "1", "--pretrain-steps", "2", "--pretrain-outputs", "30", "--pretrained-lr", "0.5",
             "--frozen-steps", "3"]
    assert main(["train", "sentiment", *flags, "--steps", "2", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    assert "0.5 x the readout's learning rate" in capsys.readouterr().out
    for name in ("pretrained_lr", "frozen_steps"):
        with pytest.raises(ValueError, match=f"{name} must be none without --pretrain-steps"):
            SentimentConfig(**{name: 1})
    assert main(["train", "sentiment", *TINY, "--members", "1", "--pretrain-steps", "2", "--pretrained-lr", "0"]) == 2
    assert "--pretrained-lr must be None or a number in (0, 1]; got 0.0" in capsys.readouterr().err


@pytest.mark.parametrize("bidirectional, meant", [(False, "last"), (True, "max")])
def test_a_run_made_with_the_retired_pool_auto_reads_as_what_auto_meant(tmp_path, capsys, bidirectional, meant):
    from rnnlab.config import from_dict

    stored = {**SentimentConfig(bidirectional=bidirectional, pool="max").__dict__, "pool": "auto"}
    assert from_dict(SentimentConfig, stored, "config.json").pool == meant
    run = tmp_path / "run"  # a whole run directory whose config.json says 'auto' still evaluates
    assert main(["train", "sentiment", *TINY, "--steps", "2", "--pool", "last", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    config["task_config"]["pool"] = "auto"
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0 and "accuracy" in capsys.readouterr().out


def test_members_1_is_the_single_classifier_and_k_members_learn_each_by_its_own_loss():
    config = dict(hidden=8, embedding=8, batch_size=16)
    torch.manual_seed(3)
    single = SentimentTask(SentimentConfig(**config, members=1))  # the single classifier as before the field
    torch.manual_seed(3)
    one = SentimentTask(SentimentConfig(**config, members=1))
    assert SentimentConfig().members == 2  # the default: an ensemble of two
    torch.manual_seed(3)
    three = SentimentTask(SentimentConfig(**config, members=3))
    assert type(one.model) is SequenceToVector and "ensemble" not in one.describe()
    assert isinstance(three.model, Ensemble) and "ensemble of 3: lstm" in three.describe()
    first = three.model.members[0].state_dict()  # built first, from the same seed: the single model's start
    for name, value in single.model.state_dict().items():
        assert torch.equal(one.model.state_dict()[name], value) and torch.equal(first[name], value), name
    batch = next(single.batches(0))
    torch.manual_seed(5)
    loss_single, _, _ = single.loss(single.model, batch, None, 1.0)
    torch.manual_seed(5)
    loss_one, _, _ = one.loss(one.model, batch, None, 1.0)
    assert torch.equal(loss_single, loss_one)
    three.model.eval()  # no dropout: the loss is exactly the mean of the members' own losses
    loss, _, count = classification_loss(three.model, batch, None, 1.0)
    each = [F.cross_entropy(m(batch.inputs, lengths=batch.lengths)[0], batch.targets) for m in three.model.members]
    torch.testing.assert_close(loss, torch.stack(each).mean())
    ensemble_loss = F.cross_entropy(three.model(batch.inputs, lengths=batch.lengths)[0], batch.targets)
    assert count == 16 and not torch.isclose(loss, ensemble_loss)  # not the loss of the averaged prediction
    three.model.train()
    loss, _, _ = three.loss(three.model, batch, None, 1.0)
    loss.backward()
    assert all(m.core.layers[0].cell.weight_hh.grad.abs().sum() > 0 for m in three.model.members)


def test_members_train_resume_exactly_and_errors_are_one_line(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = [*TINY, "--members", "2"]
    assert main(["train", "sentiment", *flags, "--steps", "4", "--out", str(straight)]) == 0
    assert "ensemble of 2: lstm" in capsys.readouterr().out
    assert main(["train", "sentiment", *flags, "--steps", "2", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--steps", "4"]) == 0
    weights = [load_file(run / "model-0000004.safetensors") for run in (straight, split)]
    assert any(k.startswith("members.1.") for k in weights[0])
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert main(["eval", str(split)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["explore", str(split), "--length", "2"]) == 0  # the page traces the first member
    assert (split / "explore.html").is_file()
    capsys.readouterr()
    assert main(["export", str(split)]) == 2
    assert "got an Ensemble of 2 (a sentiment run's --members: train with --members 1 to export)" in \
        capsys.readouterr().err
    assert main(["train", "sentiment", *TINY, "--members", "0"]) == 2
    err = capsys.readouterr().err
    assert "--members must be an int in [1, 1000]; got 0" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "sentiment", *TINY, "--members", "2", "--pretrain-steps", "2"]) == 2
    assert "--pretrain-steps must be 0 with members > 1" in capsys.readouterr().err
