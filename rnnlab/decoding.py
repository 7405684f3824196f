"""Decoding a sequence of tokens from a model that emits one token's logits per step: greedy and
beam search, for any model with this step interface (translation, captioning, ...):

    logits, state = step(previous, state)

previous: the token ids (B,) chosen at the step before, None at the first step; logits (B, C);
state: a tensor or a tuple / list / dict of them (or None), every tensor batch first, so a beam
can reorder it. Both searches stop a sequence at its end token `eos` and return the tokens before
it, one list per sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .checks import check_number

__all__ = ["greedy_search", "beam_search", "select", "Step"]

Step = Callable[[torch.Tensor | None, Any], tuple[torch.Tensor, Any]]


def select(state, index: torch.Tensor):
    """The state's rows `index` (along dim 0 of every tensor in it): to expand a batch into beams
    and to follow the beams that survive a step."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index.to(state.device))
    if isinstance(state, (tuple, list)):
        return type(state)(select(s, index) for s in state)
    if isinstance(state, dict):
        return {k: select(v, index) for k, v in state.items()}
    raise TypeError(f"select: state must be a tensor, None, or a tuple, list or dict of them; got "
                    f"{type(state).__name__}")


def _check(eos: int, max_steps: int, batch: int, state=None, where: str = "decoding"):
    for name, value, low in (("eos", eos, 0), ("max_steps", max_steps, 1), ("batch", batch, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"decoding: {name} must be an int >= {low}; got {value!r}")
    rows = _rows(state)
    if rows is not None and rows != batch:  # beam search kept the first `batch` sequences, silently
        raise ValueError(f"{where}: state must hold batch={batch} sequences (rows of its tensors); got {rows}")


def _rows(state) -> int | None:
    """The batch size of a state: its first tensor's rows (None: no tensor in it)."""
    if isinstance(state, torch.Tensor):
        return state.shape[0]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (tuple, list)) else ()
    return next((rows for rows in map(_rows, values) if rows is not None), None)


def _check_eos(where: str, eos: int, classes: int) -> None:
    if not 0 <= eos < classes:  # an end token the logits cannot choose never ends a sequence
        raise ValueError(f"{where}: eos must be a class of the logits, in [0, {classes}); got {eos}")


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def greedy_search(step: Step, state, batch: int, eos: int, max_steps: int) -> list[list[int]]:
    """The most likely token at every step, until `eos` (or max_steps): one token list per sequence."""
    _check(eos, max_steps, batch, state, "greedy_search")
    previous, chosen, done = None, [], None
    for _ in range(max_steps):
        logits, state = step(previous, state)
        _check_eos("greedy_search", eos, logits.shape[-1])
        previous = logits.argmax(-1)
        chosen.append(previous)
        done = previous == eos if done is None else done | (previous == eos)
        if bool(done.all()):
            break
    rows = torch.stack(chosen, dim=1).tolist()  # (B, steps)
    return [_until_eos(row, eos) for row in rows]


@torch.no_grad()
def beam_search(step: Step, state, batch: int, eos: int, max_steps: int, width: int = 5,
                length_penalty: float = 1.0) -> list[list[int]]:
    """The best of `width` hypotheses kept per sequence at every step, ranked by their summed log
    probability divided by length ** length_penalty (0: no normalisation, which favours short
    hypotheses; 1: the mean per token). A hypothesis that emits `eos` is finished and keeps its
    place in the beam (its score fixed) until every hypothesis in the beam is finished or
    max_steps. With width 1 this is greedy search.

    state: the state of `batch` sequences; it is expanded to batch * width rows (beam b of
    sequence i at row i * width + b)."""
    _check(eos, max_steps, batch, state, "beam_search")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"beam_search: width must be an int >= 1; got {width!r}")
    check_number("beam_search", "length_penalty", length_penalty)  # a string failed on the comparison below
    if not length_penalty >= 0:
        raise ValueError(f"beam_search: length_penalty must be >= 0; got {length_penalty!r}")
    state = select(state, torch.arange(batch).repeat_interleave(width))
    scores = torch.full((batch, width), float("-inf"))
    scores[:, 0] = 0.0  # one live hypothesis to start with, so the beams do not start as copies
    lengths = torch.zeros(batch, width)
    finished = torch.zeros(batch, width, dtype=torch.bool)
    tokens = torch.zeros(batch, width, 0, dtype=torch.long)
    previous = None
    offsets = torch.arange(batch)[:, None] * width  # (B, 1)
    for t in range(max_steps):
        logits, state = step(previous, state)
        log_probs = torch.log_softmax(logits.float().cpu(), dim=-1).view(batch, width, -1)  # (B, W, C)
        classes = log_probs.shape[-1]
        _check_eos("beam_search", eos, classes)
        stay = torch.full((classes,), float("-inf"))
        stay[eos] = 0.0  # a finished hypothesis can only repeat the end, at no cost and no length
        log_probs = torch.where(finished[..., None], stay, log_probs)
        total = scores[..., None] + log_probs  # (B, W, C)
        new_lengths = torch.where(finished, lengths, torch.full_like(lengths, t + 1.0))  # (B, W)
        rank = total / new_lengths[..., None] ** length_penalty
        best = rank.view(batch, -1).topk(width, dim=1).indices  # (B, W)
        beam, token = best // classes, best % classes
        scores = total.view(batch, -1).gather(1, best)
        lengths = new_lengths.gather(1, beam)
        finished = finished.gather(1, beam) | (token == eos)
        tokens = torch.cat([tokens.gather(1, beam[..., None].expand(-1, -1, tokens.shape[2])), token[..., None]], 2)
        state = select(state, (beam + offsets).view(-1))
        previous = token.view(-1)
        if bool(finished.all()):
            break
    final = scores / lengths.clamp(min=1) ** length_penalty
    winner = final.argmax(dim=1)  # (B,)
    rows = tokens[torch.arange(batch), winner].tolist()
    return [_until_eos(row, eos) for row in rows]
