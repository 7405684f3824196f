"""Models: input preprocessing -> a core runner -> the readout f, with the output loop closed.

    s^t = h(x^t, s^{t-1}, y^{t-1}),   y^t = f(s^t)

`RecurrentModel` is many-to-many and owns the feedback loop: teacher forcing (targets fed back, all
steps at once), free running (its own outputs fed back, one step at a time) and scheduled sampling
(each fed-back value is the target with probability `teacher_forcing`). The lecture's other
unrolling patterns compose it: `SequenceToVector` (single output), `VectorToSequence` (single input,
then its own outputs), `RecurrentModel.generate` (no input), and `EncoderDecoder` (sequence to
sequence of different lengths). `Ensemble` averages K independently initialised single-output
models as one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .cells import _describe
from .checks import check_number
from .kernels import valid_steps, where_state, without_padding
from .linear import Linear
from .runners import Runner, check_sequence, shift_right, stepwise_activity

__all__ = ["RecurrentModel", "SequenceToVector", "Ensemble", "VectorToSequence", "EncoderDecoder", "last_valid"]


def last_valid(outputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) -> (B, H): each sequence's output at its last valid step."""
    if lengths is None:
        return outputs[:, -1]
    index = (torch.as_tensor(lengths, device=outputs.device).long() - 1).clamp(min=0)
    return outputs[torch.arange(outputs.shape[0], device=outputs.device), index]


def _check_kind(where: str, name: str, value, kind: type, expected: str) -> None:
    """TypeError naming the argument when a model gets the wrong kind of part (a cell where a runner
    belongs): it would fail later with an AttributeError that names nothing."""
    if not isinstance(value, kind):
        raise TypeError(f"{where}: {name} must be {expected}; got {type(value).__name__}")


def _layout(state):
    """A state's structure and each tensor's width: (H,) for a tensor, a tuple of layouts for a tuple."""
    return tuple(state.shape[1:]) if isinstance(state, torch.Tensor) else tuple(_layout(s) for s in state)


RUNNER = "a runner (Recurrent, Stacked, Bidirectional; a cell goes in Recurrent(cell))"


