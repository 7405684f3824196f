"""A handful of held-out examples of the tasks other than language, for the page's static views:
what the cells read at each step (after the model's input preprocessing), a short label per step
for the page's text, and what the model made of the example."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import with_article
from ..models import Ensemble
from ..tasks import AddingTask, CopyTask, DigitsTask, ForecastTask, SentimentTask

__all__ = ["Example", "held_out_examples", "traced_model", "SERVED"]

SERVED = ("sentiment", "digits", "forecast", "adding", "copy")
SHADES = " \u2591\u2592\u2593\u2588"  # a row of pixels as text: blank, light, medium, dark, full


@dataclass
class Example:
    """One held-out sequence: its caption, one label per step, the cells' input xs (1, T, I) and
    fed-back y_prev ys (1, T, O) if any, the model's answer, and whether to break the line after
    each step (an image's rows)."""

    caption: str
    tokens: list[str]
    xs: torch.Tensor
    outcome: str
    line_per_step: bool = False
    ys: torch.Tensor | None = None


def traced_model(model):
    """The model whose state and gates a page shows: an `Ensemble`'s first member (the members are
    alike; the page's predictions stay the ensemble's)."""
    return model.members[0] if isinstance(model, Ensemble) else model


@torch.no_grad()
def held_out_examples(task, count: int = 6) -> list[Example]:
    """The first `count` held-out examples of a sentiment, digits, adding or copy run."""
    model = task.model.eval()
    if isinstance(task, SentimentTask):
        from ..tasks.sentiment import LABELS

        ids, lengths, labels = task.data["val"]
        examples = []
        for i in range(min(count, len(ids))):
            n = int(lengths[i])
            row = ids[i:i + 1, :n]
            logits, _ = model(row, lengths=lengths[i:i + 1])
            p = torch.softmax(logits[0].double(), -1)
            guess = int(p.argmax())
            examples.append(Example(f"validation snippet {i + 1} ({LABELS[int(labels[i])]})",
                                    [task.vocabulary.tokens[int(t)] for t in row[0]],
                                    traced_model(model).input_map(row),
                                    f"the model says {LABELS[guess]} ({100 * p[guess]:.0f}%); "
                                    f"truly {LABELS[int(labels[i])]}"))
        return examples
    if isinstance(task, DigitsTask):
        images, labels = task.data["val"]
        examples = []
        for i in range(min(count, len(images))):
            image = images[i:i + 1].float()  # (1, rows, columns): one row per step
            p = torch.softmax(model(image)[0][0].double(), -1)
            guess = int(p.argmax())
            rows = ["".join(SHADES[min(4, int(v * 5))] for v in row.tolist()) for row in image[0]]
            examples.append(Example(f"validation image {i + 1} (class {int(labels[i])}), read row by row", rows, image,
                                    f"the model says {guess} ({100 * p[guess]:.0f}%); truly {int(labels[i])}", True))
        return examples
    if isinstance(task, AddingTask):
        inputs, targets = task.eval_inputs[:count], task.eval_targets[:count]
        predictions, _ = model(inputs)
        return [Example(f"held-out sequence {i + 1}: add the two marked values",
                        [f"[{v:.2f}]" if m else f"{v:.2f}" for v, m in inputs[i].tolist()], inputs[i:i + 1],
                        f"the model says {float(predictions[i, 0]):.3f}; the sum is {float(targets[i, 0]):.3f}")
                for i in range(len(inputs))]
    if isinstance(task, CopyTask):
        inputs, targets = task.eval_inputs[:count], task.eval_targets[:count]
        logits, _ = model(inputs)
        marker = int(inputs.max())
        examples = []
        for i in range(len(inputs)):
            copied = targets[i] > 0
            right = int((logits[i].argmax(-1)[copied] == targets[i][copied]).sum())
            shown = ["\u00b7" if t == 0 else "|" if t == marker else str(t) for t in inputs[i].tolist()]
            answer = "".join(str(t) for t in logits[i].argmax(-1)[copied].tolist())
            examples.append(Example(f"held-out sequence {i + 1}: copy the first symbols after the marker |",
                                    shown, model.input_map(inputs[i:i + 1]),
                                    f"the model copies {answer}; {right} of {int(copied.sum())} right"))
        return examples
    if isinstance(task, ForecastTask):
        # windows of the validation part, read with the true previous value fed back (teacher forcing,
        # as in training): the prediction at step t is of the value at t
        offset, length = task.normaliser.offset, min(task.window, 60)
        start = task.n_train - offset  # the first z of the validation part
        examples = []
        for i in range(count):
            a, b = start + i * length, start + (i + 1) * length
            if b > len(task.z):
                break
            z = task.z[a:b]
            xs, ys = task.inputs[None, a:b], torch.cat([task.z[a - 1:a], z[:-1]])[None, :, None]
            outputs, _ = model.core(xs, None, ys)
            error = float((model.readout(outputs)[0, :, 0] - z).pow(2).mean().sqrt())
            examples.append(Example(f"validation window {i + 1}: {task.series.step_name}s {a + offset} "
                                    f"to {b + offset - 1} of {task.config.series} ({task.series.unit}), "
                                    f"the true previous value fed back",
                                    [f"{v:.1f}" for v in task.values[a + offset:b + offset].tolist()],
                                    xs, f"one-step-ahead RMSE {error:.3f} (normalised units)", ys=ys))
        return examples
    raise ValueError(f"rnnlab explore: the page serves language, {', '.join(SERVED)} runs; "
                     f"the run is {with_article(repr(task.name))} run")
