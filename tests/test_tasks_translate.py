"""The translate task: its data (splits that never leak, tokens, vocabularies), baselines and
metrics on known inputs, tiny runs through the Trainer and the CLI, the translate command, exact
resume, clear errors."""

import pytest
import torch

from rnnlab.cli import main
from rnnlab.data.translation import (
    EOS,
    Pair,
    build_vocabulary,
    encode_pairs,
    load_pairs,
    sentence_tokens,
    split_pairs,
)
from rnnlab.data.vocabulary import detokenize
from rnnlab.tasks import TASKS, TranslateConfig, TranslateTask
from rnnlab.tasks.translate import corpus_scores, retrieval_baseline
from rnnlab.training import TrainConfig, Trainer
from tests.resume_check import assert_resume_matches

TINY = ["--hidden", "8", "--embedding", "8", "--batch-size", "16", "--beam", "2", "--eval-every", "30",
        "--checkpoint-every", "30", "--threads", "1"]


def test_splits_never_share_a_book_or_a_number():
    bible = split_pairs(load_pairs("bible"), "bible")
    books = {name: {p.book for p in pairs} for name, pairs in bible.items()}
    assert not books["train"] & books["test"] and not books["train"] & books["val"] and not books["val"] & books["test"]
    assert len(bible["train"]) > 10_000 and len(bible["test"]) > 800
    assert all(0 < len(p.source.split()) <= 20 and 0 < len(p.target.split()) <= 20 for p in bible["test"])
    first = load_pairs("bible")[0]
    assert (first.key, first.target) == ("Gen.1.1", "En el principio crió Dios los cielos y la tierra.")
    numbers = split_pairs(load_pairs("numbers"), "numbers")
    keys = {name: {p.key for p in pairs} for name, pairs in numbers.items()}
    assert len(keys["test"]) == 1000 and not keys["test"] & keys["train"] and not keys["val"] & keys["train"]
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_pairs("klingon")


def test_tokens_vocabulary_and_encoding():
    assert sentence_tokens("¿No soy yo tu asna? Jews’ feast, quatre-vingt") == \
        ["¿", "no", "soy", "yo", "tu", "asna", "?", "jews", "’", "feast", ",", "quatre", "-", "vingt"]
    text = "¿No soy yo? quatre-vingt mille, et onze."
    assert detokenize(sentence_tokens(text), "word") == "¿no soy yo? quatre-vingt mille, et onze."
    vocabulary = build_vocabulary(["a b b", "b c"], min_count=2, max_size=None, end=True)
    assert vocabulary.tokens == ["<unk>", EOS, "b"]
    source, lengths, targets = encode_pairs([Pair("1", "b c", "b"), Pair("2", "b", "b b c")], vocabulary, vocabulary)
    assert source.tolist() == [[2, 0], [2, 0]] and lengths.tolist() == [2, 1]
    assert targets.tolist() == [[2, 1, -1, -1], [2, 2, 0, 1]]  # <eos> ends each target; -1 pads


def test_baselines_and_metrics_on_known_inputs():
    train = [Pair("a", "the cat sat", "el gato"), Pair("b", "a dog ran home", "un perro")]
    assert retrieval_baseline(train, ["the cat ran", "dog home"]) == ["el gato", "un perro"]
    references = ["el gato negro come pan", "un perro corre a casa"]
    perfect = corpus_scores(references, references)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100) and perfect["exact"] == 100
    half = corpus_scores(["x y z", "un perro corre a casa"], references)
    assert half["exact"] == 50 and 0 < half["bleu"] < 100 and 0 < half["chrf"] < 100


def tiny_task(**changes):
    return TranslateTask(TranslateConfig(dataset="numbers", hidden=8, embedding=8, batch_size=16, beam=2, **changes))


def test_resume_gives_the_same_weights(tmp_path):
    def trainer(steps, run_dir):
        torch.manual_seed(0)
        task = tiny_task(attention="additive")
        config = TrainConfig(steps=steps, lr=1e-2, eval_every=3, checkpoint_every=3, threads=1, lr_schedule="constant")
        return task, Trainer(task.model, task.batches(0), task.loss, config, evaluate=task.evaluate, run_dir=run_dir)

    assert_resume_matches(trainer, tmp_path)


def test_a_few_steps_lower_the_loss_and_translate_returns_text():
    torch.manual_seed(0)
    task = tiny_task(attention="none")
    before = task.evaluate(task.model)["loss"]
    Trainer(task.model, task.batches(0), task.loss, TrainConfig(steps=20, lr=2e-2, eval_every=20, threads=1)).fit()
    assert task.evaluate(task.model)["loss"] < before
    out = task.translate(task.model, ["forty-two", "one thousand and one"], beam=3)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    assert all("<unk>" not in s for s in task.translate(task.model, ["zzz qqq"] * 3, beam=2))  # never written
    with pytest.raises(TypeError, match="sentences must be a list of str"):
        task.translate(task.model, "forty-two")


def test_train_translate_eval_and_other_commands_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert "translate" in TASKS
    assert main(["train", "translate", *TINY, "--steps", "30", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Reina-Valera" in out and "copy the source" in out and "retrieval" in out and "beam 2" in out
    assert (run / "vocabulary.json").is_file() and (run / "translations.txt").is_file()
    assert (run / "attention.png").is_file()  # the default attention is dot
    assert main(["translate", str(run), "In the beginning God created the heaven and the earth."]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 1 and "note" not in out.err
    # words the run never saw are read as <unk>, as rnnlab sample says of its prompt (it said nothing)
    assert main(["translate", str(run), "In the beginning zyxwv created the quasar."]) == 0
    assert "note: the words ['zyxwv', 'quasar'] are not in the source vocabulary" in capsys.readouterr().err
    assert main(["sample", str(run)]) == 2
    assert "rnnlab eval, rnnlab translate" in capsys.readouterr().err
    assert main(["translate", str(run), "x", "--beam", "0"]) == 2
    assert "--beam must be in [1, 100]; got 0" in capsys.readouterr().err
    # a typo's beam searched for minutes, then ran out of memory: refused before the run loads
    assert main(["translate", str(run), "x", "--beam", "100000"]) == 2
    assert capsys.readouterr().err.strip() == "rnnlab translate: error: --beam must be in [1, 100]; got 100,000"


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="attention must be one of"):
        TranslateConfig(attention="luong")
    with pytest.raises(ValueError, match="dataset must be one of"):
        TranslateConfig(dataset="latin")
    with pytest.raises(ValueError, match=r"beam must be an int in \[1, 100\]; got 0"):
        TranslateConfig(beam=0)
    with pytest.raises(ValueError, match=r"beam must be an int in \[1, 100\]; got 101"):
        TranslateConfig(beam=101)
