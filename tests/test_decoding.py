"""Greedy and beam search through the generic step interface, and attention in the encoder-decoder:
beam width 1 is greedy, a wider beam finds what greedy misses, and step-by-step decoding gives the
teacher-forced logits."""

import pytest
import torch
from torch import nn

import rnnlab as R
from rnnlab.attention import Attention
from rnnlab.decoding import beam_search, greedy_search, select

EOS = 0
START = torch.zeros(1, 0, dtype=torch.long)  # one sequence, empty prefix


def table_step(table):
    """A step function from a fixed table of next-token log probabilities keyed by the prefix."""
    def step(previous, state):  # state: the prefixes so far, (B, t) token ids
        prefixes = state if previous is None else torch.cat([state, previous[:, None]], 1)
        logits = torch.stack([table.get(tuple(p), torch.tensor([0.0, -9.0, -9.0])) for p in prefixes.tolist()])
        return logits, prefixes
    return step


def test_a_wider_beam_finds_the_better_sequence_greedy_misses():
    # greedy takes 1 (0.6) and then must end at 0.4 x ...; 2 (0.4) then ends with certainty: 0.4 > 0.6 * 0.4
    log = torch.log
    table = {(): log(torch.tensor([1e-6, 0.6, 0.4])),
             (1,): log(torch.tensor([0.4, 0.3, 0.3])), (1, 1): log(torch.tensor([1.0, 1e-6, 1e-6])),
             (1, 2): log(torch.tensor([1.0, 1e-6, 1e-6])),
             (2,): log(torch.tensor([1.0, 1e-6, 1e-6]))}
    step = table_step(table)
    assert greedy_search(step, START, 1, EOS, 5) == [[1]]
    assert beam_search(step, START, 1, EOS, 5, width=1, length_penalty=0.0) == [[1]]
    assert beam_search(step, START, 1, EOS, 5, width=3, length_penalty=0.0) == [[2]]


def small_model(attention):
    torch.manual_seed(0)
    V, E, H = 7, 5, 6
    decoder = R.RecurrentModel(R.Stacked.of(R.LSTMCell, H, H, 1, feedback_size=E), nn.Linear(H, V),
                               feedback_map=R.EmbeddingFeedback(V, E))
    return R.EncoderDecoder(R.Stacked.of(R.LSTMCell, E, H, 1), decoder, nn.Embedding(V, E),
                            attention=None if attention == "none" else Attention(attention, H, H)).eval()


@pytest.mark.parametrize("attention", ["none", "dot", "additive"])
def test_beam_width_one_equals_greedy_and_steps_match_teacher_forcing(attention):
    model = small_model(attention)
    source, lengths = torch.randint(1, 7, (4, 5)), torch.tensor([5, 2, 4, 1])
    greedy = greedy_search(model.step, model.start(source, lengths), 4, EOS, 12)
    assert beam_search(model.step, model.start(source, lengths), 4, EOS, 12, width=1) == greedy
    assert beam_search(model.step, model.start(source, lengths), 4, EOS, 12, width=1, length_penalty=0.0) == greedy
    wide = beam_search(model.step, model.start(source, lengths), 4, EOS, 12, width=4)
    assert len(wide) == 4 and all(EOS not in row and len(row) <= 12 for row in wide)
    # feeding the targets one step at a time gives the teacher-forced logits
    targets = torch.randint(0, 7, (4, 6))
    forced = model(source, targets, source_lengths=lengths)
    state, previous, stepped = model.start(source, lengths), None, []
    for t in range(6):
        logits, state = model.step(previous, state)
        stepped.append(logits)
        previous = targets[:, t]
    torch.testing.assert_close(torch.stack(stepped, 1), forced, atol=1e-5, rtol=1e-5)
    if attention != "none":  # the weights the readout used, one row per target step
        weights = model.attention_weights(source, targets, lengths)
        assert weights.shape == (4, 6, 5) and (weights[3, :, 1:] == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))
    # padding does not change a sequence's translation
    alone = greedy_search(model.step, model.start(source[1:2, :2], lengths[1:2]), 1, EOS, 12)
    assert alone == greedy[1:2]


def test_attention_ignores_padding_and_sums_to_one():
    attention = Attention("additive", 4, 3)
    context, weights = attention(torch.randn(2, 5, 4), torch.randn(2, 6, 3), torch.tensor([6, 2]))
    assert context.shape == (2, 5, 3) and weights.shape == (2, 5, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    assert (weights[1, :, 2:] == 0).all()
    with pytest.raises(ValueError, match="'dot' needs queries and keys of one size"):
        Attention("dot", 4, 3)
    with pytest.raises(ValueError, match=r"queries must be \(B, T, 4\)"):
        attention(torch.randn(2, 4), torch.randn(2, 6, 3))


def test_select_and_errors():
    state = (torch.arange(3), [torch.arange(6).view(3, 2)], None, {"k": torch.arange(3) * 10})
    picked = select(state, torch.tensor([2, 0]))
    assert picked[0].tolist() == [2, 0] and picked[1][0].tolist() == [[4, 5], [0, 1]] and picked[2] is None
    assert picked[3]["k"].tolist() == [20, 0]
    with pytest.raises(TypeError, match="state must be a tensor"):
        select("abc", torch.tensor([0]))
    step = table_step({})
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        beam_search(step, START, 1, EOS, 5, width=0)
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        greedy_search(step, START, 1, EOS, 0)


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_a_state_of_another_batch_or_an_end_token_past_the_logits_is_refused(search):
    """beam_search kept the first `batch` sequences of a larger state and dropped the rest, silently
    (and failed with an IndexError for a smaller one); greedy_search never ended at an eos the
    logits cannot choose, returning max_steps tokens for every sequence."""
    classes = 5
    step = lambda previous, state: (torch.eye(classes)[torch.zeros(state.shape[0], dtype=torch.long)], state)
    name = search.__name__  # the logits favour token 0, the end
    with pytest.raises(ValueError, match=rf"^{name}: state must hold batch=2 sequences \(rows of its tensors\); "
                                         rf"got 3$"):
        search(step, torch.zeros(3, 4), 2, eos=0, max_steps=3)
    with pytest.raises(ValueError, match=rf"^{name}: state must hold batch=4 sequences .*; got 3$"):
        search(step, (None, {"h": torch.zeros(3, 4)}), 4, eos=0, max_steps=3)
    with pytest.raises(ValueError, match=rf"^{name}: eos must be a class of the logits, in \[0, 5\); got 9$"):
        search(step, torch.zeros(3, 4), 3, eos=9, max_steps=3)
    assert search(step, torch.zeros(3, 4), 3, eos=0, max_steps=3) == [[], [], []]
    if search is beam_search:
        with pytest.raises(TypeError, match=r"^beam_search: length_penalty must be a number; got str '1'$"):
            search(step, torch.zeros(3, 4), 3, eos=0, max_steps=3, length_penalty="1")
