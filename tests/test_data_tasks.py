"""Bundled data of the application tasks: sentiment, time series, images."""

import gzip

import numpy as np
import pytest
import torch

from rnnlab.data import images, sentiment, series


def test_rotten_tomatoes_loads_and_splits_by_movie():
    snippets = sentiment.load_rotten_tomatoes()
    assert len(snippets) == 12808
    assert sum(s.label for s in snippets) == 7403  # fresh: the majority baseline is 57.8%
    train, val, test = sentiment.split_by_movie(snippets)
    assert len(train) + len(val) + len(test) == len(snippets)
    movies = [{s.movie for s in part} for part in (train, val, test)]
    assert not (movies[0] & movies[1]) and not (movies[0] & movies[2]) and not (movies[1] & movies[2])
    assert 0.75 < len(train) / len(snippets) < 0.85


def test_pretraining_text_holds_no_held_out_movie():
    train, val, test = sentiment.split_by_movie(sentiment.load_rotten_tomatoes())
    plots = sentiment.load_plot_summaries()
    assert len(plots) == 1097 and len({p.movie for p in plots}) == 1097
    held_out, trained = {s.movie for s in val + test}, {s.movie for s in train}
    sentences_of = {p.movie: set(sentiment.sentences(p.text)) for p in plots}

    def sentences_from(movies):
        return set().union(*(sentences_of[m] for m in movies if m in sentences_of))

    held_out_only = sentences_from(held_out) - sentences_from(set(sentences_of) - held_out)
    assert len(held_out_only) > 100  # held-out movies have plots: the test can fail
    for which, allowed in (("none", set()), ("training", trained), ("not-held-out", set(sentences_of) - held_out)):
        text = sentiment.unlabelled_text(train, val + test, plots, which)
        assert text[:len(train)] == [s.text for s in train]  # the training snippets, labels dropped
        extra = set(text[len(train):])
        assert extra == sentences_from(allowed) and not extra & held_out_only
        assert not extra & {s.text for s in val + test}
    assert len(sentences_from(trained)) < len(sentences_from(set(sentences_of) - held_out))
    assert sentiment.sentences("He runs. She (Ann) hides! Why? e.g. no") == ["He runs.", "She (Ann) hides!",
                                                                            "Why? e.g. no"]
    with pytest.raises(ValueError, match="which must be one of"):
        sentiment.unlabelled_text(train, val, plots, "all")


def test_vocabulary_and_batches():
    vocab = sentiment.build_vocabulary([sentiment.Snippet(t, 1, "m") for t in ("A fine film.", "a dull film")],
                                       "word", min_count=2)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "film"]
    assert vocab.encode(sentiment.tokens("A film nobody saw", "word")).tolist() == [2, 3, 1, 1]
    ids, lengths, labels = sentiment.encode_batch(vocab, [sentiment.Snippet("a film", 1, "m"),
                                                          sentiment.Snippet("film", 0, "m")])
    assert ids.tolist() == [[2, 3], [3, 0]] and lengths.tolist() == [2, 1] and labels.tolist() == [1, 0]
    assert sentiment.tokens("It isn't bad, it's great!", "word") == ["it", "isn't", "bad", ",", "it's", "great", "!"]
    assert list(sentiment.tokens("Bad!!", "char")) == ["B", "a", "d", "!", "!"]


def test_series():
    sun, co2 = series.load_sunspots(), series.load_co2()
    assert sun.shape == (309,) and sun[0] == 5
    assert co2.shape == (2284,) and not torch.isnan(co2).any()
    assert 310 < co2.min() and co2.max() < 380
    filled = series.fill_gaps([None, 1.0, None, 3.0, None])
    assert filled.tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="at least one known value"):
        series.fill_gaps([None])


def test_digits():
    x, y = images.load_digits()
    assert x.shape == (1797, 8, 8) and y.shape == (1797,)
    assert 0 <= x.min() and x.max() == 1 and set(y.tolist()) == set(range(10))


def test_idx_reader(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + arr.tobytes()))
    assert torch.equal(images.read_idx(path), torch.from_numpy(arr))
    ints = np.array([1, -2, 300], dtype=">i4")
    (tmp_path / "i").write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + ints.tobytes())
    assert images.read_idx(tmp_path / "i").tolist() == [1, -2, 300]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="is not an IDX file"):
        images.read_idx(tmp_path / "bad")


def test_fashion_mnist_missing_names_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        images.load_fashion_mnist(tmp_path)