class RecurrentModel(nn.Module):
    """Many-to-many: ys, state = model(xs, targets=None, teacher_forcing=1.0, lengths=None, state=None).

    Args:
        core: a runner (`Recurrent`, `Stacked`, `Bidirectional`).
        readout: f, from the core's outputs to y (e.g. nn.Linear or `MLP`).
        input_map: input preprocessing applied to xs first (e.g. nn.Embedding for token ids).
        feedback_map: output preprocessing, required when the core feeds back its output
            (`RawFeedback`, `SoftmaxFeedback`, `EmbeddingFeedback`); its size is the cells'
            feedback_size.
    With feedback: targets given and teacher_forcing=1 feeds back the targets, all steps at once;
    otherwise the model steps through time feeding back, at each step and for each sequence, the
    target with probability teacher_forcing and its own output else (0 or no targets: free running).
    """

    def __init__(self, core: nn.Module, readout: nn.Module, input_map: nn.Module | None = None,
                 feedback_map: nn.Module | None = None):
        super().__init__()
        _check_kind("RecurrentModel", "core", core, Runner, RUNNER)
        if core.feedback_size and feedback_map is None:
            raise ValueError(f"RecurrentModel: the core feeds back its output (feedback_size={core.feedback_size}); "
                             f"pass a feedback_map (RawFeedback, SoftmaxFeedback, EmbeddingFeedback)")
        if feedback_map is not None and feedback_map.size != core.feedback_size:
            raise ValueError(f"RecurrentModel: feedback_map gives vectors of size {feedback_map.size} but the "
                             f"cells take feedback_size={core.feedback_size}")
        self.core, self.readout, self.input_map, self.feedback_map = core, readout, input_map, feedback_map

    def forward(self, xs, targets=None, teacher_forcing: float = 1.0, lengths=None, state=None):
        check_number("RecurrentModel", "teacher_forcing", teacher_forcing)
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"RecurrentModel: teacher_forcing must be in [0, 1]; got {teacher_forcing}")
        if self.input_map is not None:
            xs = self.input_map(xs)
        if not self.core.feedback_size:
            if targets is not None and teacher_forcing < 1.0:
                raise ValueError("RecurrentModel: teacher_forcing < 1 needs output feedback; the core has none")
            outputs, state = self.core(xs, state, lengths=lengths)
            return self.readout(outputs), state
        fed_targets = None if targets is None else self.feedback_map.from_target(targets)
        if fed_targets is not None and tuple(fed_targets.shape[:2]) != tuple(xs.shape[:2]):
            raise ValueError(f"RecurrentModel: targets must cover the same (B, T) as xs {tuple(xs.shape[:2])}; "
                             f"got {_describe(targets)}")
        if fed_targets is not None and teacher_forcing == 1.0:
            outputs, state = self.core(xs, state, shift_right(fed_targets), lengths)
            return self.readout(outputs), state
        return self._closed_loop(xs, state, lengths, fed_targets, teacher_forcing)

    def _closed_loop(self, xs, state, lengths, fed_targets, teacher_forcing):
        """One step at a time, feeding back own outputs (or, by coin, the targets)."""
        lengths = check_sequence("RecurrentModel", xs, self.core.input_size, lengths, None, 0,
                                 self.core.example_weight())
        batch, steps = xs.shape[:2]
        state = (self.core.initial_state(batch, xs.device, xs.dtype) if state is None
                 else self.core.check_state(state, batch, "RecurrentModel"))
        masks = self.core.sample_masks(batch, xs)
        valid = valid_steps(lengths, steps)
        xs = without_padding(xs, valid)  # the padding is never read: NaN there must not reach a gradient
        with stepwise_activity(self.core, valid):
            return self._steps(xs, state, valid, masks, fed_targets, teacher_forcing)

    def _steps(self, xs, state, valid, masks, fed_targets, teacher_forcing):
        """`_closed_loop`'s loop over the checked inputs."""
        batch = xs.shape[0]
        y_fed = xs.new_zeros(batch, self.core.feedback_size)  # y^{-1} = 0
        ys = []
        for t, x_t in enumerate(xs.unbind(1)):
            if valid is not None:
                keep = valid[:, t, None]
                y_fed = torch.where(keep, y_fed, y_fed.new_zeros(()))  # a padded target fed back by coin
            out, new = self.core.step(x_t, state, y_fed, masks)
            if valid is not None:
                new, out = where_state(keep, new, state), torch.where(keep, out, out.new_zeros(()))
            state = new
            y = self.readout(out)
            ys.append(y)
            y_fed = self.feedback_map.from_output(y)
            if fed_targets is not None and teacher_forcing > 0.0:
                coin = torch.rand(batch, 1, device=xs.device) < teacher_forcing
                y_fed = torch.where(coin, fed_targets[:, t].to(y_fed.dtype), y_fed)
        return torch.stack(ys, dim=1), state

    def generate(self, batch: int, steps: int, state=None, xs=None):
        """Free running for `steps` steps: the lecture's "no input" unrolling (xs None: the cells
        read no input; their input_size must be 0) or with given inputs xs."""
        for name, value in (("batch", batch), ("steps", steps)):
            check_number("RecurrentModel.generate", name, value, integer=True)
            if value < 1:
                raise ValueError(f"RecurrentModel.generate: {name} must be >= 1; got {value}")
        if xs is None:
            if self.core.input_size != 0 or self.input_map is not None:
                raise ValueError(f"RecurrentModel.generate: xs is needed; the core reads inputs of size "
                                 f"{self.core.input_size}")
            p = next(self.parameters())
            xs = p.new_zeros(batch, steps, 0)
        elif not isinstance(xs, torch.Tensor) or xs.dim() < 2 or tuple(xs.shape[:2]) != (batch, steps):
            # it ran xs's own batch and length, batch and steps silently ignored
            raise ValueError(f"RecurrentModel.generate: xs must be (batch, steps, ...) = ({batch}, {steps}, ...); "
                             f"got {_describe(xs)}")
        elif self.input_map is not None:
            xs = self.input_map(xs)
        if not self.core.feedback_size:
            outputs, state = self.core(xs, state)
            return self.readout(outputs), state
        return self._closed_loop(xs, state, None, None, 0.0)


