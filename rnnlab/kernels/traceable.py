"""`traceable`: the time loop as TorchScript, for exporting (ONNX) and tracing.

A Python loop over T is unrolled by a tracer into T copies of the step, which fixes the sequence
length of the exported graph; `fused`'s hand-written autograd and C++ loops are opaque to a tracer,
which records their results as constants (a graph with no inputs). While exporting or tracing,
the dispatch (`kernels.run`) sends every implementation but `native` here instead: the input
projection for all steps is traced as usual (U x + W y_prev + b_ih), and the loop over time is a
TorchScript function generated for the cell (its family, activations, depth, biases and zoneout
written into the source), which the ONNX exporter turns into one ONNX `Loop` whose trip count is
the input's length. The equations are the cells' (cells.py), in evaluation mode: no dropout masks
(export a model in eval mode), zoneout as its expectation.
"""

from __future__ import annotations

import functools

import torch

from ..cells import Cell, State

# TorchScript expressions of the cells' activations (cells.ACTIVATIONS), `{}` the argument
_ACTIVATIONS = {
    "tanh": "torch.tanh({})",
    "sigmoid": "torch.sigmoid({})",
    "relu": "torch.relu({})",
    "identity": "({})",
    "hard_sigmoid": "torch.clamp({} / 6.0 + 0.5, 0.0, 1.0)",
    "hard_tanh": "torch.clamp({}, -1.0, 1.0)",
    "softsign": "_softsign({})",
    "elu": "_elu({})",
    "gelu": "_gelu({})",
}
_HELPERS = '''
def _softsign(z: Tensor) -> Tensor:
    return z / (1.0 + torch.abs(z))

def _elu(z: Tensor) -> Tensor:
    return torch.where(z > 0.0, z, torch.expm1(z))

def _gelu(z: Tensor) -> Tensor:
    return 0.5 * z * (1.0 + torch.erf(z * 0.7071067811865476))

def _layer_norm(v: Tensor, gain: Tensor, shift: Tensor, eps: float) -> Tensor:
    mean = v.mean(-1, keepdim=True)
    centred = v - mean
    return centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps) * gain + shift
'''
# family (rnnlab.cells: Cell.family) -> the generated step's family; the output-feedback cell is a vanilla cell
_FAMILIES = {"vanilla": "vanilla", "feedback": "vanilla", "residual": "residual", "input": "input", "forget": "forget",
             "lstm": "lstm", "gru": "gru", "peephole-lstm": "peephole", "layernorm-lstm": "layernorm",
             "projected-lstm": "projected"}
_LSTMS = ("lstm", "peephole", "layernorm", "projected")  # state (h, c)


def unavailable(cell: Cell, masks=(None, None), **context) -> str | None:
    """Why the traceable loop cannot run this configuration; None if it can."""
    if cell.family not in _FAMILIES:
        return (f"the traceable loop has no step for {type(cell).__name__} yet (the {cell.family!r} family; it has "
                f"{', '.join(_FAMILIES)})")
    if cell.activation not in _ACTIVATIONS or cell.gate_activation not in _ACTIVATIONS:
        return f"the traceable loop has no activation {cell.activation!r} or {cell.gate_activation!r}"
    if any(m is not None for m in masks):
        return "exporting needs the model in eval mode (dropout masks were sampled); call model.eval()"
    return None


def _signature(cell: Cell) -> tuple:
    """What fixes the generated source: the cell's family and settings."""
    residual = cell.residual if cell.family == "residual" else "after"  # the residual family declares where it adds
    transition = () if cell.transition is None else tuple(
        m.bias is not None for m in cell.transition if isinstance(m, torch.nn.Linear))
    eps = (float(cell.norm_hh.eps if cell.norm_hh is not None else 0.0), float(cell.norm_cell.eps)) \
        if cell.family == "layernorm-lstm" else ()
    return (_FAMILIES[cell.family], residual, cell.activation, cell.gate_activation, cell.hidden_size,
            cell.weight_hh is not None, cell.bias_hh is not None, transition, float(cell.zoneout), eps)


def _extra_weights(cell: Cell) -> list[torch.Tensor]:
    """The new LSTMs' own parameters, in the order `source` declares them."""
    if cell.family == "peephole-lstm":
        return [cell.weight_peephole]
    if cell.family == "projected-lstm":
        return [cell.weight_hr]
    if cell.family == "layernorm-lstm":
        reads = [cell.norm_hh.weight, cell.norm_hh.bias] if cell.norm_hh is not None else []
        return reads + [cell.norm_cell.weight, cell.norm_cell.bias]
    return []


