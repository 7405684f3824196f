"""Models: the feedback loop (teacher forcing, free running, scheduled sampling) and the lecture's
unrolling patterns (many-to-many, single output, single input, no input, encoder-decoder)."""

import pytest
import torch
from torch import nn

import rnnlab as R

torch.manual_seed(0)
I, H, C, E = 3, 6, 5, 4  # input, hidden, classes, feedback embedding


def token_model(input_size=I, layers=1, choose="greedy"):
    core = R.Stacked.of(R.LSTMCell, input_size, H, layers, feedback_size=E)
    return R.RecurrentModel(core, nn.Linear(H, C), feedback_map=R.EmbeddingFeedback(C, E, choose=choose))


def test_many_to_many_without_feedback():
    model = R.RecurrentModel(R.Recurrent(R.GRUCell(I, H)), nn.Linear(H, 2))
    xs = torch.randn(2, 7, I)
    ys, _ = model(xs)
    torch.testing.assert_close(ys, model.readout(model.core(xs)[0]))
    with pytest.raises(ValueError, match="teacher_forcing < 1 needs output feedback"):
        model(xs, targets=torch.randn(2, 7, 2), teacher_forcing=0.5)


def test_teacher_forcing_feeds_shifted_targets():
    model = token_model()
    xs, targets = torch.randn(2, 5, I), torch.randint(0, C, (2, 5))
    ys, _ = model(xs, targets=targets)
    fed = R.shift_right(model.feedback_map.embedding(targets))
    ref, _ = model.core(xs, y_prev=fed)
    torch.testing.assert_close(ys, model.readout(ref))
    # the step-by-step loop with every coin on the target gives the same (parallel == serial)
    loop, _ = model._closed_loop(xs, None, None, model.feedback_map.from_target(targets), 1.0)
    torch.testing.assert_close(loop, ys)


def test_free_running_feeds_own_choices():
    model = token_model()
    xs = torch.randn(2, 6, I)
    ys, _ = model(xs)  # no targets: free running
    state, y_fed, outs = model.core.initial_state(2), torch.zeros(2, E), []
    for t in range(6):
        out, state = model.core.step(xs[:, t], state, y_fed)
        y = model.readout(out)
        outs.append(y)
        y_fed = model.feedback_map.embedding(y.argmax(-1))
    torch.testing.assert_close(ys, torch.stack(outs, 1))
    # teacher_forcing=0 with targets is free running too
    torch.testing.assert_close(model(xs, targets=torch.randint(0, C, (2, 6)), teacher_forcing=0.0)[0], ys)


def test_scheduled_sampling_mixes():
    model = token_model()
    xs, targets = torch.randn(64, 8, I), torch.randint(0, C, (64, 8))
    tf, _ = model(xs, targets=targets)
    free, _ = model(xs)
    torch.manual_seed(1)
    mixed, _ = model(xs, targets=targets, teacher_forcing=0.5)
    assert not torch.allclose(mixed, tf) and not torch.allclose(mixed, free)
    torch.testing.assert_close(mixed[:, 0], tf[:, 0])  # step 0 reads y^{-1} = 0 either way
    with pytest.raises(ValueError, match=r"teacher_forcing must be in \[0, 1\]"):
        model(xs, targets=targets, teacher_forcing=1.5)


def test_raw_and_softmax_feedback():
    core = R.Recurrent(R.OutputFeedbackCell(I, H, 1))
    model = R.RecurrentModel(core, nn.Linear(H, 1), feedback_map=R.RawFeedback(1))
    xs, targets = torch.randn(2, 4, I), torch.randn(2, 4, 1)
    ys, _ = model(xs, targets=targets)
    torch.testing.assert_close(ys, model.readout(core(xs, y_prev=R.shift_right(targets))[0]))
    soft = R.RecurrentModel(R.Recurrent(R.GRUCell(I, H, C)), nn.Linear(H, C), feedback_map=R.SoftmaxFeedback(C))
    free, _ = soft(xs)
    assert free.shape == (2, 4, C)
    with pytest.raises(ValueError, match="pass a feedback_map"):
        R.RecurrentModel(core, nn.Linear(H, 1))
    with pytest.raises(ValueError, match="feedback_map gives vectors of size 5"):
        R.RecurrentModel(core, nn.Linear(H, 1), feedback_map=R.SoftmaxFeedback(5))