class SequenceToVector(nn.Module):
    """Sequence in, one output (the lecture's "single output"): y = f(pool(outputs)).

    pool: 'last' (the output at each sequence's last valid step; default), 'mean' or 'max' over
    the valid steps, or 'concat': [last, max, mean] side by side (Howard and Ruder's concat pooling,
    2018), so the readout reads 3x the core's output size (`POOL_WIDTH`). For a `Bidirectional`
    core prefer 'mean' or 'max': at the last step its backward half has read one element only.
    """

    POOL_WIDTH = {"last": 1, "mean": 1, "max": 1, "concat": 3}  # the summary's size in core outputs

    def __init__(self, core: nn.Module, readout: nn.Module, input_map: nn.Module | None = None, pool: str = "last"):
        super().__init__()
        _check_kind("SequenceToVector", "core", core, Runner, RUNNER)
        if pool not in self.POOL_WIDTH:
            raise ValueError(f"SequenceToVector: pool must be 'last', 'mean', 'max' or 'concat'; got {pool!r}")
        if core.feedback_size:
            raise ValueError("SequenceToVector: the core must not feed back its output; there is one output only")
        self.core, self.readout, self.input_map, self.pool = core, readout, input_map, pool

    def forward(self, xs, lengths=None, state=None):
        if self.input_map is not None:
            xs = self.input_map(xs)
        outputs, state = self.core(xs, state, lengths=lengths)
        if self.pool == "last":
            return self.readout(last_valid(outputs, lengths)), state
        valid = valid_steps(None if lengths is None else torch.as_tensor(lengths, device=xs.device), xs.shape[1])
        summaries = []
        if self.pool == "concat":
            summaries.append(last_valid(outputs, lengths))
        if self.pool in ("max", "concat"):
            masked = outputs if valid is None else outputs.masked_fill(~valid[..., None], float("-inf"))
            summaries.append(masked.amax(1))
        if self.pool in ("mean", "concat"):  # the sum over valid steps only: whatever lies past them never counts
            summaries.append(outputs.mean(1) if valid is None else
                             without_padding(outputs, valid).sum(1) / valid.sum(1, keepdim=True))
        return self.readout(torch.cat(summaries, -1) if len(summaries) > 1 else summaries[0]), state


class Ensemble(nn.Module):
    """K classifiers as one model: `logits, None = ensemble(xs, lengths=lengths)`, where each member
    is a model of that form (e.g. `SequenceToVector`) with its own weights.

    The prediction is the mean of the members' class probabilities, returned as its log: valid
    logits (softmax gives the mean back, argmax the ensemble's choice, cross-entropy the ensemble's
    loss). For training, `member_logits` gives each member's own logits (K, B, C), so the loss can
    be the mean of the members' losses and each member learns on its own; their different
    initialisations and dropout masks make them differ, which is what averaging gains from."""

    def __init__(self, members):
        super().__init__()
        members = list(members) if isinstance(members, (list, tuple, nn.ModuleList)) else members
        if not isinstance(members, list) or not members or not all(isinstance(m, nn.Module) for m in members):
            raise TypeError(f"Ensemble: members must be a non-empty list of modules; got {_describe(members)}")
        self.members = nn.ModuleList(members)

    def member_logits(self, xs, lengths=None) -> torch.Tensor:
        """(K, B, C): each member's logits for the same inputs."""
        return torch.stack([member(xs, lengths=lengths)[0] for member in self.members])

    def forward(self, xs, lengths=None, state=None):
        if state is not None:
            raise ValueError("Ensemble: state must be None (each member starts from its own zero state); "
                             f"got {type(state).__name__}")
        log_probabilities = self.member_logits(xs, lengths).log_softmax(-1)
        return torch.logsumexp(log_probabilities, 0) - math.log(len(self.members)), None


class VectorToSequence(nn.Module):
    """One input vector, then the model's own outputs (the lecture's "single input"): v enters at
    step 0, later steps read zeros and what is fed back. model: a `RecurrentModel` with feedback."""

    def __init__(self, model: RecurrentModel):
        super().__init__()
        _check_kind("VectorToSequence", "model", model, RecurrentModel, "a RecurrentModel with output feedback")
        if not model.core.feedback_size:
            raise ValueError("VectorToSequence: the model must feed back its output; after step 0 nothing else "
                             "drives it")
        self.model = model

    def forward(self, v: torch.Tensor, steps: int, targets=None, teacher_forcing: float = 1.0, state=None):
        size = self.model.core.input_size
        if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.shape[1] != size:
            raise ValueError(f"VectorToSequence: v must be (B, {size}); got {_describe(v)}")
        check_number("VectorToSequence", "steps", steps, integer=True)
        if steps < 1:
            raise ValueError(f"VectorToSequence: steps must be >= 1; got {steps}")
        xs = v.new_zeros(v.shape[0], steps, size)
        xs[:, 0] = v
        return self.model(xs, targets=targets, teacher_forcing=teacher_forcing, state=state)


