"""Data: the bundled corpus, the block split, stateful batches (tokens and vocabularies: test_vocabulary.py)."""

import pytest
import torch

from rnnlab.data import Batch, TokenStream, read_text, split_blocks

from play_text import write_play


def test_bundled_corpus_loads_as_plain_speeches():
    text = read_text()
    assert len(text) > 4_000_000
    assert text.isascii()
    assert not any(mark in text for mark in ("**", "_", "#", "[", "\\"))  # the Markdown is gone
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert "\nROMEO:\n" in text


def test_read_text_reads_a_file_and_names_a_missing_one(tmp_path):
    path = write_play(tmp_path / "play.txt")
    assert read_text(str(path)) == path.read_text()
    with pytest.raises(ValueError, match="nope.txt"):
        read_text(str(tmp_path / "nope.txt"))


def test_read_text_of_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"got '.*', which is a folder$"):
        read_text(str(tmp_path))


def test_split_blocks_takes_the_tail_of_every_block():
    text = "".join(chr(ord("a") + i) * 10 for i in range(10))  # ten blocks of ten
    train, val = split_blocks(text, 0.2, blocks=10)
    assert val == "".join(chr(ord("a") + i) * 2 for i in range(10))
    assert train == "".join(chr(ord("a") + i) * 8 for i in range(10))
    words = list(text)
    assert split_blocks(words, 0.2, blocks=10) == (list(train), list(val))
    with pytest.raises(ValueError, match="val_fraction"):
        split_blocks(text, 1.5)


def test_stateful_stream_continues_each_row_and_resumes_exactly():
    ids = torch.arange(1000)
    stream = TokenStream(ids, batch_size=4, seq_len=10, seed=3)
    first, second = next(stream), next(stream)
    assert not first.continues and second.continues
    assert torch.equal(first.targets, first.inputs + 1)
    assert torch.equal(second.inputs[:, 0], first.targets[:, -1])  # row r goes on where it stopped
    for _ in range(30):  # past the end of an epoch: a new start, from a zero state
        next(stream)
    saved = stream.state_dict()
    expected = [next(stream) for _ in range(30)]
    again = TokenStream(ids, batch_size=4, seq_len=10, seed=3)
    again.load_state_dict(saved)
    assert all(torch.equal(a.inputs, b.inputs) and a.continues == b.continues
               for a, b in zip(expected, (next(again) for _ in range(30))))
    assert any(not b.continues for b in expected)


def test_stateless_stream_draws_random_windows_from_zero_states():
    stream = TokenStream(torch.arange(500), batch_size=3, seq_len=7, seed=0, stateful=False)
    batch = next(stream)
    assert batch.inputs.shape == (3, 7) and not batch.continues
    assert torch.equal(batch.targets, batch.inputs + 1)


def test_batch_window_cuts_time_and_marks_continuation():
    batch = Batch(torch.zeros(2, 10, 3), torch.zeros(2, 10, dtype=torch.long))
    window = batch.window(4, 8)
    assert window.inputs.shape == (2, 4, 3) and window.continues
    assert not batch.window(0, 4).continues
    with pytest.raises(ValueError, match="targets must be per step"):
        Batch(torch.zeros(2, 10, 3), torch.zeros(2)).window(0, 5)
