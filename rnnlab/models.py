"""Models: input preprocessing -> a core runner -> the readout f, with the output loop closed.

    s^t = h(x^t, s^{t-1}, y^{t-1}),   y^t = f(s^t)

`RecurrentModel` is many-to-many and owns the feedback loop: teacher forcing (targets fed back, all
steps at once), free running (its own outputs fed back, one step at a time) and scheduled sampling
(each fed-back value is the target with probability `teacher_forcing`). The lecture's other
unrolling patterns compose it: `SequenceToVector` (single output), `VectorToSequence` (single input,
then its own outputs), `RecurrentModel.generate` (no input), and `EncoderDecoder` (sequence to
sequence of different lengths).
"""

from __future__ import annotations

import torch
from torch import nn

from .cells import _describe
from .checks import check_number
from .kernels import valid_steps, where_state, without_padding
from .runners import check_sequence, shift_right

__all__ = ["RecurrentModel", "SequenceToVector", "VectorToSequence", "EncoderDecoder", "last_valid"]


def last_valid(outputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) -> (B, H): each sequence's output at its last valid step."""
    if lengths is None:
        return outputs[:, -1]
    index = (torch.as_tensor(lengths, device=outputs.device).long() - 1).clamp(min=0)
    return outputs[torch.arange(outputs.shape[0], device=outputs.device), index]


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
        if xs is None:
            if self.core.input_size != 0 or self.input_map is not None:
                raise ValueError(f"RecurrentModel.generate: xs is needed; the core reads inputs of size "
                                 f"{self.core.input_size}")
            p = next(self.parameters())
            xs = p.new_zeros(batch, steps, 0)
        elif self.input_map is not None:
            xs = self.input_map(xs)
        if not self.core.feedback_size:
            outputs, state = self.core(xs, state)
            return self.readout(outputs), state
        return self._closed_loop(xs, state, None, None, 0.0)


class SequenceToVector(nn.Module):
    """Sequence in, one output (the lecture's "single output"): y = f(pool(outputs)).

    pool: 'last' (the output at each sequence's last valid step; default), 'mean' or 'max' over
    the valid steps. For a `Bidirectional` core prefer 'mean' or 'max': at the last step its
    backward half has read one element only.
    """

    def __init__(self, core: nn.Module, readout: nn.Module, input_map: nn.Module | None = None, pool: str = "last"):
        super().__init__()
        if pool not in ("last", "mean", "max"):
            raise ValueError(f"SequenceToVector: pool must be 'last', 'mean' or 'max'; got {pool!r}")
        if core.feedback_size:
            raise ValueError("SequenceToVector: the core must not feed back its output; there is one output only")
        self.core, self.readout, self.input_map, self.pool = core, readout, input_map, pool

    def forward(self, xs, lengths=None, state=None):
        if self.input_map is not None:
            xs = self.input_map(xs)
        outputs, state = self.core(xs, state, lengths=lengths)
        if self.pool == "last":
            summary = last_valid(outputs, lengths)
        else:
            valid = valid_steps(None if lengths is None else torch.as_tensor(lengths, device=xs.device), xs.shape[1])
            if self.pool == "mean":  # the sum over valid steps only: whatever lies past them never counts
                summary = outputs.mean(1) if valid is None else \
                    without_padding(outputs, valid).sum(1) / valid.sum(1, keepdim=True)
            else:
                masked = outputs if valid is None else outputs.masked_fill(~valid[..., None], float("-inf"))
                summary = masked.amax(1)
        return self.readout(summary), state


class VectorToSequence(nn.Module):
    """One input vector, then the model's own outputs (the lecture's "single input"): v enters at
    step 0, later steps read zeros and what is fed back. model: a `RecurrentModel` with feedback."""

    def __init__(self, model: RecurrentModel):
        super().__init__()
        if not model.core.feedback_size:
            raise ValueError("VectorToSequence: the model must feed back its output; after step 0 nothing else drives it")
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

    Args:
        encoder: a runner over the (preprocessed) source.
        decoder: RecurrentModel whose core reads inputs of the encoder's output size.
        source_map: preprocessing of the source (e.g. nn.Embedding).
        pass_state: start the decoder from the encoder's final state (same cell and sizes).
    """

    def __init__(self, encoder: nn.Module, decoder: RecurrentModel, source_map: nn.Module | None = None,
                 pass_state: bool = True):
        super().__init__()
        if decoder.core.input_size != encoder.output_size:
            raise ValueError(f"EncoderDecoder: the decoder must read the encoder's summary of size "
                             f"{encoder.output_size}; its input_size is {decoder.core.input_size}")
        if decoder.input_map is not None:
            raise ValueError("EncoderDecoder: the decoder's input is the encoder summary; give it no input_map")
        self.encoder, self.decoder, self.source_map, self.pass_state = encoder, decoder, source_map, pass_state

    def encode(self, source, source_lengths=None):
        xs = source if self.source_map is None else self.source_map(source)
        outputs, state = self.encoder(xs, lengths=source_lengths)
        return last_valid(outputs, source_lengths), (state if self.pass_state else None)

    def forward(self, source, targets, source_lengths=None, target_lengths=None, teacher_forcing: float = 1.0):
        """Logits (B, T_target, C) for the target positions (teacher forcing by default)."""
        summary, state = self.encode(source, source_lengths)
        xs = summary[:, None].expand(-1, targets.shape[1], -1)
        ys, _ = self.decoder(xs, targets=targets, teacher_forcing=teacher_forcing, lengths=target_lengths, state=state)
        return ys

    @torch.no_grad()
    def translate(self, source, steps: int, source_lengths=None):
        """Free-running decode of `steps` steps: (B, steps, C) outputs."""
        summary, state = self.encode(source, source_lengths)
        ys, _ = self.decoder.generate(summary.shape[0], steps, state=state,
                                      xs=summary[:, None].expand(-1, steps, -1))
        return ys
