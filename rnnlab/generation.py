"""Free-running generation at batch 1: after a prompt, each token the model chooses is fed back as the
next step's input (or, with output feedback, as y^{t-1}). Two implementations, the same tokens:

- `python`: the step loop over the model's own modules (`model.core.step`, the readout, `choose_token`);
- `compiled`: the whole loop in one C++ call (kernels/generate.cpp): the embedding and input projection
  of every token precomputed as one table row per token, the cells' step, the readout and the choice
  of the token, with the same draws from the same torch.Generator as torch.multinomial's.

`auto` takes `compiled` where it serves the model and the C++ module is built, else `python`.
The compiled path serves a `RecurrentModel` whose core is `Stacked` (or `Recurrent`) cells of the
families lstm, peephole-lstm, layernorm-lstm, projected-lstm, gru, vanilla, residual, input and forget
(activation tanh or relu, gates sigmoid, depth 1, reading the state, no zoneout; any number of layers,
output feedback into the first layer only), read through an `nn.Embedding` input map or an
`EmbeddingFeedback`, with a linear readout (optionally after dropout, which is off when generating), on
the CPU in float32 or float64. Layer 0's table row is its cell's own `project_input` of the token (for the
layer-norm LSTM: LN_x(U x + W y) + b_ih). Not served (the Python loop runs them): the output-feedback
cell, deep transitions, zoneout, other activations, bidirectional or residual stacks, other readouts.
`compiled_refusal(model)` says why for a model.

Same tokens, not the same bits: the compiled step sums its matrix-vector products in its own order
(MKL's is not reproducible outside MKL and is 2x slower at batch 1), so its logits match the Python
path's to rounding (about 1e-6 relative in float32), and a token could differ only where two
candidates' sampling keys p_i / q_i tie to within that rounding. The draws themselves are identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kernels import compiled
from .models import RecurrentModel
from .preprocessing import EmbeddingFeedback, choose_token
from .runners import Recurrent, Stacked

__all__ = ["IMPLEMENTATIONS", "MODULE", "SERVED", "compiled_refusal", "continue_tokens"]

IMPLEMENTATIONS = ("auto", "python", "compiled")
MODULE = "rnnlab_generate"  # the C++ module's name in kernels.compiled.MODULES


def _layers(core: nn.Module) -> list[Recurrent] | str:
    if isinstance(core, Recurrent):
        return [core]
    if not isinstance(core, Stacked):
        return f"the core is {type(core).__name__}, not Stacked or Recurrent"
    if core.residual:
        return "Stacked(residual=True)"
    if not all(isinstance(layer, Recurrent) for layer in core.layers):
        return "a layer of the core is not Recurrent (e.g. Bidirectional)"
    return list(core.layers)


def _linear(readout: nn.Module) -> nn.Linear | None:
    """The readout's nn.Linear when the readout is one (after dropouts or identities only), else None."""
    if isinstance(readout, nn.Linear):
        return readout
    if isinstance(readout, nn.Sequential) and len(readout) and isinstance(readout[-1], nn.Linear) and all(
            isinstance(m, (nn.Dropout, nn.Identity)) for m in list(readout)[:-1]):
        return readout[-1]
    return None


SERVED = ("lstm", "peephole-lstm", "layernorm-lstm", "projected-lstm", "gru", "vanilla", "residual", "input",
          "forget")  # the cell families the C++ loop computes


def _cell_name(cell) -> str:
    """The C++ loop's name for the cell's update."""
    return f"residual_{cell.residual}" if cell.family == "residual" else cell.family