def test_generation_with_no_input():
    model = token_model(input_size=0, layers=2, choose="sample")
    ys, state = model.generate(batch=3, steps=10)
    assert ys.shape == (3, 10, C) and len(state) == 2
    with pytest.raises(ValueError, match="xs is needed"):
        token_model().generate(batch=1, steps=3)


def test_sequence_to_vector_uses_last_valid_step():
    model = R.SequenceToVector(R.Recurrent(R.LSTMCell(I, H)), nn.Linear(H, 2))
    xs, lengths = torch.randn(3, 6, I), torch.tensor([6, 2, 4])
    y, _ = model(xs, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, _ = model(xs[i:i + 1, :n])
        torch.testing.assert_close(y[i:i + 1], alone)
    mean = R.SequenceToVector(model.core, model.readout, pool="mean")
    outs, _ = model.core(xs[1:2, :2])
    torch.testing.assert_close(mean(xs, lengths)[0][1], model.readout(outs.mean(1))[0])
    maxed = R.SequenceToVector(R.Bidirectional(R.Recurrent(R.GRUCell(I, H)), R.Recurrent(R.GRUCell(I, H))),
                               nn.Linear(2 * H, 2), pool="max")
    assert maxed(xs, lengths)[0].shape == (3, 2)


def test_concat_pool_is_last_max_and_mean_of_the_valid_steps_side_by_side():
    core = R.Recurrent(R.LSTMCell(I, H))
    model = R.SequenceToVector(core, nn.Identity(), pool="concat")
    xs, lengths = torch.randn(3, 6, I), torch.tensor([6, 2, 4])
    summary, _ = model(xs, lengths)
    assert summary.shape == (3, 3 * H)
    for i, n in enumerate(lengths.tolist()):  # the padding past each length never counts
        outs = core(xs[i:i + 1, :n])[0][0]
        torch.testing.assert_close(summary[i], torch.cat([outs[-1], outs.amax(0), outs.mean(0)]))
    assert R.SequenceToVector.POOL_WIDTH["concat"] == 3
    with pytest.raises(ValueError, match="pool must be 'last', 'mean', 'max' or 'concat'; got 'sum'"):
        R.SequenceToVector(core, nn.Identity(), pool="sum")


def test_ensemble_predicts_the_mean_of_its_members_probabilities():
    torch.manual_seed(0)
    members = [R.SequenceToVector(R.Recurrent(R.LSTMCell(I, H)), nn.Linear(H, 3), pool="max") for _ in range(3)]
    ensemble = R.Ensemble(members)
    xs, lengths = torch.randn(4, 6, I), torch.tensor([6, 2, 4, 1])
    logits, state = ensemble(xs, lengths)
    alone = torch.stack([m(xs, lengths)[0] for m in members])
    assert state is None and logits.shape == (4, 3)
    torch.testing.assert_close(ensemble.member_logits(xs, lengths), alone)
    torch.testing.assert_close(logits.softmax(-1), alone.softmax(-1).mean(0))
    assert not torch.allclose(alone[0], alone[1])  # each member has its own weights
    torch.testing.assert_close(R.Ensemble(members[:1])(xs, lengths)[0], alone[0].log_softmax(-1))
    with pytest.raises(TypeError, match="Ensemble: members must be a non-empty list of modules; got list of 0"):
        R.Ensemble([])
    with pytest.raises(TypeError, match="Ensemble: members must be a non-empty list of modules; got int"):
        R.Ensemble(3)
    with pytest.raises(ValueError, match="Ensemble: state must be None"):
        ensemble(xs, lengths, state=torch.zeros(4, H))


def test_sequence_to_vector_with_embedding_input():
    model = R.SequenceToVector(R.Recurrent(R.LSTMCell(4, H)), nn.Linear(H, 2), input_map=nn.Embedding(10, 4))
    y, _ = model(torch.randint(0, 10, (2, 5)), torch.tensor([5, 3]))
    assert y.shape == (2, 2)


def test_vector_to_sequence():
    model = R.VectorToSequence(token_model())
    v = torch.randn(2, I)
    ys, _ = model(v, steps=7)
    assert ys.shape == (2, 7, C)
    xs = torch.zeros(2, 7, I)
    xs[:, 0] = v
    torch.testing.assert_close(ys, model.model(xs)[0])
    with pytest.raises(ValueError, match=r"v must be \(B, 3\)"):
        model(torch.randn(2, 4), steps=3)


def test_encoder_decoder_learns_to_reverse():
    """Sequence to sequence of different lengths: output the source reversed, then stop."""
    torch.manual_seed(0)
    V, EOS = 6, 0
    encoder = R.Recurrent(R.GRUCell(8, 32))
    decoder = R.RecurrentModel(R.Recurrent(R.GRUCell(32, 32, 8)), nn.Linear(32, V),
                               feedback_map=R.EmbeddingFeedback(V, 8))
    model = R.EncoderDecoder(encoder, decoder, source_map=nn.Embedding(V, 8))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def batch(n=64):
        lengths = torch.randint(2, 5, (n,))
        src = torch.randint(1, V, (n, 4))
        tgt = torch.full((n, 5), EOS)
        for i, L in enumerate(lengths.tolist()):
            tgt[i, :L] = src[i, :L].flip(0)
        return src, lengths, tgt

    for _ in range(300):
        src, lengths, tgt = batch()
        logits = model(src, tgt, source_lengths=lengths)
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    src, lengths, tgt = batch(200)
    pred = model.translate(src, steps=5, source_lengths=lengths).argmax(-1)
    accuracy = (pred == tgt).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_encoder_decoder_errors():
    with pytest.raises(ValueError, match="decoder must read the encoder's summary of size 6"):
        R.EncoderDecoder(R.Recurrent(R.GRUCell(I, H)), token_model(input_size=4))


def test_free_running_a_stacked_lstm_with_lengths_keeps_each_sequence_s_last_valid_state():
    """The closed loop selects the state past each sequence's end layer by layer: a Stacked LSTM's
    state is a tuple of layer tuples (it failed inside torch.where)."""
    torch.manual_seed(0)
    model = token_model(layers=2)
    xs, lengths = torch.randn(3, 6, I), torch.tensor([6, 2, 4])
    ys, state = model(xs, teacher_forcing=0.0, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        ys_b, state_b = model(xs[b:b + 1, :n], teacher_forcing=0.0)
        torch.testing.assert_close(ys[b:b + 1, :n], ys_b)
        for layer, layer_b in zip(state, state_b):
            for s, s_b in zip(layer, layer_b):
                torch.testing.assert_close(s[b:b + 1], s_b)


def test_a_step_by_step_forward_records_its_own_activity_penalty():
    """Scheduled sampling and free running step the core; the activity penalty is then that of
    their steps (zero past lengths, as the whole-sequence forward's), not a stale one of the forward
    before, whose graph a backward had already freed."""
    torch.manual_seed(0)
    regs = R.Regularizers(activity=R.L1L2(l1=0.1, l2=1.0))
    core = R.Stacked.of(R.LSTMCell, I, H, 2, feedback_size=2, regularizers=regs)
    model = R.RecurrentModel(core, nn.Linear(H, 2), feedback_map=R.RawFeedback(2))
    xs, targets, lengths = torch.randn(3, 5, I), torch.randn(3, 5, 2), torch.tensor([5, 2, 4])
    ys, _ = model(xs, targets=targets, lengths=lengths)  # teacher forcing: all steps at once
    whole = R.regularization_loss(model)
    (ys.sum() + whole).backward()
    ys, _ = model(xs, targets=targets, teacher_forcing=1 - 1e-12, lengths=lengths)  # step by step, same feedback
    stepped = R.regularization_loss(model)
    torch.testing.assert_close(stepped, whole)
    (ys.sum() + stepped).backward()  # it raised: backward through a freed graph
    model(xs, teacher_forcing=0.0)
    assert not torch.equal(R.regularization_loss(model), whole)
    model.eval()
    model(xs, teacher_forcing=0.0)
    assert float(R.regularization_loss(model)) == 0.0


def test_generate_refuses_inputs_of_another_batch_or_length():
    """generate(batch, steps, xs=...) ran xs's own batch and length, ignoring both counts."""
    model = token_model()
    expected = r"generate: xs must be \(batch, steps, ...\) = \(4, 10, ...\); got tensor \(2, 5, 3\)"
    with pytest.raises(ValueError, match=expected):
        model.generate(4, 10, xs=torch.randn(2, 5, I))
    assert model.generate(2, 5, xs=torch.randn(2, 5, I))[0].shape == (2, 5, C)


@pytest.mark.parametrize("feedback", [R.EmbeddingFeedback(C, E), R.SoftmaxFeedback(C)])
def test_float_token_targets_are_refused_not_truncated(feedback):
    """Token targets as floats were cast with .long(): 0.7 became token 0, silently."""
    with pytest.raises(TypeError, match=r"Feedback: targets must be integer token ids; got torch.float32"):
        feedback.from_target(torch.tensor([[0.7, 2.0]]))
    assert feedback.from_target(torch.tensor([[0, 2]])).shape[:2] == (1, 2)


@pytest.mark.parametrize("attention", [False, True])
def test_translate_refuses_a_step_count_below_one_naming_itself(attention):
    """With attention, translate(source, 0) failed in torch.stack of no steps; without, the error
    named RecurrentModel.generate."""
    from rnnlab.attention import Attention
    decoder = R.RecurrentModel(R.Recurrent(R.GRUCell(H, H, feedback_size=E)), nn.Linear(H, C),
                               feedback_map=R.EmbeddingFeedback(C, E))
    model = R.EncoderDecoder(R.Recurrent(R.GRUCell(I, H)), decoder,
                             attention=Attention("dot", H, H) if attention else None)
    source = torch.randn(2, 4, I)
    with pytest.raises(ValueError, match=r"^EncoderDecoder.translate: steps must be >= 1; got 0$"):
        model.translate(source, 0)
    with pytest.raises(TypeError, match=r"^EncoderDecoder.translate: steps must be an int"):
        model.translate(source, 2.0)
    assert model.translate(source, 3).shape == (2, 3, C)


@pytest.mark.parametrize("encoder", ["lstm", "wider", "two layers", "bidirectional"])
def test_pass_state_needs_states_of_one_structure_at_construction(encoder):
    """An encoder whose final state cannot start the decoder failed at the first forward, with a
    message about a `state` the user never passed; now the constructor says so (or pass_state=False)."""
    encoder = {"lstm": R.Recurrent(R.LSTMCell(I, H)), "wider": R.Recurrent(R.GRUCell(I, H + 2)),
               "two layers": R.Stacked.of(R.GRUCell, I, H, 2),
               "bidirectional": R.Bidirectional(R.Recurrent(R.GRUCell(I, H // 2)), R.Recurrent(R.GRUCell(I, H // 2)))}[
        encoder]
    decoder = R.RecurrentModel(R.Recurrent(R.GRUCell(encoder.output_size, H, feedback_size=E)), nn.Linear(H, C),
                               feedback_map=R.EmbeddingFeedback(C, E))
    with pytest.raises(ValueError, match=r"^EncoderDecoder: pass_state=True starts the decoder from the encoder's "
                                         r"final state, .*got .* and \(6,\) \(or pass_state=False\)$"):
        R.EncoderDecoder(encoder, decoder)
    model = R.EncoderDecoder(encoder, decoder, pass_state=False)
    assert model(torch.randn(2, 4, I), torch.randint(0, C, (2, 5))).shape == (2, 5, C)


@pytest.mark.parametrize("kind", ["dot", "additive"])
def test_attention_refuses_lengths_outside_the_keys_and_a_hidden_size_of_zero(kind):
    """A length 0 masked every key: the softmax of all -inf gave NaN weights and outputs, silently;
    hidden_size=0 silently meant the default."""
    from rnnlab.attention import Attention

    attention = Attention(kind, H, H)
    queries, keys = torch.randn(2, 3, H), torch.randn(2, 5, H)
    for lengths, low, high in (([5, 0], 0, 5), ([5, 9], 5, 9)):
        with pytest.raises(ValueError, match=rf"^Attention: lengths must lie in \[1, 5\]; got values from {low} "
                                             rf"to {high}$"):
            attention(queries, keys, torch.tensor(lengths))
    with pytest.raises(ValueError, match=r"^Attention: lengths must be \(2,\); got tensor \(3,\)"):
        attention(queries, keys, torch.tensor([5, 2, 1]))
    context, weights = attention(queries, keys, torch.tensor([5, 2]))
    assert torch.isfinite(context).all() and float(weights.detach()[1, :, 2:].abs().max()) == 0.0
    with pytest.raises(ValueError, match=r"^Attention: hidden_size must be None \(the query size\) or an int >= 1; "
                                         r"got 0$"):
        Attention(kind, H, H, 0)
