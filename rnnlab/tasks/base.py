"""The task contract, as code: what every application gives the Trainer and the CLI, and the
optional capabilities a task declares by inheriting them (never probed with `hasattr`).

    class MyTask(Task):                       # train, eval, resume
    class MyTask(Task, TextGenerator):        # ... and `rnnlab sample`

A subclass that leaves out a required class attribute fails when it is defined, not when a user
first runs it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from ..training import TrainConfig, Trainer

__all__ = ["Task", "TextGenerator", "Translator", "Captioner", "Baselined", "capabilities", "commands_for"]

REQUIRED_CLASS_ATTRIBUTES = ("name", "description", "Config", "train_defaults", "unit")


class Task(abc.ABC):
    """One application: data + model + loss + metric + defaults.

    Class attributes: `name` (the word after `rnnlab train`), `description` (one line for
    `rnnlab tasks`), `Config` (a frozen dataclass of knobs: the task's CLI flags), `train_defaults`
    (a TrainConfig sized for the default run), `unit` (what one loss term is: "char", "image"...),
    `artifact_files` (the JSON files a run directory keeps besides the weights, e.g. a vocabulary),
    `data_files` (config fields naming the user's data files, e.g. "text": their hashes are recorded).
    Instances hold `config` and `model`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    train_defaults: ClassVar[TrainConfig]
    unit: ClassVar[str]
    artifact_files: ClassVar[tuple[str, ...]] = ()
    # Config fields naming the user's data files or folders: a run records their content hash.
    data_files: ClassVar[tuple[str, ...]] = ()

    config: Any
    model: nn.Module

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return  # an intermediate base (`abstract = True`, e.g. the memory tasks' shared one) need not be complete
        missing = [name for name in REQUIRED_CLASS_ATTRIBUTES if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"{cls.__name__}: a Task must define {', '.join(missing)}")
        if not isinstance(cls.train_defaults, TrainConfig):
            raise TypeError(f"{cls.__name__}: train_defaults must be a TrainConfig; "
                            f"got {type(cls.train_defaults).__name__}")

    # --- the run directory ---
    def artifacts(self) -> dict[str, object]:
        """JSON-able values the run directory keeps (file name -> value), so the run can be rebuilt."""
        return {}

    @classmethod
    def from_artifacts(cls, config, artifacts: dict[str, object]) -> Task:
        """The task rebuilt from its config and the artifacts of its run directory."""
        return cls(config)

    # --- training ---
    @abc.abstractmethod
    def batches(self, seed: int):
        """An iterable of training batches (rnnlab.data.batches), resumable through its state."""

    @staticmethod
    @abc.abstractmethod
    def loss(model, batch, state, teacher_forcing: float):
        """(loss, state, count) for one batch: the mean loss over its `count` predictions (tokens,
        sequences, points), and the model's final state, carried to the next batch where the batch
        source marks it `continues` (the Trainer's loss_fn, rnnlab.training)."""

    @abc.abstractmethod
    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        """Validation metrics, 'loss' first (lower is better: early stopping and the best weights)."""

    def pretraining(self, train_config: TrainConfig) -> Trainer | None:
        """A Trainer to run once before a new run's first step, on a model that shares weights with
        `model` (e.g. the sentiment task's language-model pretraining), or None (the default). A
        resumed run skips it: its checkpoint holds the weights."""
        return None

    def parameter_groups(self) -> list[dict] | None:
        """The Trainer's parameter_groups for `model` (learning-rate scales, parameters frozen at
        first; e.g. the sentiment task's pretrained layers), or None: all alike (the default)."""
        return None

    def solved(self, metrics: dict[str, float]) -> bool:
        """Whether an evaluation's metrics meet the task's own goal, so that training stops there
        (the Trainer's `solved`; default: never, every step is trained)."""
        return False

    # --- what is printed ---
    @abc.abstractmethod
    def describe(self) -> str:
        """One line on what is trained, printed when training starts."""

    @abc.abstractmethod
    def report(self, model, run_dir) -> list[str]:
        """The task's metrics of `model` beside its baselines (lines to print); may write plots into run_dir."""

    def final_metrics(self, model) -> dict[str, float]:
        """The numbers that sum up a trained model, name -> value (`rnnlab seeds` tabulates them over
        seeds); by default the validation metrics on all held-out data."""
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.evaluate(model, full=True)
        finally:
            model.train(was_training)
        return {f"validation {name}": value for name, value in metrics.items()}


class TextGenerator(abc.ABC):
    """Capability: the model writes text (`rnnlab sample`). Besides `sample_text`, which generates
    with the task's model, it declares the two ends of generating that another engine needs
    (`rnnlab sample --engine onnxruntime`: `export.sample_ids` steps the exported graph between
    them): `prompt_ids`, what the model reads first, and `continuation`, the generated ids as text."""

    @abc.abstractmethod
    def sample_text(self, model, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
                    seed: int = 0) -> str:
        """The prompt's continuation (the prompt itself not included)."""

    @abc.abstractmethod
    def unknown_in(self, prompt: str) -> list[str]:
        """The prompt's tokens the vocabulary lacks (read as <unk>)."""

    @abc.abstractmethod
    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """(N,) the token ids the model reads before it generates: the prompt's, with whatever the
        task puts before it (N >= 1)."""

    @abc.abstractmethod
    def continuation(self, ids: torch.Tensor) -> str:
        """The generated token ids (L,) as the text printed after the prompt."""


class Translator(abc.ABC):
    """Capability: the model maps a sentence to a sentence (`rnnlab translate`)."""

    @abc.abstractmethod
    def translate(self, model, sentences: list[str], beam: int = 5) -> list[str]:
        """One translation per sentence."""

    @abc.abstractmethod
    def unknown_in(self, sentence: str) -> list[str]:
        """The sentence's tokens the source vocabulary lacks (read as <unk>)."""


class Captioner(abc.ABC):
    """Capability: the model describes an image in words (`rnnlab caption`)."""

    @abc.abstractmethod
    def caption(self, model, images) -> list[str]:
        """One caption per image."""


class Baselined(abc.ABC):
    """Capability: a fixed baseline loss to beat, so the ladder can train every cell on it."""

    baseline: ClassVar[float]


# capability -> the CLI command that uses it
CAPABILITIES = {TextGenerator: "sample", Translator: "translate", Captioner: "caption"}


def capabilities(task_cls: type) -> list[str]:
    """The CLI commands a task class serves beyond train and eval, from what it inherits."""
    return [command for capability, command in CAPABILITIES.items() if issubclass(task_cls, capability)]


def commands_for(task_cls: type) -> str:
    """The commands that serve a run of this task, for error messages: 'rnnlab eval, rnnlab sample'."""
    return ", ".join(f"rnnlab {c}" for c in ("eval", *capabilities(task_cls)))