def source(cell: Cell, masked: bool) -> str:
    """The TorchScript source of `loop(zx (T, B, K*H), s0[, c0], V[, b_hh], transition..., [valid (T, B, 1)])`
    -> (outputs (T, B, H), final state parts)."""
    family, residual, act_name, sigma_name, H, reads, has_bias_hh, transition, zoneout, eps = _signature(cell)
    act, sigma = _ACTIVATIONS[act_name].format, _ACTIVATIONS[sigma_name].format
    lstm = family in _LSTMS
    args = ["zx: Tensor", "s0: Tensor"] + (["c0: Tensor"] if lstm else [])
    args += (["weight_hh: Tensor"] if reads else []) + (["bias_hh: Tensor"] if has_bias_hh else [])
    args += {"peephole": ["peep: Tensor"], "projected": ["weight_hr: Tensor"],
             "layernorm": (["gain_h: Tensor", "shift_h: Tensor"] if reads else [])
             + ["gain_c: Tensor", "shift_c: Tensor"]}.get(family, [])
    for i, has_bias in enumerate(transition):
        args += [f"tw{i}: Tensor"] + ([f"tb{i}: Tensor"] if has_bias else [])
    args += ["valid: Tensor"] if masked else []
    out_types = "Tuple[Tensor, Tensor, Tensor]" if lstm else "Tuple[Tensor, Tensor]"
    body = ["outs: List[Tensor] = []", "s = s0"] + (["c = c0"] if lstm else [])
    body += ["for t in range(zx.size(0)):", "    zx_t = zx[t]"]
    step = []
    if reads and family == "layernorm":  # LN_h(V s_bar) + b_hh
        step.append(f"zh = _layer_norm(torch.matmul(s, weight_hh.t()), gain_h, shift_h, {eps[0]!r})"
                    + (" + bias_hh" if has_bias_hh else ""))
    elif reads:
        step.append("zh = torch.matmul(s, weight_hh.t())" + (" + bias_hh" if has_bias_hh else ""))
    if family == "gru":
        if reads:
            step += [f"r = {sigma(f'zx_t[:, 0:{H}] + zh[:, 0:{H}]')}",
                     f"u = {sigma(f'zx_t[:, {H}:{2 * H}] + zh[:, {H}:{2 * H}]')}",
                     f"n = {act(f'zx_t[:, {2 * H}:{3 * H}] + r * zh[:, {2 * H}:{3 * H}]')}"]
        else:
            step += [f"u = {sigma(f'zx_t[:, 0:{H}]')}", f"n = {act(f'zx_t[:, {H}:{2 * H}]')}"]
        step.append("new = (1.0 - u) * n + u * s")
    else:
        step.append("z = zx_t + zh" if reads else "z = zx_t")
        for i, has_bias in enumerate(transition):  # deep transition: (activation, linear) layers
            step.append(f"z = torch.matmul({act('z')}, tw{i}.t())" + (f" + tb{i}" if has_bias else ""))
        gate = lambda k: f"z[:, {k * H}:{(k + 1) * H}]"  # noqa: E731
        if family == "vanilla":
            step.append(f"new = {act('z')}")
        elif family == "residual":
            step.append(f"new = {act('z + s')}" if residual == "before" else f"new = s + {act('z')}")
        elif family == "input":
            step.append(f"new = s + {sigma(gate(0))} * {act(gate(1))}")
        elif family == "forget":
            step.append(f"new = {sigma(gate(1))} * s + {sigma(gate(0))} * {act(gate(2))}")
        elif family == "peephole":  # i, f read c; o reads c_new
            step += [f"c_new = {sigma(gate(1) + ' + peep[1] * c')} * c + {sigma(gate(0) + ' + peep[0] * c')} * "
                     f"{act(gate(2))}",
                     f"new = {sigma(gate(3) + ' + peep[2] * c_new')} * {act('c_new')}"]
        else:  # lstm, layernorm, projected: gates i, f, r, o; state (h, c)
            step.append(f"c_new = {sigma(gate(1))} * c + {sigma(gate(0))} * {act(gate(2))}")
            squashed = act(f"_layer_norm(c_new, gain_c, shift_c, {eps[1]!r})") if family == "layernorm" \
                else act("c_new")
            step.append(f"new = {sigma(gate(3))} * {squashed}")
            if family == "projected":
                step.append("new = torch.matmul(new, weight_hr.t())")
    if zoneout:  # evaluation: the expectation of the kept state
        step.append(f"new = {zoneout!r} * s + {1 - zoneout!r} * new")
        if lstm:
            step.append(f"c_new = {zoneout!r} * c + {1 - zoneout!r} * c_new")
    if masked:  # past a sequence's end: the state stays, the output is zero
        step += ["keep = valid[t]", "new = torch.where(keep, new, s)"]
        if lstm:
            step.append("c_new = torch.where(keep, c_new, c)")
        step.append("outs.append(new * keep.to(new.dtype))")
    else:
        step.append("outs.append(new)")
    step += ["s = new"] + (["c = c_new"] if lstm else [])
    body += ["    " + line for line in step]
    body.append("return torch.stack(outs, 0), s" + (", c" if lstm else ""))
    return (_HELPERS + f"\ndef loop({', '.join(args)}) -> {out_types}:\n" + "\n".join("    " + line for line in body)
            + "\n")


@functools.lru_cache(maxsize=256)
def _compiled(signature: tuple, masked: bool, text: str):
    return torch.jit.CompilationUnit(text).loop


def compile_loop(cell: Cell, masked: bool = False):
    """The TorchScript loop function for `cell` (cached by what fixes its source)."""
    return _compiled(_signature(cell), masked, source(cell, masked))


def traceable(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
              lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H), final state, by a scripted loop."""
    zx = cell.project_input(xs, y_prev).transpose(0, 1)  # (T, B, K*H), U x + W y_prev + b_ih for all steps
    parts = list(state) if isinstance(state, tuple) else [state]
    weights = [w for w in (cell.weight_hh, cell.bias_hh) if w is not None] + _extra_weights(cell)
    if cell.transition is not None:
        for layer in cell.transition:
            if isinstance(layer, torch.nn.Linear):
                weights += [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    masked = lengths is not None
    extra = [(torch.arange(xs.shape[1], device=xs.device)[:, None] < lengths[None, :])[..., None]] if masked else []
    outs, *final = compile_loop(cell, masked)(zx, *parts, *weights, *extra)
    return outs.transpose(0, 1), (tuple(final) if len(final) > 1 else final[0])
