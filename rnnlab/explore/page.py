"""The explore page of a trained run: the data it embeds and the HTML around it.

The weights go into the page as float16 (half the bytes; the default LSTM's 1.2 M parameters take
about 3 MB in base64), and everything the page shows is computed by the model with exactly those
rounded weights, so the statistics computed here, the page's own cell and PyTorch all agree to
float32 precision; `ExplorePage` reports what the rounding costs in loss on the passage.
"""

from __future__ import annotations

import base64
import copy
import html
import inspect
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import RunDir
from ..checks import with_article
from ..config import filled
from ..data.text import TextFileError, read_text
from ..data.vocabulary import tokenize
from ..tasks import LanguageTask, commands_for, load_weights, open_run
from ..training import TrainConfig
from .examples import SERVED, Example, held_out_examples, traced_model
from .trace import (
    Trace,
    check_traceable,
    correlated_units,
    feature_values,
    quantities_of,
    saturation,
    shown_gates,
    trace_core,
    trace_language,
)

__all__ = ["DEFAULT_PASSAGE", "MARKER", "ExplorePage", "page_data", "examples_page_data", "build_page",
           "read_page_data", "dequantised"]

DEFAULT_PASSAGE = 2000  # tokens of held-out text the page shows by default
EXAMPLES = 6  # held-out examples shown for the other tasks
STATIC_PASSAGE = 500  # when the page holds the trace instead of the model (word-level runs)
MARKER = "<!-- rnnlab explore page -->"  # written first in every page: `rnnlab explore` overwrites only these
_DATA = re.compile(r'<script type="application/json" id="rnnlab-data">(.*?)</script>', re.S)


@dataclass
class ExplorePage:
    """The page's HTML and what was put into it."""

    html: str
    data: dict
    passage_tokens: int
    live_model: bool
    loss_float16: float | None  # nats per token on the passage, with the page's (float16) weights
    loss_float32: float | None  # ... and with the run's own weights (None: not a language run)
    unknown: list[str] = field(default_factory=list)  # the passage's tokens outside the vocabulary


def _tensor(t: torch.Tensor) -> dict:
    """A tensor as float16 little-endian bytes in base64, with its shape."""
    data = t.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2").tobytes()
    return {"shape": list(t.shape), "data": base64.b64encode(data).decode("ascii")}


def _quantised(values: np.ndarray) -> dict:
    """A (T, H) array as uint8 over its own range, for pages that hold the trace instead of the model."""
    low, high = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if high == low else (values - low) / (high - low)
    data = np.round(scaled * 255).astype(np.uint8).tobytes()
    return {"shape": list(values.shape), "low": low, "high": high, "data": base64.b64encode(data).decode("ascii")}


def dequantised(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model whose weights are rounded to float16 and back: the page's model."""
    page_model = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        for p in page_model.parameters():
            p.copy_(p.half().float())
    return page_model


def _model_weights(model) -> dict:
    """The language model's weights, by role, for the page's own implementation of the cells."""
    embedding = model.input_map if model.feedback_map is None else model.feedback_map.embedding
    layers = []
    for runner in model.core.layers:
        cell = runner.cell
        tensors = {name: _tensor(getattr(cell, name)) for name in ("weight_ih", "weight_hh", "weight_yh", "bias_ih",
                                                                   "bias_hh") if getattr(cell, name) is not None}
        layers.append({"gates": list(cell.gates), "input_size": cell.input_size, "hidden": cell.hidden_size,
                       "feedback_size": cell.feedback_size, **tensors})
    linear = model.readout[-1]
    return {"feedback": model.feedback_map is not None, "embedding": _tensor(embedding.weight), "layers": layers,
            "readout_weight": _tensor(linear.weight), "readout_bias": _tensor(linear.bias)}


# the cell families template.html implements a step of (a new one runs in the page once it is written there, and tested)
PAGE_FAMILIES = ("vanilla", "residual", "input", "forget", "lstm", "gru", "feedback")


def _live_model_supported(task, model) -> tuple[bool, str]:
    """Whether the page can run the model itself, and why not."""
    if task.config.level != "char":
        return False, ("The page runs character-level language models itself "
                       "(a word vocabulary's readout is too big to embed)")
    for runner in model.core.layers:
        cell = runner.cell
        if cell.family not in PAGE_FAMILIES:
            return False, f"The page's own cells are the families {', '.join(PAGE_FAMILIES)}; not {cell.family!r}"
        if cell.activation != "tanh" or cell.gate_activation != "sigmoid" or cell.depth != 1 or cell.zoneout:
            return False, "The page's own cells are tanh/sigmoid cells of depth 1 without zoneout; not this run's"
    if model.core.residual:
        return False, "The page's own model has no residual connections between layers; this run's has"
    return True, ""


def _top(logits: np.ndarray, k: int = 5) -> tuple[list[list[int]], list[list[float]]]:
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=-1)
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return ids.tolist(), np.round(values.numpy(), 4).tolist()


