"""Tokens and vocabularies (rnnlab/data/vocabulary.py): one tokenize, one Vocabulary for every task,
and every vocabulary.json an older rnnlab wrote still loads with its ids unchanged."""

import json
from pathlib import Path

import pytest

from rnnlab.data import sentiment, translation
from rnnlab.data.vocabulary import PAD, UNK, Vocabulary, detokenize, tokenize

from play_text import write_play

# vocabulary.json as each task wrote it before there was one Vocabulary (language: <unk> first;
# sentiment: <pad>, <unk>; translate: {'source', 'target'} with <eos> second in the target), with
# probes and the ids the code of then gave them (commit 1715032).
OLD = json.loads((Path(__file__).parent / "data" / "old_vocabularies.json").read_text(encoding="utf-8"))


def test_vocabulary_orders_by_frequency_with_unk_first_and_caps_its_size():
    vocab = Vocabulary.build("abbccc", "char")
    assert vocab.tokens == [UNK, "c", "b", "a"]
    assert Vocabulary.build("abbccc", "char", max_size=3).tokens == [UNK, "c", "b"]
    assert vocab.encode("cab").tolist() == [1, 3, 2]
    assert vocab.encode("cxz").tolist() == [1, 0, 0]  # unknown characters read as <unk>
    assert vocab.unknown("cxzx") == ["x", "z"]
    assert vocab.decode([1, 0, 3]) == "c\ufffda"


def test_char_encoding_fast_path_matches_the_plain_lookup(tmp_path):
    text = write_play(tmp_path / "play.txt").read_text() + "é€"
    vocab = Vocabulary.build(text[:5000], "char")
    assert vocab.encode(text).tolist() == [vocab.index.get(c, 0) for c in text]


def test_vocabulary_round_trips_through_its_dict_form():
    vocab = Vocabulary.build(tokenize("to be or not to be", "word"), "word")
    again = Vocabulary.from_dict(vocab.to_dict())
    assert again.tokens == vocab.tokens and again.level == "word"
    with pytest.raises(ValueError, match="tokens"):
        Vocabulary.from_dict({"level": "word"})


def test_words_keep_apostrophes_and_split_punctuation():
    tokens = tokenize("ROMEO:\nO, bewitch'd thou art!", "word")
    assert tokens == ["ROMEO", ":", "\n", "O", ",", "bewitch'd", "thou", "art", "!"]
    assert detokenize(tokens, "word") == "ROMEO:\nO, bewitch'd thou art!"
    vocab = Vocabulary.build(tokens, "word", max_size=4)
    assert vocab.decode(vocab.encode(["thou", "zounds"])).split(" ")[1] == UNK


@pytest.mark.parametrize("level", ["char", "word"])
def test_an_old_language_vocabulary_loads_with_the_same_ids(level):
    old = OLD[f"language-{level}"]
    vocab = Vocabulary.from_dict(old["vocabulary.json"])
    assert vocab.unk == 0 and vocab.to_dict() == old["vocabulary.json"]  # saved again, the same file
    tokens = "".join(old["tokens"]) if level == "char" else old["tokens"]
    assert vocab.encode(tokens).tolist() == old["ids"]
    assert vocab.decode(old["ids"]).split() == old["decoded"].split()  # spacing may differ, never the words


@pytest.mark.parametrize("level", ["word", "char"])
def test_an_old_sentiment_vocabulary_loads_with_the_same_ids(level):
    old = OLD[f"sentiment-{level}"]
    vocab = Vocabulary.from_dict(old["vocabulary.json"])
    assert (vocab.index[PAD], vocab.unk) == (0, 1) and vocab.to_dict() == old["vocabulary.json"]
    assert vocab.encode(sentiment.tokens(old["text"], level)).tolist() == old["ids"]
    ids, lengths, _ = sentiment.encode_batch(vocab, [sentiment.Snippet(old["text"], 1, "m"),
                                                     sentiment.Snippet("", 0, "m")])
    assert ids.tolist() == old["batch"] and lengths.tolist() == old["lengths"]


