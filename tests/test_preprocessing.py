"""Input and output preprocessing and the readout."""

import pytest
import torch

import rnnlab as R


def test_mlp_layers_and_activation():
    mlp = R.MLP(3, 8, 2, activation="relu")
    x = torch.randn(4, 5, 3)
    l1, l2 = mlp.linears
    torch.testing.assert_close(mlp(x), l2(torch.relu(l1(x))))
    with pytest.raises(ValueError, match="at least an input and an output size"):
        R.MLP(3)


def test_choose_token_greedy_sample_top_k():
    logits = torch.tensor([[0.0, 5.0, 1.0, -1.0]]).repeat(500, 1)
    assert R.choose_token(logits).eq(1).all()
    g = torch.Generator().manual_seed(0)
    top2 = R.choose_token(logits, "sample", temperature=5.0, top_k=2, generator=g)
    assert set(top2.tolist()) == {1, 2}
    with pytest.raises(ValueError, match="temperature must be > 0"):
        R.choose_token(logits, "sample", temperature=0)
    with pytest.raises(ValueError, match="mode must be 'greedy' or 'sample'"):
        R.choose_token(logits, "beam")


def test_feedback_maps():
    soft = R.SoftmaxFeedback(3)
    assert soft.from_target(torch.tensor([[2]])).tolist() == [[[0.0, 0.0, 1.0]]]
    torch.testing.assert_close(soft.from_output(torch.zeros(1, 3)), torch.full((1, 3), 1 / 3))
    emb = R.EmbeddingFeedback(3, 2)
    torch.testing.assert_close(emb.from_output(torch.tensor([[0.0, 9.0, 0.0]])), emb.embedding.weight[1:2])
    assert R.RawFeedback(1).from_target(torch.randn(2, 5)).shape == (2, 5, 1)


def test_softmax_feedback_keeps_the_models_dtype_under_teacher_forcing():
    C = 4
    model = R.RecurrentModel(R.Recurrent(R.GRUCell(3, 5, C)), torch.nn.Linear(5, C),
                             feedback_map=R.SoftmaxFeedback(C)).double()
    xs, targets = torch.randn(2, 6, 3, dtype=torch.float64), torch.randint(0, C, (2, 6))
    ys, _ = model(xs, targets=targets)
    assert ys.dtype == torch.float64
    assert model.feedback_map.from_target(targets).dtype == torch.float64


@pytest.mark.parametrize("call, error, message", [
    (lambda: R.choose_token(torch.randn(3, 5), "sample", top_k=0), ValueError,
     r"^choose_token: top_k must be None \(all tokens\) or an int >= 1; got 0$"),
    (lambda: R.choose_token(torch.randn(3, 5), "sample", top_k=-1), ValueError, r"top_k must be None .*; got -1$"),
    (lambda: R.choose_token(torch.randn(3, 5), "sample", top_k=1.5), TypeError, r"top_k must be an int or None"),
    (lambda: R.choose_token(torch.randn(3, 5), "sample", temperature=float("nan")), ValueError,
     r"^choose_token: temperature must be > 0; got nan$"),
    (lambda: R.choose_token(torch.randn(3, 5), "sample", temperature="1"), TypeError,
     r"^choose_token: temperature must be a number; got str"),
    (lambda: R.EmbeddingFeedback(5, 4, choose="sample", temperature=0), ValueError,
     r"^EmbeddingFeedback: temperature must be > 0; got 0$"),
    (lambda: R.EmbeddingFeedback(5, 4, choose="sample", top_k=0), ValueError, r"^EmbeddingFeedback: top_k must be"),
])
def test_sampling_options_out_of_range_are_one_line_naming_them(call, error, message):
    """top_k=0 or -1 failed inside torch.topk and a NaN temperature inside torch.multinomial, naming
    nothing; EmbeddingFeedback took them and failed at its first sampled step."""
    with pytest.raises(error, match=message):
        call()
    assert R.choose_token(torch.tensor([[0.0, 9.0, 1.0]]), "sample", top_k=1).item() == 1


@pytest.mark.parametrize("call, error, message", [
    (lambda: R.MLP(3, 4.0), TypeError, r"^MLP: sizes must be an int; got float 4.0$"),
    (lambda: R.MLP(3, 0), ValueError, r"^MLP: sizes must be ints >= 1; got \(3, 0\)$"),
    (lambda: R.MLP(3, 4, 2, dropout=2.0), ValueError, r"^MLP: dropout must be in \[0, 1\); got 2.0$"),
    (lambda: R.MLP(3, 4, dropout="0.1"), TypeError, r"^MLP: dropout must be a number; got str"),
])
def test_mlp_refuses_sizes_and_dropout_out_of_range_at_construction(call, error, message):
    """A float size failed inside torch.empty, a size 0 built an empty layer, and dropout=2 failed
    at the first forward in torch's dropout."""
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("call, error, message", [
    (lambda: R.RawFeedback("2"), TypeError, r"^RawFeedback: size must be an int; got str '2'$"),
    (lambda: R.RawFeedback(2.0), TypeError, r"^RawFeedback: size must be an int; got float 2.0$"),
    (lambda: R.SoftmaxFeedback(0), ValueError, r"^SoftmaxFeedback: num_classes must be an int >= 1; got 0$"),
    (lambda: R.EmbeddingFeedback(0, 4), ValueError, r"^EmbeddingFeedback: num_classes must be an int >= 1; got 0$"),
    (lambda: R.EmbeddingFeedback(5, 0), ValueError, r"^EmbeddingFeedback: dim must be an int >= 1; got 0$"),
])
def test_feedback_map_sizes_are_checked_at_construction(call, error, message):
    """RawFeedback('2') was taken, then refused by RecurrentModel as 'vectors of size 2 but the cells
    take feedback_size=2'; a size 0 built a map of nothing."""
    with pytest.raises(error, match=message):
        call()