def _passage_loss(logits: np.ndarray, ids: torch.Tensor) -> float | None:
    """Mean nats per token of predicting ids[1:] (None for a passage of one token)."""
    if len(ids) < 2:
        return None
    return F.cross_entropy(torch.from_numpy(logits[:-1]).double(), ids[1:]).item()


def _stored_config(task, run_dir: str | Path) -> dict:
    """The run's config.json as the run was rebuilt from it: a field the file lacks (written before
    the field existed) shown with what its absence means, a retired choice with what it meant."""
    stored = RunDir(run_dir).read_json("config.json")
    return {**stored, "task_config": filled(type(task.config), stored.get("task_config", {})),
            "train": filled(TrainConfig, stored.get("train", {}))}


def _run_and_cell(task, run_dir: str | Path, weights_file: Path, cell, layers: int) -> dict:
    """The page data's "format", "run" and "cell", the same for every task."""
    return {
        "format": 1,
        "run": {"name": Path(run_dir).resolve().name, "weights": weights_file.name,
                "config": _stored_config(task, run_dir), "describe": task.describe()},
        "cell": {"name": task.config.cell, "class": type(cell).__name__, "doc": inspect.getdoc(type(cell)) or "",
                 "gates": list(shown_gates(cell)), "quantities": list(quantities_of(cell)),
                 "layers": layers, "hidden": cell.hidden_size},
    }


def page_data(task, run_dir: str | Path, weights_file: Path, tokens: list[str],
              source: str) -> tuple[dict, Trace, Trace]:
    """Everything the page embeds, and the traces of the page's and the run's own model."""
    if not isinstance(task, LanguageTask):
        raise ValueError(f"rnnlab explore: the page serves language runs; the run in {run_dir} is "
                         f"{with_article(repr(task.name))} run")
    model = task.model.float().cpu().eval()
    page_model = dequantised(model)
    ids = task.vocabulary.encode(tokens)
    trace = trace_language(page_model, ids)
    trace_own = trace_language(model, ids)
    live, why_not = _live_model_supported(task, model)
    features = feature_values(tokens) if task.config.level == "char" else {}
    cell = model.core.layers[0].cell
    stats = []
    for layer in trace.layers:
        stats.append({
            "correlations": {name: correlated_units(values, features) for name, values in layer["quantities"].items()},
            "saturation": {g: saturation(v) for g, v in layer["gates"].items()},
        })
    top_ids, top_probs = _top(trace.logits)
    data = {
        **_run_and_cell(task, run_dir, weights_file, cell, len(trace.layers)),
        "level": task.config.level,
        "vocabulary": task.vocabulary.tokens,
        "start": "\n",  # the live model reads a new line first, as LanguageTask.sample_text does
        "passage": {"source": source, "tokens": tokens, "ids": ids.tolist(), "top_ids": top_ids, "top_probs": top_probs,
                    "loss": _passage_loss(trace.logits, ids)},
        "features": sorted(features),
        "stats": stats,
        "model": _model_weights(page_model) if live else None,
        "no_model_reason": why_not,
        "trace": None if live else [
            {"quantities": {k: _quantised(v) for k, v in layer["quantities"].items()},
             "gates": {k: _quantised(v) for k, v in layer["gates"].items()}} for layer in trace.layers],
    }
    return data, trace, trace_own


def examples_page_data(task, run_dir: str | Path, weights_file: Path, examples: list[Example]) -> dict:
    """The page's data for a task other than language: the traces of a few held-out examples, one
    after the other, embedded as uint8 (the page does not run these models itself). An ensemble's
    page traces its first member."""
    model = traced_model(task.model.eval())
    traces = [trace_core(model.core, example.xs, example.ys)[0] for example in examples]
    layers = [{part: {name: np.concatenate([t[i][part][name] for t in traces]) for name in traces[0][i][part]}
               for part in ("quantities", "gates")} for i in range(len(traces[0]))]
    cell = model.core.layers[0].cell
    starts = np.cumsum([0] + [len(e.tokens) for e in examples])[:-1].tolist()
    tokens = [token for e in examples for token in e.tokens]
    return {
        **_run_and_cell(task, run_dir, weights_file, cell, len(layers)),
        "level": "step",
        "vocabulary": [],
        "start": "",
        "passage": {"source": f"{len(examples)} held-out examples, {len(tokens):,} steps", "tokens": tokens,
                    "ids": None, "top_ids": None, "top_probs": None, "loss": None,
                    "separator": " " if task.name in ("sentiment", "adding", "forecast") else "",
                    "examples": [{"start": start, "length": len(e.tokens), "caption": e.caption, "outcome": e.outcome,
                                  "line_per_step": e.line_per_step} for start, e in zip(starts, examples)]},
        "features": [],
        "stats": [{"correlations": {name: [] for name in layer["quantities"]},
                   "saturation": {g: saturation(v) for g, v in layer["gates"].items()}} for layer in layers],
        "model": None,
        "no_model_reason": f"The page runs character-level language models itself; not this {task.name} run",
        "trace": [{"quantities": {k: _quantised(v) for k, v in layer["quantities"].items()},
                   "gates": {k: _quantised(v) for k, v in layer["gates"].items()}} for layer in layers],
    }


