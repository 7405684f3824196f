"""Export a trained model as ONNX, verified in onnxruntime against PyTorch.

Two graphs per model, both with a dynamic batch size and the state as explicit inputs and outputs
(so a stream can be read in pieces, the state carried by the caller):

    sequence:  (inputs (B, T, ...), [feedback (B, T, ...)], [lengths (B,)], state...) -> (outputs, state...)
    step:      (input (B, ...), [feedback (B, ...)], state...) -> (output (B, ...), state...)

`inputs` are what the model reads before its input map (token ids for an embedding), `feedback`
is y^{t-1} in the form of a target (under teacher forcing: the shifted targets; for the language
model with --feedback, the current character), for models whose cells feed back their output.
The sequence graph has a dynamic length T: the time loop is torch's ONNX LSTM/GRU/RNN op where
torch's kernel computes the cell, else one ONNX Loop (kernels/traceable.py), never a loop unrolled
to the length seen while exporting. The step graph is what streaming inference and generation
need (`rnnlab sample --engine onnxruntime`).

Exported with torch's TorchScript-based exporter (`dynamo=False`): it turns the scripted time loop
into an ONNX Loop, while the dynamo exporter cannot trace a TorchScript function. Needs the
optional packages of `pip install 'rnnlab[export]'` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .models import Ensemble, RecurrentModel, SequenceToVector
from .preprocessing import MLP, EmbeddingFeedback, RawFeedback, SoftmaxFeedback

__all__ = ["MissingExtra", "require", "SequenceGraph", "StepGraph", "export_model", "exported_by_rnnlab", "verify",
           "OnnxStep", "CHECK_LENGTHS", "CHECK_BATCHES", "OPSET"]

OPSET = 17
CHECK_LENGTHS = (1, 7, 33)  # the sequence lengths and batch sizes `verify` compares at
CHECK_BATCHES = (1, 3)
TOLERANCE = 1e-4  # float32: largest absolute difference allowed, relative to max(1, |output|)
# A metadata entry of every graph export_model writes: such a file a later export may replace, a user's not.
MARK = ("written_by", "rnnlab")


class MissingExtra(ImportError):
    """An optional package of the `export` extra is not installed."""


def require(module: str):
    """Import an optional package of the `export` extra, or fail with one line that names the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{module} is not installed; ONNX export needs the export extra: "
                           f"pip install 'rnnlab[export]'") from None


# --- what the graphs read ------------------------------------------------------------------------


def _flatten(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in _flatten(part)]


def _unflatten(template, flat: list[torch.Tensor]):
    """Rebuild the nested tuples of `template` from the tensors of `flat` (consumed in order)."""
    if isinstance(template, torch.Tensor):
        return flat.pop(0)
    return tuple(_unflatten(part, flat) for part in template)


def _embedding_in(module) -> nn.Embedding | None:
    if isinstance(module, nn.Embedding):
        return module
    if isinstance(module, nn.Sequential):
        return next((m for m in module if isinstance(m, nn.Embedding)), None)
    return None


def _input_spec(input_map, size: int):
    """('ids', vocabulary) for token ids, ('float', size) for vectors, None for no input."""
    if input_map is None:
        return ("float", size) if size else None
    embedding = _embedding_in(input_map)
    if embedding is not None:
        return "ids", embedding.num_embeddings
    if isinstance(input_map, (nn.Linear, MLP)):
        return "float", input_map.in_features
    raise ValueError(f"export: cannot tell what the input map {type(input_map).__name__} reads; "
                     f"expected an nn.Embedding, an MLP or an nn.Linear")


def _feedback_spec(feedback_map):
    if feedback_map is None:
        return None
    if isinstance(feedback_map, EmbeddingFeedback):
        return "ids", feedback_map.embedding.num_embeddings
    if isinstance(feedback_map, SoftmaxFeedback):
        return "ids", feedback_map.size
    if isinstance(feedback_map, RawFeedback):
        return "float", feedback_map.size
    raise ValueError(f"export: unknown feedback map {type(feedback_map).__name__}; expected RawFeedback, "
                     f"SoftmaxFeedback or EmbeddingFeedback")


