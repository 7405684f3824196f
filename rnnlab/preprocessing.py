"""Preprocessing of inputs and outputs, and the readout f (the lecture: "both input and output can
be preprocessed").

Input maps turn raw x into what the cell reads (an embedding of token ids, an MLP). The readout f
turns the cell's output into y. A feedback map is the output preprocessing: it turns y into the
vector W multiplies at the next step, from the target under teacher forcing (`from_target`) or from
the model's own output when running free (`from_output`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cells import ACTIVATIONS
from .checks import check_number

__all__ = ["MLP", "RawFeedback", "SoftmaxFeedback", "EmbeddingFeedback", "choose_token"]


class MLP(nn.Module):
    """Linear layers with an activation between them: sizes (in, hidden..., out)."""

    def __init__(self, *sizes: int, activation: str = "tanh", dropout: float = 0.0):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes must name at least an input and an output size; got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        for size in sizes:  # a float failed inside torch.empty; a 0 made an empty layer
            check_number("MLP", "sizes", size, integer=True)
            if size < 1:
                raise ValueError(f"MLP: sizes must be ints >= 1; got {sizes}")
        check_number("MLP", "dropout", dropout)
        if not 0 <= dropout < 1:  # it failed at the first forward, in torch's dropout
            raise ValueError(f"MLP: dropout must be in [0, 1); got {dropout}")
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.activation, self.dropout = activation, dropout
        self.in_features, self.out_features = sizes[0], sizes[-1]

    def forward(self, x):
        for i, linear in enumerate(self.linears):
            if i:
                x = F.dropout(ACTIVATIONS[self.activation](x), self.dropout, self.training)
            x = linear(x)
        return x


def choose_token(logits: torch.Tensor, mode: str = "greedy", temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C) logits -> (B,) token ids, greedy (argmax) or sampled at a temperature from the top k."""
    if mode == "greedy":
        return logits.argmax(dim=-1)
    if mode != "sample":
        raise ValueError(f"choose_token: mode must be 'greedy' or 'sample'; got {mode!r}")
    check_sampling("choose_token", temperature, top_k)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(where: str, temperature, top_k) -> None:
    """TypeError or ValueError naming `temperature` (a number > 0) or `top_k` (None or an int >= 1): top_k=0
    or -1 failed inside torch.topk, naming nothing, and a NaN temperature inside torch.multinomial."""
    check_number(where, "temperature", temperature)
    if not temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0; got {temperature}")
    check_number(where, "top_k", top_k, integer=True, optional=True)
    if top_k is not None and top_k < 1:
        raise ValueError(f"{where}: top_k must be None (all tokens) or an int >= 1; got {top_k}")


def _check_size(where: str, name: str, value) -> None:
    """A feedback map's size: an int >= 1 (RawFeedback('2') passed, then 'size 2 but feedback_size=2')."""
    check_number(where, name, value, integer=True)
    if value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1; got {value}")


def _check_tokens(where: str, targets: torch.Tensor, num_classes: int) -> None:
    """ValueError naming `targets` when a token id lies outside [0, num_classes): torch would fail
    deep inside (an IndexError naming nothing on CPU, a device-side assert on CUDA). Floats are refused:
    `.long()` truncated them silently (probabilities in [0, 1) all read as token 0)."""
    if targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"{where}: targets must be integer token ids; got {targets.dtype} (whole numbers stored "
                        f"as floats: convert them with .long())")
    if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < num_classes:
        raise ValueError(f"{where}: targets must be token ids in [0, {num_classes - 1}]; got values from "
                         f"{int(targets.min())} to {int(targets.max())}")


class RawFeedback(nn.Module):
    """Feed back y itself (regression, time series): y* under teacher forcing, y when free."""

    def __init__(self, size: int):
        super().__init__()
        _check_size("RawFeedback", "size", size)
        self.size = size

    def from_target(self, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 2:  # (B, T) of scalars
            targets = targets.unsqueeze(-1)
        return targets

    def from_output(self, y: torch.Tensor) -> torch.Tensor:
        return y


class SoftmaxFeedback(nn.Module):
    """Feed back class probabilities: one-hot targets under teacher forcing, softmax(y) when free."""

    def __init__(self, num_classes: int):
        super().__init__()
        _check_size("SoftmaxFeedback", "num_classes", num_classes)
        self.size = num_classes
        # no weights, yet one-hot targets must take the model's dtype: an empty buffer follows
        # model.double() / .to(dtype) like a parameter would
        self.register_buffer("dtype_probe", torch.empty(0), persistent=False)

    def from_target(self, targets: torch.Tensor) -> torch.Tensor:
        _check_tokens("SoftmaxFeedback", targets, self.size)
        return F.one_hot(targets.long(), self.size).to(self.dtype_probe.dtype)

    def from_output(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)


class EmbeddingFeedback(nn.Module):
    """Feed back an embedding of a token: the given target token under teacher forcing, the token
    chosen from the model's logits (greedy or sampled) when free."""

    def __init__(self, num_classes: int, dim: int, choose: str = "greedy", temperature: float = 1.0,
                 top_k: int | None = None):
        super().__init__()
        if choose not in ("greedy", "sample"):
            raise ValueError(f"EmbeddingFeedback: choose must be 'greedy' or 'sample'; got {choose!r}")
        _check_size("EmbeddingFeedback", "num_classes", num_classes)
        _check_size("EmbeddingFeedback", "dim", dim)
        check_sampling("EmbeddingFeedback", temperature, top_k)  # else a bad value fails at the first sampled step
        self.embedding = nn.Embedding(num_classes, dim)
        self.size, self.choose, self.temperature, self.top_k = dim, choose, temperature, top_k

    def from_target(self, targets: torch.Tensor) -> torch.Tensor:
        _check_tokens("EmbeddingFeedback", targets, self.embedding.num_embeddings)
        return self.embedding(targets.long())

    def from_output(self, logits: torch.Tensor) -> torch.Tensor:
        return self.embedding(choose_token(logits.detach(), self.choose, self.temperature, self.top_k))