class EncoderDecoder(nn.Module):
    """Sequence to sequence of different lengths. The encoder reads the source; its summary (output
    at the last valid step) is the decoder's input at every step, and its final state is the
    decoder's initial state when their structures match (`pass_state`). The decoder is a
    `RecurrentModel` with feedback, trained with teacher forcing and decoding free.

    With `attention` (rnnlab.attention.Attention, queries of the decoder's output size, keys of the
    encoder's), each decoder output s^t also looks at all the encoder's outputs: the readout reads
    tanh(W_c [s^t; context^t]) instead of s^t (Luong et al.'s attentional state), so under teacher
    forcing the decoder still runs all steps at once.

    Args:
        encoder: a runner over the (preprocessed) source.
        decoder: RecurrentModel whose core reads inputs of the encoder's output size.
        source_map: preprocessing of the source (e.g. nn.Embedding).
        pass_state: start the decoder from the encoder's final state (same cell and sizes).
        attention: None (the lecture's one-vector encoder) or an `Attention` over the encoder outputs.

    Step by step (greedy and beam search, rnnlab.decoding): `state = model.start(source, lengths)`,
    then `logits, state = model.step(previous, state)`, previous the tokens (B,) chosen at the step
    before (None at the first step); the state is a tuple of tensors, batch first.
    """

    def __init__(self, encoder: nn.Module, decoder: RecurrentModel, source_map: nn.Module | None = None,
                 pass_state: bool = True, attention: nn.Module | None = None):
        super().__init__()
        _check_kind("EncoderDecoder", "encoder", encoder, Runner, RUNNER)
        _check_kind("EncoderDecoder", "decoder", decoder, RecurrentModel, "a RecurrentModel with output feedback")
        if decoder.core.input_size != encoder.output_size:
            raise ValueError(f"EncoderDecoder: the decoder must read the encoder's summary of size "
                             f"{encoder.output_size}; its input_size is {decoder.core.input_size}")
        if decoder.input_map is not None:
            raise ValueError("EncoderDecoder: the decoder's input is the encoder summary; give it no input_map")
        if attention is not None and (attention.query_size, attention.key_size) != (decoder.core.output_size,
                                                                                      encoder.output_size):
            raise ValueError(f"EncoderDecoder: attention must take queries of size {decoder.core.output_size} and "
                             f"keys of size {encoder.output_size}; got {attention.query_size} and {attention.key_size}")
        if pass_state and _layout(encoder.initial_state(1, device="meta")) != _layout(
                decoder.core.initial_state(1, device="meta")):  # it failed at the first forward, naming `state`
            raise ValueError(f"EncoderDecoder: pass_state=True starts the decoder from the encoder's final state, so "
                             f"both need the same cell, sizes and layers; got the states "
                             f"{_layout(encoder.initial_state(1, device='meta'))} and "
                             f"{_layout(decoder.core.initial_state(1, device='meta'))} (or pass_state=False)")
        self.encoder, self.decoder, self.source_map, self.pass_state = encoder, decoder, source_map, pass_state
        self.attention = attention
        if attention is not None:
            size = decoder.core.output_size
            self.combine = Linear(size + encoder.output_size, size)

    def _encode(self, source, source_lengths):
        """(outputs (B, S, H), summary (B, H), the decoder's initial state or None)."""
        xs = source if self.source_map is None else self.source_map(source)
        outputs, state = self.encoder(xs, lengths=source_lengths)
        return outputs, last_valid(outputs, source_lengths), (state if self.pass_state else None)

    def encode(self, source, source_lengths=None):
        """(summary (B, H), the decoder's initial state or None)."""
        _, summary, state = self._encode(source, source_lengths)
        return summary, state

    def _attend(self, outputs, memory, memory_lengths):
        """Decoder outputs (B, T, H) -> attentional states (B, T, H) (identity without attention)."""
        if self.attention is None:
            return outputs
        context, _ = self.attention(outputs, memory, memory_lengths)
        return torch.tanh(self.combine(torch.cat([outputs, context], dim=-1)))

    def forward(self, source, targets, source_lengths=None, target_lengths=None, teacher_forcing: float = 1.0):
        """Logits (B, T_target, C) for the target positions (teacher forcing by default)."""
        check_number("EncoderDecoder", "teacher_forcing", teacher_forcing)
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"EncoderDecoder: teacher_forcing must be in [0, 1]; got {teacher_forcing}")
        memory, summary, state = self._encode(source, source_lengths)
        if not isinstance(targets, torch.Tensor) or targets.dim() < 2 or targets.shape[0] != summary.shape[0]:
            raise ValueError(f"EncoderDecoder: targets must be ({summary.shape[0]}, T_target), one row per source; "
                             f"got {_describe(targets)}")
        xs = summary[:, None].expand(-1, targets.shape[1], -1)
        if self.attention is None:
            ys, _ = self.decoder(xs, targets=targets, teacher_forcing=teacher_forcing, lengths=target_lengths,
                                 state=state)
            return ys
        if teacher_forcing == 1.0 or not self.decoder.core.feedback_size:
            fed = (shift_right(self.decoder.feedback_map.from_target(targets)) if self.decoder.core.feedback_size
                   else None)
            outputs, _ = self.decoder.core(xs, state, fed, target_lengths)
            return self.decoder.readout(self._attend(outputs, memory, source_lengths))
        # scheduled sampling: step by step, each fed-back token the target's with probability teacher_forcing
        decode_state, logits, previous = self._start(memory, summary, state, source_lengths), [], None
        valid = valid_steps(None if target_lengths is None else torch.as_tensor(target_lengths, device=targets.device),
                            targets.shape[1])
        with stepwise_activity(self.decoder.core, valid):
            for t in range(targets.shape[1]):
                step_logits, decode_state = self.step(previous, decode_state)
                logits.append(step_logits)
                coin = torch.rand(targets.shape[0], device=targets.device) < teacher_forcing
                previous = torch.where(coin, targets[:, t], step_logits.argmax(-1))
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def attention_weights(self, source, targets, source_lengths=None) -> torch.Tensor:
        """(B, T_target, S) weights over the source positions at each target step, the targets fed
        back (e.g. the model's own translation, to see where it looked)."""
        if self.attention is None:
            raise ValueError("EncoderDecoder.attention_weights: the model has no attention (attention=None)")
        memory, summary, state = self._encode(source, source_lengths)
        xs = summary[:, None].expand(-1, targets.shape[1], -1)
        outputs, _ = self.decoder.core(xs, state, shift_right(self.decoder.feedback_map.from_target(targets)))
        return self.attention(outputs, memory, source_lengths)[1]

    def _start(self, memory, summary, state, source_lengths):
        batch = summary.shape[0]
        state = (self.decoder.core.initial_state(batch, summary.device, summary.dtype) if state is None
                 else self.decoder.core.check_state(state, batch, "EncoderDecoder"))
        lengths = (torch.full((batch,), memory.shape[1], device=memory.device) if source_lengths is None
                   else torch.as_tensor(source_lengths, device=memory.device))
        return state, summary, (memory if self.attention is not None else None), lengths

    def start(self, source, source_lengths=None):
        """The decoding state before the first target step: (decoder state, summary, encoder outputs
        (None without attention), source lengths), every tensor batch first."""
        return self._start(*self._encode(source, source_lengths), source_lengths)

    def step(self, previous, state):
        """One decoder step: (logits (B, C), the next state). previous: the token ids (B,) fed back
        (as targets are under teacher forcing), None at the first step (y^{-1} = 0)."""
        core_state, summary, memory, lengths = state
        if not self.decoder.core.feedback_size:
            fed = None  # a decoder without output feedback reads the summary only
        elif previous is None:
            fed = summary.new_zeros(summary.shape[0], self.decoder.core.feedback_size)
        else:
            fed = self.decoder.feedback_map.from_target(previous.to(summary.device)[:, None])[:, 0]
        masks = self.decoder.core.sample_masks(summary.shape[0], summary[:, None])
        out, core_state = self.decoder.core.step(summary, core_state, fed, masks)
        if memory is not None:
            out = self._attend(out[:, None], memory, lengths)[:, 0]
        return self.decoder.readout(out), (core_state, summary, memory, lengths)

    @torch.no_grad()
    def translate(self, source, steps: int, source_lengths=None):
        """Free-running decode of `steps` steps: (B, steps, C) outputs (tokens chosen greedily)."""
        check_number("EncoderDecoder.translate", "steps", steps, integer=True)
        if steps < 1:  # with attention torch.stack of no steps failed, naming nothing
            raise ValueError(f"EncoderDecoder.translate: steps must be >= 1; got {steps}")
        if self.attention is None:  # whatever the feedback map feeds back (tokens, probabilities, values)
            summary, state = self.encode(source, source_lengths)
            ys, _ = self.decoder.generate(summary.shape[0], steps, state=state,
                                          xs=summary[:, None].expand(-1, steps, -1))
            return ys
        state, previous, ys = self.start(source, source_lengths), None, []
        for _ in range(steps):
            logits, state = self.step(previous, state)
            ys.append(logits)
            previous = logits.argmax(-1)
        return torch.stack(ys, dim=1)
