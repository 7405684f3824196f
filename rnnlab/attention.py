"""Attention over a sequence of encoder states: at each decoder step, a weighted mean of the
encoder's outputs, the weights a softmax of how well each one matches the decoder's state.

    score(q, k_j) = q . k_j                          'dot'       (Luong et al., 2015)
    score(q, k_j) = v . tanh(W_q q + W_k k_j)        'additive'  (Bahdanau et al., 2015)
    a_j = softmax_j(score(q, k_j)),   context = sum_j a_j k_j

Padding (positions past each source's length) gets weight 0. Queries and keys are batch first:
queries (B, T, Hq) for T decoder steps at once, keys (B, S, Hk) for S source positions.
"""

from __future__ import annotations

import torch
from torch import nn

from .cells import _describe
from .checks import check_number
from .linear import Linear

__all__ = ["Attention", "ATTENTION_KINDS"]

ATTENTION_KINDS = ("dot", "additive")


class Attention(nn.Module):
    """context, weights = attention(queries (B, T, Hq), keys (B, S, Hk), lengths (B,) or None):
    context (B, T, Hk), weights (B, T, S) summing to 1 over each query's valid positions.

    Args:
        kind: 'dot' (needs Hq == Hk; no parameters) or 'additive' (a small MLP of both).
        query_size, key_size: Hq and Hk.
        hidden_size: the additive score's hidden size (default: Hq).
    """

    def __init__(self, kind: str, query_size: int, key_size: int, hidden_size: int | None = None):
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"Attention: kind must be one of {ATTENTION_KINDS}; got {kind!r}")
        if kind == "dot" and query_size != key_size:
            raise ValueError(f"Attention: 'dot' needs queries and keys of one size; got {query_size} and {key_size}")
        self.kind, self.query_size, self.key_size = kind, query_size, key_size
        check_number("Attention", "hidden_size", hidden_size, integer=True, optional=True)
        if hidden_size is not None and hidden_size < 1:  # 0 silently meant the default
            raise ValueError(f"Attention: hidden_size must be None (the query size) or an int >= 1; got {hidden_size}")
        if kind == "additive":
            hidden = hidden_size or query_size
            self.query_map = Linear(query_size, hidden, bias=False)
            self.key_map = Linear(key_size, hidden)
            self.score = Linear(hidden, 1, bias=False)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor | None = None):
        if not isinstance(queries, torch.Tensor) or queries.dim() != 3 or queries.shape[2] != self.query_size:
            raise ValueError(f"Attention: queries must be (B, T, {self.query_size}); got {_describe(queries)}")
        if not isinstance(keys, torch.Tensor) or keys.dim() != 3 or keys.shape[2] != self.key_size \
                or keys.shape[0] != queries.shape[0]:
            raise ValueError(f"Attention: keys must be ({queries.shape[0]}, S, {self.key_size}); got {_describe(keys)}")
        if self.kind == "dot":
            scores = queries @ keys.transpose(1, 2)  # (B, T, S)
        else:
            hidden = torch.tanh(self.query_map(queries)[:, :, None] + self.key_map(keys)[:, None])  # (B, T, S, A)
            scores = self.score(hidden).squeeze(-1)  # (B, T, S)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=keys.device)
            if lengths.shape != (keys.shape[0],):
                raise ValueError(f"Attention: lengths must be ({keys.shape[0]},); got {_describe(lengths)}")
            if bool(((lengths < 1) | (lengths > keys.shape[1])).any()):
                # a length 0 masked every key: softmax of all -inf, NaN weights and outputs
                raise ValueError(f"Attention: lengths must lie in [1, {keys.shape[1]}]; got values from "
                                 f"{int(lengths.min())} to {int(lengths.max())}")
            position = torch.arange(keys.shape[1], device=keys.device)
            padding = position[None, :] >= lengths[:, None]  # (B, S)
            scores = scores.masked_fill(padding[:, None], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return weights @ keys, weights

    def extra_repr(self):
        return f"kind={self.kind!r}, query_size={self.query_size}, key_size={self.key_size}"