def test_an_old_translate_vocabulary_pair_loads_with_the_same_ids():
    old = OLD["translate"]
    saved = old["vocabulary.json"]
    source, target = Vocabulary.from_dict(saved["source"]), Vocabulary.from_dict(saved["target"])
    assert target.tokens[:2] == [UNK, translation.EOS] and target.to_dict() == saved["target"]
    pairs = [translation.Pair(str(i), s, t) for i, (s, t) in enumerate(old["pairs"])]
    source_ids, lengths, target_ids = translation.encode_pairs(pairs, source, target)
    assert (source_ids.tolist(), lengths.tolist(), target_ids.tolist()) == \
        (old["source_ids"], old["lengths"], old["target_ids"])


def test_the_old_conventions_rebuild_as_they_were():
    """The tasks' own builders still give the old layouts, so new runs keep the same ids too."""
    reviews = ["A fine film, isn't it?", "a dull film", "A FINE, fine cast!", "Not a film I'd see."]
    for level in ("word", "char"):
        built = sentiment.build_vocabulary([sentiment.Snippet(r, 1, "m") for r in reviews], level, min_count=2)
        assert built.to_dict() == OLD[f"sentiment-{level}"]["vocabulary.json"]
    pairs = OLD["translate"]["pairs"]
    built = translation.build_vocabulary([t for _, t in pairs], 1, None, end=True)
    assert built.to_dict() == OLD["translate"]["vocabulary.json"]["target"]


def test_unknown_tokens_map_to_unk_wherever_it_sits():
    vocab = Vocabulary([PAD, UNK, "a", "é"], "char")
    assert vocab.unk == 1
    assert vocab.encode("aéz").tolist() == [2, 3, 1] == vocab.encode(list("aéz")).tolist()
    assert Vocabulary.build("ab", "char", specials=(PAD, UNK)).encode("abc").tolist() == [2, 3, 1]


def test_one_tokenize_for_every_task():
    assert tokenize("Amélie's café, O'Neill!", "word") == ["Am", "é", "lie's", "caf", "é", ",", "O'Neill", "!"]
    assert tokenize("Amélie's café, O'Neill!", "word", lowercase=True, letters="unicode") == \
        ["amélie's", "café", ",", "o'neill", "!"]
    assert tokenize("O'Neill's o'erlook'd", "word", lowercase=True, apostrophes="one") == \
        ["o'neill", "'", "s", "o'erlook", "'", "d"]  # the sentiment task's words: one clitic each
    assert tokenize("Ab\nc", "char", lowercase=True) == "ab\nc"
    assert detokenize(["«", "oui", "»", "(", "non", ")", "\n", "fin", "."], "word") == "«oui» (non)\nfin."


def test_bad_vocabularies_and_tokens_are_named():
    with pytest.raises(ValueError, match="Vocabulary: tokens must be a list of distinct strings holding '<unk>'"):
        Vocabulary(["a", "b"], "word")
    with pytest.raises(ValueError, match="Vocabulary: tokens must be a list of distinct strings"):
        Vocabulary([UNK, "a", "a"], "word")
    with pytest.raises(ValueError, match="Vocabulary.build: specials must hold '<unk>'"):
        Vocabulary.build("ab", "char", specials=(PAD,))
    with pytest.raises(ValueError, match="Vocabulary.build: max_size must be > 2"):
        Vocabulary.build("ab", "char", max_size=2, specials=(PAD, UNK))
    with pytest.raises(TypeError, match="Vocabulary.encode: tokens must be a list of words at word level; got a str"):
        Vocabulary([UNK, "a"], "word").encode("a a")
    with pytest.raises(ValueError, match="tokenize: letters must be one of"):
        tokenize("a", "word", letters="latin")
    with pytest.raises(ValueError, match="tokenize: apostrophes must be one of"):
        tokenize("a", "word", apostrophes="two")
    with pytest.raises(ValueError, match="tokenize: level must be one of"):
        tokenize("a", "byte")