def _affine(norm: nn.LayerNorm, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A LayerNorm's gain and shift (ones and zeros where it has none)."""
    gain = norm.weight if norm.weight is not None else like.new_ones(norm.normalized_shape)
    return gain, norm.bias if norm.bias is not None else like.new_zeros(norm.normalized_shape)


def _extras(cell, first: bool) -> tuple[dict[str, torch.Tensor], list[float]]:
    """What the C++ step reads of a cell beyond its weights and biases, by name, and the layer norms' epsilons."""
    if cell.family == "peephole-lstm":
        return {"peephole": cell.weight_peephole}, []
    if cell.family == "projected-lstm":
        return {"weight_hr": cell.weight_hr}, []
    if cell.family != "layernorm-lstm":
        return {}, []
    extras = {}
    for part, norm in (("ih", cell.norm_ih), ("hh", cell.norm_hh), ("cell", cell.norm_cell)):
        if part == "ih" and first:
            continue  # the table's rows are normalised already
        extras[f"gain_{part}"], extras[f"shift_{part}"] = _affine(norm, cell.weight_hh)
    return extras, [cell.norm_ih.eps, cell.norm_hh.eps, cell.norm_cell.eps]


def compiled_refusal(model: nn.Module) -> str | None:
    """Why the compiled generation cannot serve `model` here (one phrase), or None when it can."""
    if not isinstance(model, RecurrentModel):
        return f"the model is {type(model).__name__}, not a RecurrentModel"
    layers = _layers(model.core)
    if isinstance(layers, str):
        return layers
    for i, layer in enumerate(layers):
        cell = layer.cell
        if type(cell).family not in SERVED:
            return f"layer {i} is {type(cell).__name__}; the compiled step serves the families {', '.join(SERVED)}"
        for reason, bad in (("activation must be tanh or relu", cell.activation not in ("tanh", "relu")),
                            ("gate_activation must be sigmoid", cell.gate_activation != "sigmoid"),
                            ("a deep transition (depth > 1)", cell.depth > 1),
                            ("reads_state=False", not cell.reads_state),
                            ("zoneout", cell.zoneout),
                            ("output feedback into a layer above the first", i > 0 and cell.weight_yh is not None)):
            if bad:
                return f"layer {i}: {reason}"
    readout = _linear(model.readout)
    if readout is None:
        return f"the readout is {type(model.readout).__name__}, not a linear layer"
    first = layers[0].cell
    if model.feedback_map is None:
        if not isinstance(model.input_map, nn.Embedding) or model.input_map.max_norm is not None:
            return "the input map is not a plain nn.Embedding"
    elif not isinstance(model.feedback_map, EmbeddingFeedback) or model.input_map is not None or first.input_size:
        return "the feedback is not an EmbeddingFeedback alone (no input x)"
    weight = readout.weight
    if weight.device.type != "cpu" or weight.dtype not in compiled.DTYPES:
        return f"the weights are {weight.dtype} on {weight.device.type}; it serves float32 and float64 on the CPU"
    if model.training:
        return "the model is in training mode"
    if torch.is_autocast_enabled("cpu"):
        return "autocast is on (the Python loop then computes in its lower precision)"
    if compiled.extension(MODULE) is None:
        return "the C++ module rnnlab_generate is not built (RNNLAB_NO_EXTENSION, or no compiler)"
    return None


def _check(length: int, temperature: float, top_k: int | None, implementation: str) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"continue_tokens: length must be an int >= 0; got {length!r}")
    if not 0 <= temperature < math.inf:  # inf: every probability NaN
        raise ValueError(f"continue_tokens: temperature must be a finite number >= 0 (0: greedy); got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"continue_tokens: top_k must be None or an int >= 1; got {top_k!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"continue_tokens: implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")


@torch.no_grad()
def continue_tokens(model: RecurrentModel, logits: torch.Tensor, state, length: int, temperature: float = 1.0,
                    top_k: int | None = None, generator: torch.Generator | None = None,
                    implementation: str = "auto") -> torch.Tensor:
    """`length` token ids (a long tensor), each chosen from the logits of the step before and fed back:
    greedy at temperature 0, else sampled at `temperature` from the top k; never <unk> (id 0).

    logits: (1, V), the next token's after the prompt; state: the core's state after the prompt (batch 1).
    The model must be in eval mode (the caller's `model.eval()`)."""
    _check(length, temperature, top_k, implementation)
    if implementation != "python":
        refusal = compiled_refusal(model)
        if refusal is None:
            return _compiled(model, logits, state, length, temperature, top_k, generator)
        if implementation == "compiled":
            raise ValueError(f"continue_tokens: the compiled generation cannot serve this model: {refusal}")
    return _python(model, logits.clone(), state, length, temperature, top_k, generator)


def _python(model, logits, state, length, temperature, top_k, generator) -> torch.Tensor:
    chosen = []
    for _ in range(length):
        logits[:, 0] = float("-inf")  # index 0 is <unk>: it stands for no character at all
        mode = "greedy" if temperature == 0 else "sample"
        token = choose_token(logits, mode, temperature or 1.0, top_k, generator)  # (1,)
        chosen.append(int(token))
        if model.feedback_map is None:
            out, state = model.core.step(model.input_map(token), state)
        else:
            out, state = model.core.step(logits.new_zeros(1, 0), state, model.feedback_map.from_target(token))
        logits = model.readout(out)
    return torch.tensor(chosen, dtype=torch.long)


def _compiled(model, logits, state, length, temperature, top_k, generator) -> torch.Tensor:
    layers = _layers(model.core)
    states = [state] if isinstance(model.core, Recurrent) else list(state)
    cells = [layer.cell for layer in layers]
    first = cells[0]
    # the input part zx of every token, one row each (tokens, K H), by the cell's own project_input as
    # the Python step computes it: layer 0 never reads W_ih (nor the layer-norm LSTM's LN_x)
    if model.feedback_map is None:
        table = first.project_input(model.input_map.weight)
    else:
        fed = model.feedback_map.embedding.weight
        table = first.project_input(fed.new_zeros(fed.shape[0], 0), fed)

    def bias(cell, b):
        return b if b is not None else cell.weight_hh.new_zeros(cell.weight_hh.shape[0])

    extras = [_extras(c, i == 0) for i, c in enumerate(cells)]
    readout = _linear(model.readout)
    readout_bias = readout.bias if readout.bias is not None else readout.weight.new_zeros(readout.out_features)
    empty = readout.weight.new_zeros(0)
    return compiled.extension(MODULE).generate(
        [_cell_name(c) for c in cells], [c.activation == "relu" for c in cells], table.contiguous(),
        [c.weight_ih for c in cells], [c.weight_hh for c in cells], [bias(c, c.bias_ih) for c in cells],
        [bias(c, c.bias_hh) for c in cells], [c.output(s).reshape(-1) for c, s in zip(cells, states)],
        [s[1].reshape(-1) if isinstance(s, tuple) else empty for s in states], [e[0] for e in extras],
        [e[1] for e in extras], readout.weight, readout_bias,
        logits.reshape(-1), length, float(temperature), top_k or 0, generator)