def _example(spec, leading: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    kind, size = spec
    if kind == "ids":
        return torch.randint(0, size, leading, generator=generator)
    return torch.randn(*leading, size, generator=generator)


class _Graph(nn.Module):
    """What an exported graph computes: a model's forward with flat tensor inputs and outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if isinstance(model, RecurrentModel):
            self.input_spec = _input_spec(model.input_map, model.core.input_size)
            self.feedback_spec = _feedback_spec(model.feedback_map)
        elif isinstance(model, SequenceToVector):
            self.input_spec, self.feedback_spec = _input_spec(model.input_map, model.core.input_size), None
        elif isinstance(model, Ensemble):
            raise ValueError(f"export: model must be a RecurrentModel or a SequenceToVector; got an Ensemble of "
                             f"{len(model.members)} (a sentiment run's --members: train with --members 1 to export)")
        else:
            raise ValueError(f"export: model must be a RecurrentModel or a SequenceToVector; "
                             f"got {type(model).__name__}")
        if self.input_spec is None and self.feedback_spec is None:
            raise ValueError("export: the model reads neither inputs nor fed-back outputs; there is nothing to export")
        self.model = model
        self.state_template = model.core.initial_state(1, device="meta")
        self.state_count = len(_flatten(self.state_template))
        self.lengths = isinstance(model, SequenceToVector)
        # the wrapper is always in eval mode, the model only while the graph runs (`forward`): self.eval()
        # here switched a model being trained to eval mode for good, its dropout silently off
        self.training = False

    def forward(self, *tensors):
        with _evaluating(self.model):
            return self.compute(*tensors)

    def train(self, mode: bool = True):
        if mode:
            raise ValueError("export: an exported graph runs in eval mode (no dropout); it cannot be trained")
        return super().train(False)

    def input_names(self) -> list[str]:
        names = (["inputs"] if self.input_spec else []) + (["feedback"] if self.feedback_spec else [])
        return names + (["lengths"] if self.lengths else []) + [f"state_{i}" for i in range(self.state_count)]

    def output_names(self) -> list[str]:
        return ["outputs"] + [f"final_state_{i}" for i in range(self.state_count)]

    def _split(self, tensors):
        tensors = list(tensors)
        xs = tensors.pop(0) if self.input_spec else None
        fed = tensors.pop(0) if self.feedback_spec else None
        lengths = tensors.pop(0) if self.lengths else None
        return xs, fed, lengths, _unflatten(self.state_template, tensors)

    def examples(self, batch: int, steps: int | None, seed: int = 0) -> list[torch.Tensor]:
        """Random inputs of this graph for a batch (and a length, for the sequence graph)."""
        generator = torch.Generator().manual_seed(seed)
        leading = (batch,) if steps is None else (batch, steps)
        tensors = [_example(spec, leading, generator) for spec in (self.input_spec, self.feedback_spec) if spec]
        if self.lengths:  # one full sequence, the others shorter (a trace must not see all lengths equal)
            tensors.append(torch.cat([torch.tensor([steps]), torch.randint(1, max(steps, 2), (batch - 1,),
                                                                            generator=generator)]).clamp(max=steps))
        parameter = next(self.model.parameters())
        state = self.model.core.initial_state(batch, dtype=parameter.dtype)
        return tensors + [torch.randn(s.shape, generator=generator, dtype=s.dtype) * 0.5 for s in _flatten(state)]


class SequenceGraph(_Graph):
    """(inputs, [feedback], [lengths], state...) -> (outputs, final state...): the whole sequence."""

    def compute(self, *tensors):
        xs, fed, lengths, state = self._split(tensors)
        model = self.model
        if isinstance(model, SequenceToVector):
            ys, final = model(xs, lengths=lengths, state=state)
            return (ys, *_flatten(final))
        y_prev = model.feedback_map.from_target(fed) if fed is not None else None
        if xs is None:
            xs = y_prev[..., :0]  # (B, T, 0): the cells read only the fed-back output
        elif model.input_map is not None:
            xs = model.input_map(xs)
        outputs, final = model.core(xs, state, y_prev)
        return (model.readout(outputs), *_flatten(final))

    def dynamic_axes(self) -> dict:
        axes = {name: {0: "batch", 1: "time"} for name in ("inputs", "feedback", "outputs")}
        if isinstance(self.model, SequenceToVector):
            axes["outputs"] = {0: "batch"}
        axes["lengths"] = {0: "batch"}
        axes.update({name: {0: "batch"} for name in self.input_names() + self.output_names() if "state" in name})
        return {k: v for k, v in axes.items() if k in self.input_names() + self.output_names()}


class StepGraph(_Graph):
    """(input, [feedback], state...) -> (output, new state...): one time step."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        if isinstance(model, SequenceToVector) and model.pool != "last":
            raise ValueError(f"export: a SequenceToVector with pool={model.pool!r} has no one-step form; "
                             f"only pool='last' does")
        self.lengths = False

    def compute(self, *tensors):
        x_t, fed_t, _, state = self._split(tensors)
        model = self.model
        # the maps take (B, T, ...); one step is T = 1
        y_prev = model.feedback_map.from_target(fed_t[:, None])[:, 0] if fed_t is not None else None
        if x_t is None:
            x_t = y_prev[:, :0]
        elif model.input_map is not None:
            x_t = model.input_map(x_t[:, None])[:, 0]
        out, state = model.core.step(x_t, state, y_prev)
        return (model.readout(out), *_flatten(state))

    def dynamic_axes(self) -> dict:
        return {name: {0: "batch"} for name in self.input_names() + self.output_names()}


# --- exporting and checking ---------------------------------------------------------------------


@contextmanager
def _evaluating(module: nn.Module):
    """`module` in eval mode (no dropout) inside, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def export_model(graph: _Graph, path: str | Path | None = None) -> bytes:
    """Export `graph` (a SequenceGraph or StepGraph of a model in eval mode) as ONNX; write it to
    `path` if given; returns the file's bytes."""
    require("onnx")
    steps = None if isinstance(graph, StepGraph) else 5
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _evaluating(graph):  # the exporter leaves it in eval mode
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, tuple(graph.examples(2, steps)), buffer, dynamo=False, opset_version=OPSET,
                          input_names=graph.input_names(), output_names=graph.output_names(),
                          dynamic_axes=graph.dynamic_axes())
    model = require("onnx").load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = MARK
    data = model.SerializeToString()
    if path is not None:
        from .checkpoints import write_atomic

        write_atomic(Path(path), data)  # whole or not at all: a killed export leaves no half graph to refuse
    return data