def _passage(task, text_file: str | None, prompt: str | None, length: int | None, live: bool) -> tuple[list[str], str]:
    """The tokens the page shows and where they come from."""
    level = task.config.level
    if text_file is not None and prompt is not None:
        raise ValueError("rnnlab explore: --text and --prompt exclude each other; got both")
    if length is not None and (not isinstance(length, int) or length < 1):
        raise ValueError(f"rnnlab explore: --length must be an int >= 1; got {length!r}")
    limit = length or (DEFAULT_PASSAGE if live else STATIC_PASSAGE)
    if prompt is not None:
        tokens, source = list(tokenize(prompt, level)), "the prompt"
    elif text_file is not None:
        try:
            content = read_text(text_file)
        except TextFileError as error:  # a folder, a device, empty, not UTF-8: said as such
            raise ValueError(f"rnnlab explore: --text must be a UTF-8 text file; got {text_file!r}, "
                             f"which {error.what}") from None
        tokens, source = list(tokenize(content, level))[:limit], f"{Path(text_file).name}"
    else:
        tokens = [task.vocabulary.tokens[int(i)] for i in task.val_ids[:limit]]
        source = "the run's held-out text"
    if not tokens:
        raise ValueError("rnnlab explore: the passage must hold at least one token; got none")
    return tokens[:limit], source + f" ({len(tokens[:limit]):,} {level}s)"


def build_page(run_dir: str | Path, text_file: str | None = None, prompt: str | None = None,
               length: int | None = None, weights: str = "best") -> ExplorePage:
    """The explore page of the run in run_dir over a passage: --text's file, --prompt's string, or
    by default the first 2,000 tokens of the run's held-out text."""
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"rnnlab explore: --length must be an int >= 1; got {length!r}")
    task, _ = open_run(run_dir)
    if not isinstance(task, LanguageTask) and task.name not in SERVED:  # before the weights load
        raise ValueError(f"rnnlab explore: the page serves language, {', '.join(SERVED)} runs; the run is "
                         f"{with_article(repr(task.name))} run; what serves it: {commands_for(type(task))}")
    if not isinstance(task, LanguageTask) and (text_file is not None or prompt is not None):  # before the weights
        raise ValueError(f"rnnlab explore: --text and --prompt serve language runs; {with_article(repr(task.name))} "
                         f"run shows held-out examples (--length: how many)")
    check_traceable(traced_model(task.model).core)  # a --bidirectional run: refused before its weights load too
    file = load_weights(task, run_dir, weights, "cpu")
    if not isinstance(task, LanguageTask):
        task.model.float().cpu()
        examples = held_out_examples(task, length or EXAMPLES)
        data = examples_page_data(task, run_dir, file, examples)
        return ExplorePage(render(data), data, len(data["passage"]["tokens"]), False, None, None)
    live, _ = _live_model_supported(task, task.model)
    tokens, source = _passage(task, text_file, prompt, length, live)
    data, trace, trace_own = page_data(task, run_dir, file, tokens, source)
    ids = torch.tensor(data["passage"]["ids"])
    text = render(data)
    return ExplorePage(text, data, len(tokens), data["model"] is not None, _passage_loss(trace.logits, ids),
                       _passage_loss(trace_own.logits, ids), task.vocabulary.unknown(tokens))


def render(data: dict) -> str:
    """The template with the data embedded (no '<' inside the JSON, so no '</script>' can end it early)."""
    template = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = f"rnnlab explore: {data['run']['name']}"
    return (MARKER + "\n" + template.replace("__RNNLAB_TITLE__", html.escape(title))
            .replace("__RNNLAB_DATA__", payload))


def read_page_data(page: str) -> dict:
    """The data embedded in an explore page's HTML."""
    found = _DATA.search(page)
    if found is None:
        raise ValueError("read_page_data: page must be an rnnlab explore page; no embedded data found")
    return json.loads(found.group(1))