def exported_by_rnnlab(path: str | Path) -> bool:
    """Whether `path` is an ONNX graph export_model wrote (which an export may replace), not a user's file."""
    onnx = require("onnx")
    from google.protobuf.message import DecodeError  # onnx's own dependency

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError):  # a folder, a text file, a damaged file
        return False
    return any((entry.key, entry.value) == MARK for entry in model.metadata_props)


def session(model_bytes_or_path, threads: int = 1):
    """An onnxruntime session on the CPU."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    source = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def verify(graph: _Graph, model_bytes_or_path, lengths=CHECK_LENGTHS, batches=CHECK_BATCHES) -> float:
    """Run the exported graph in onnxruntime and `graph` in PyTorch on the same random inputs, at
    each batch size and (sequence graph) each length; returns the largest difference, relative to
    max(1, |output|). ValueError when it exceeds float32's tolerance."""
    sess, worst = session(model_bytes_or_path), 0.0
    names = graph.input_names()
    unread = [name for name in names if name not in {i.name for i in sess.get_inputs()}]
    if unread:  # what a tracer does to a loop it cannot see into: its outputs become constants
        raise ValueError(f"export: the exported graph does not read {', '.join(unread)}; it would give the same "
                         f"outputs whatever they are")
    if isinstance(graph, StepGraph):
        shapes = [(b, None) for b in batches]
    else:
        shapes = [(b, t) for b in batches for t in lengths]
    for i, (batch, steps) in enumerate(shapes):
        tensors = graph.examples(batch, steps, seed=1 + i)
        with torch.no_grad():
            expected = graph(*tensors)
        got = sess.run(None, {name: t.numpy() for name, t in zip(names, tensors)})
        for name, e, g in zip(graph.output_names(), expected, got):
            g = torch.from_numpy(g)
            if tuple(g.shape) != tuple(e.shape):
                raise ValueError(f"export: onnxruntime's {name} has shape {tuple(g.shape)}; PyTorch's {tuple(e.shape)} "
                                 f"(batch {batch}, length {steps})")
            worst = max(worst, float((g - e.float()).abs().max()) / max(1.0, float(e.abs().max())))
        if worst > TOLERANCE:
            raise ValueError(f"export: onnxruntime differs from PyTorch by {worst:.2e} (> {TOLERANCE:.0e}) at batch "
                             f"{batch}, length {steps}")
    return worst


class OnnxStep:
    """The exported step graph in onnxruntime, with the state carried: `logits = stepper(token)`;
    `threads`: the session's intra-op (and inter-op) threads."""

    def __init__(self, model_bytes_or_path, graph: StepGraph, threads: int = 1):
        self.session, self.graph = session(model_bytes_or_path, threads), graph
        self.names = graph.input_names()
        self.state = None

    def reset(self, batch: int = 1) -> None:
        parameter = next(self.graph.model.parameters())
        zeros = self.graph.model.core.initial_state(batch, dtype=parameter.dtype)
        self.state = [s.numpy() for s in _flatten(zeros)]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.state is None:
            self.reset(inputs[0].shape[0])
        feeds = dict(zip(self.names, [t.numpy() for t in inputs] + self.state))
        output, *self.state = self.session.run(None, feeds)
        return torch.from_numpy(output)


@torch.no_grad()
def sample_ids(stepper: OnnxStep, prompt_ids: torch.Tensor, length: int, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """`rnnlab.tasks.language.sample` on the exported step graph: the prompt (N,) ids read one step
    at a time, then `length` ids, each chosen from the logits and fed back as the next token (the
    step graph reads one token, as input or as fed-back output). Greedy at temperature 0; never <unk>."""
    from .preprocessing import choose_token

    if len(prompt_ids) < 1:
        raise ValueError("sample: prompt_ids must hold at least one token; got none")
    if length < 0:
        raise ValueError(f"sample: length must be >= 0; got {length}")
    stepper.reset(1)
    for token in prompt_ids.tolist():
        logits = stepper(torch.tensor([token]))
    chosen = []
    for _ in range(length):
        logits[:, 0] = float("-inf")  # index 0 is <unk>
        token = choose_token(logits, "greedy" if temperature == 0 else "sample", temperature or 1.0, top_k, generator)
        chosen.append(int(token))
        logits = stepper(token)
    return torch.tensor(chosen, dtype=torch.long)


def step_path(path: str | Path) -> Path:
    """Where the step graph goes beside the sequence graph: model.onnx -> model-step.onnx."""
    path = Path(path)
    return path.with_name(path.stem + "-step" + path.suffix)
