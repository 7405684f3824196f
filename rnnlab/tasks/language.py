"""Language modelling: predict the next character (or word) of a text; by default the bundled
Shakespeare. The lecture's "language modeling in general, character and word based".

The model is the lecture's general model with an embedding as input preprocessing and a linear
readout f giving logits over the vocabulary:

    x^t = E[c_t]            s^t = h(x^t, s^{t-1})           y^t = f(s^t) = logits of c_{t+1}

With `feedback=True` the character reaches the cells only as the model's fed-back output, the
lecture's "no input" unrolling: s^t = h(s^{t-1}, y^{t-1}) with W reading an embedding of the
character y^{t-1} (under teacher forcing the true character, which is the same c_t; when sampling,
the character the model chose). Without feedback the sampling loop feeds the chosen character
back as the next input, which is the same thing done outside the model.

Training is truncated BPTT over stateful batches (char-rnn): the text is cut into `batch_size`
rows, every batch is the next `seq_len` characters of each row, and the state carries over.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import progress
from ..cells import LADDER
from ..config import MAX_LAYERS, ConfigError, knob, validate
from ..data.batches import Batch, TokenStream
from ..data.ngrams import KneserNeyTrigram, Unigram, perplexity
from ..data.text import TextFileError, read_text, split_blocks
from ..data.vocabulary import LEVELS, Vocabulary, tokenize
from ..generation import continue_tokens
from ..linear import Linear
from ..models import RecurrentModel
from ..preprocessing import EmbeddingFeedback
from ..runners import IMPLEMENTATION_NAMES, Stacked
from ..training import TrainConfig
from .base import Task, TextGenerator
from .cell_options import CellOptions

__all__ = ["LanguageConfig", "LanguageTask", "build_model", "check_batch_fits", "next_token_logits", "next_token_loss",
           "stream_loss", "sample"]


@dataclass(frozen=True)
class LanguageConfig(CellOptions):
    """What the language model learns and how big it is."""

    text: str | None = knob(None, "UTF-8 text file to learn (none: the bundled Shakespeare)")
    level: str = knob("char", "tokens: characters or words (and punctuation)", LEVELS)
    max_vocab: int | None = knob(10000, "vocabulary cap, <unk> included, most frequent kept (none: no cap)", low=2)
    val_fraction: float = knob(0.1, "fraction of the text held out for validation (the tail of each of 10 blocks)",
                               above=0, below=1)
    cell: str = knob("lstm", "cell of the ladder", tuple(LADDER))
    hidden: int = knob(512, "state size H of each layer", low=1)
    layers: int = knob(1, "stacked layers", low=1, high=MAX_LAYERS)
    embedding: int = knob(64, "size of the token embedding (the input, or the fed-back output with --feedback)", low=1)
    feedback: bool = knob(False, "feed the model's own output y^{t-1} back through W instead of an input x")
    dropout: float = knob(0.0, "dropout between stacked layers and before the readout", low=0, below=1)
    batch_size: int = knob(32, "rows of the text read in parallel", low=1)
    seq_len: int = knob(100, "steps per batch: the truncation length k of BPTT", low=1)
    stateful: bool = knob(True, "carry the state across batches (off: random windows from a zero state)")
    eval_tokens: int | None = knob(100_000, "validation tokens per evaluation during training (none: all)", low=2)
    implementation: str = knob("auto", "runner implementation", IMPLEMENTATION_NAMES)

    def __post_init__(self):
        validate(self)
        if self.cell == "feedback" and not self.feedback:
            raise ConfigError("LanguageConfig", "cell", "a cell that reads its state unless feedback=True (the "
                              "'feedback' cell reads only y^{t-1})", self.cell)


def build_model(config: LanguageConfig, vocab_size: int) -> RecurrentModel:
    """Embedding -> stacked cells of the ladder -> linear readout to vocab_size logits."""
    cell, H, E = LADDER[config.cell], config.hidden, config.embedding
    options = config.cell_options(config.cell)
    readout = lambda core: nn.Sequential(nn.Dropout(config.dropout), Linear(core.output_size, vocab_size))  # noqa: E731
    if config.feedback:
        core = Stacked.of(cell, 0, H, config.layers, feedback_size=E, implementation=config.implementation,
                          dropout=config.dropout, options=options)
        return RecurrentModel(core, readout(core), feedback_map=EmbeddingFeedback(vocab_size, E, choose="sample"))
    core = Stacked.of(cell, E, H, config.layers, implementation=config.implementation, dropout=config.dropout,
                      options=options)
    return RecurrentModel(core, readout(core), input_map=nn.Embedding(vocab_size, E))


def next_token_logits(model: RecurrentModel, inputs: torch.Tensor, state=None, targets=None,
                      teacher_forcing: float = 1.0):
    """(B, T) token ids -> logits (B, T, V) of the next tokens, and the final state.

    With feedback the token c_t enters as y^{t-1}: under full teacher forcing all steps at once,
    y_prev = embedding(inputs), exact across stateful windows; with teacher_forcing < 1 step by
    step, the model's own choice fed back with probability 1 - teacher_forcing (a window then starts
    from y^{-1} = 0, RecurrentModel's convention)."""
    if model.feedback_map is None:
        return model(inputs, state=state)
    empty = model.feedback_map.embedding.weight.new_zeros(*inputs.shape, 0)  # (B, T, 0): no input x
    if targets is None or teacher_forcing == 1.0:
        outputs, state = model.core(empty, state, model.feedback_map.from_target(inputs))
        return model.readout(outputs), state
    return model(empty, targets=targets, teacher_forcing=teacher_forcing, state=state)


def next_token_loss(model, batch: Batch, state, teacher_forcing: float):
    """Mean cross-entropy in nats per token (the Trainer's loss_fn)."""
    logits, state = next_token_logits(model, batch.inputs, state, batch.targets, teacher_forcing)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))
    return loss, state, batch.targets.numel()


@torch.no_grad()
def stream_loss(model: RecurrentModel, ids: torch.Tensor, rows: int = 50, seq_len: int = 250,
                carry_state: bool = True) -> float:
    """Mean nats per token of predicting ids[1:] from what precedes, reading `rows` contiguous
    pieces in parallel, window by window, with the state carried from window to window (or, as a
    model trained on independent windows is used, each window from a zero state)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = max(1, min(rows, (len(ids) - 1) // 2))
    width = (len(ids) - 1) // rows
    inputs = ids[: rows * width].view(rows, width).to(device)  # (rows, N)
    targets = ids[1: rows * width + 1].view(rows, width).to(device)
    total, state = 0.0, None
    for start in range(0, width, seq_len):
        logits, state = next_token_logits(model, inputs[:, start:start + seq_len], state if carry_state else None)
        chunk = targets[:, start:start + seq_len]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk.reshape(-1), reduction="sum").item()
        progress.advance(rows * min(start + seq_len, width), rows * width)  # tokens read so far
    model.train(was_training)
    return total / (rows * width)


@torch.no_grad()
def sample(model: RecurrentModel, prompt_ids: torch.Tensor, length: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None,
           implementation: str = "auto") -> torch.Tensor:
    """Continue the prompt (N,) ids with `length` ids, each the model's own choice fed back:
    sampled at a temperature from the top k, or greedy at temperature 0. Never chooses <unk>.
    implementation: 'auto' (the compiled loop where it serves the model), 'python' or 'compiled'
    (rnnlab.generation: the same ids for the same generator)."""
    if len(prompt_ids) < 1:
        raise ValueError("sample: prompt_ids must hold at least one token; got none")
    if length < 0:
        raise ValueError(f"sample: length must be >= 0; got {length}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits, state = next_token_logits(model, prompt_ids.to(device)[None])
        return continue_tokens(model, logits[:, -1], state, length, temperature, top_k, generator,
                               implementation)  # logits (1, V) of the token after the prompt
    finally:
        model.train(was_training)


def check_batch_fits(tokens: int, config: LanguageConfig) -> None:
    """ValueError naming --batch-size and --seq-len, and sizes that would fit, when the training
    part of the text is too short for the batches (stateful rows need 2 windows each, plus one)."""
    B, T = config.batch_size, config.seq_len
    need = B * (2 * T + 1) if config.stateful else T + 1
    if tokens >= need:
        return
    unit = f"{config.level}s"
    if config.stateful:
        fits = [f"--batch-size {tokens // (2 * T + 1)} (with --seq-len {T})"] if tokens // (2 * T + 1) >= 1 else []
        if (tokens // B - 1) // 2 >= 1:
            fits.append(f"--seq-len {(tokens // B - 1) // 2} (with --batch-size {B})")
        if not fits and (tokens - 1) // 2 >= 1:
            fits.append(f"--batch-size 1 --seq-len {(tokens - 1) // 2}")
        rule = f"batch_size x (2 x seq_len + 1) = {need:,}"
    else:
        fits = [f"--seq-len {tokens - 1}"] if tokens >= 2 else []
        rule = f"seq_len + 1 = {need:,}"
    advice = f"; with this text use e.g. {' or '.join(fits)}" if fits else "; the text is too short to train on"
    raise ValueError(f"LanguageTask: the training part of the text holds {tokens:,} {unit}, too few for "
                     f"--batch-size {B} and --seq-len {T} (they need {rule}){advice}")


class LanguageTask(Task, TextGenerator):
    """The language-model task: text, vocabulary, model, batches, loss and metrics.

    vocabulary: the run's saved vocabulary when rebuilding a run (None: built from the training
    part of the text)."""

    description = "language model: next character (or word) of Shakespeare or --text, nats/char vs uniform"
    name = "language"
    Config = LanguageConfig
    # Sized on a 2-core CPU to reach validation <= 1.55 nats/char within 10 minutes (docs/RESULTS.md).
    train_defaults = TrainConfig(steps=2200, max_minutes=10.0, lr=3e-3, warmup_steps=50, min_lr_ratio=0.05,
                                 eval_every=250, checkpoint_every=500, clip_norm=5.0)

    def __init__(self, config: LanguageConfig, vocabulary: Vocabulary | None = None):
        self.config = config
        self._split: tuple[list, list] | None = None
        self.vocabulary = vocabulary or Vocabulary.build(self._tokens()[0], config.level, config.max_vocab)
        if self.vocabulary.level != config.level:
            raise ValueError(f"LanguageTask: vocabulary level must be {config.level!r}; got {self.vocabulary.level!r}")
        self.model = build_model(config, len(self.vocabulary))

    def _tokens(self) -> tuple[list, list]:
        """(training, validation) tokens, the text read at first need: a run rebuilt with its
        vocabulary samples without reading the text at all."""
        if self._split is None:
            try:  # the file named by the config's field (the CLI: --text), not by read_text's argument
                tokens = tokenize(read_text(self.config.text), self.config.level)
            except TextFileError as error:
                raise ConfigError("LanguageConfig", "text", "a UTF-8 text file", self.config.text,
                                  f", which {error.what}") from None
            try:
                self._split = split_blocks(tokens, self.config.val_fraction)
            except ValueError:  # too short (val_fraction is checked by the config): split_blocks names its tokens
                holds = f", which holds {len(tokens)} {self.config.level}s"
                raise ConfigError("LanguageConfig", "text", "a text long enough for 10 blocks with a validation part "
                                  "each", self.config.text, holds) from None
        return self._split

    train_ids = functools.cached_property(lambda self: self.vocabulary.encode(self._tokens()[0]))
    val_ids = functools.cached_property(lambda self: self.vocabulary.encode(self._tokens()[1]))

    unit = property(lambda self: self.config.level)

    artifact_files = ("vocabulary.json",)
    data_files = ("text",)

    def artifacts(self) -> dict[str, object]:
        """JSON files the run directory keeps, so the run can be rebuilt without guessing."""
        return {"vocabulary.json": self.vocabulary.to_dict()}

    @classmethod
    def from_artifacts(cls, config: LanguageConfig, artifacts: dict[str, object]) -> LanguageTask:
        return cls(config, Vocabulary.from_dict(artifacts["vocabulary.json"], "vocabulary.json"))

    def batches(self, seed: int) -> TokenStream:
        c = self.config
        check_batch_fits(len(self.train_ids), c)
        return TokenStream(self.train_ids, c.batch_size, c.seq_len, seed=seed, stateful=c.stateful)

    loss = staticmethod(next_token_loss)

    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        """Validation loss in nats and bits per token: on the first eval_tokens tokens (quick, for
        evaluations during training) or, full=True, on all of the validation text."""
        limit = None if full else self.config.eval_tokens
        ids = self.val_ids if limit is None else self.val_ids[: limit + 1]
        c = self.config
        nats = stream_loss(model, ids, carry_state=c.stateful, seq_len=250 if c.stateful else c.seq_len)
        return {"loss": nats, "bits": nats / math.log(2), "perplexity": math.exp(min(nats, 50.0))}

    def describe(self) -> str:
        """One line on what is trained, printed when training starts."""
        c, params = self.config, sum(p.numel() for p in self.model.parameters())
        return (f"{c.cell} x{c.layers}, hidden {c.hidden}, {params:,} parameters, {len(self.vocabulary)} {self.unit} "
                f"vocabulary, {len(self.train_ids):,} training {self.unit}s")

    def report(self, model, run_dir) -> list[str]:
        """Validation loss of `model` on all of the held-out text, beside count-based models of the same
        training tokens and vocabulary: uniform and unigram, and at word level a Kneser-Ney trigram."""
        m, unit, V = self.evaluate(model, full=True), self.unit, len(self.vocabulary)
        lines = [f"validation: {m['loss']:.4f} nats/{unit}   {m['bits']:.4f} bits/{unit}   perplexity "
                 f"{m['perplexity']:.2f}   (all {len(self.val_ids):,} held-out {unit}s)"]
        unigram = perplexity(Unigram(self.train_ids, V), self.val_ids)
        baselines = (f"baselines, same held-out {unit}s and vocabulary: uniform {math.log(V):.4f} nats/{unit} "
                     f"(perplexity {V}), unigram {math.log(unigram):.4f} nats/{unit} "
                     f"(unigram perplexity {unigram:.2f})")
        if self.config.level == "word":  # the count-based model to beat at word level
            trigram = perplexity(KneserNeyTrigram(self.train_ids, V), self.val_ids)
            baselines += (f", interpolated Kneser-Ney trigram {math.log(trigram):.4f} nats/{unit} "
                          f"(perplexity {trigram:.2f})")
        return lines + [baselines]

    def sample_text(self, model, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
                    seed: int = 0) -> str:
        """The prompt's continuation as text (the prompt itself not included).

        The model reads a new line before the prompt: trained on stateful batches it has almost
        never started from a zero state, and a new line puts it where a prompt like "ROMEO:" stands
        in the text, at the start of a line (without it, "ROMEO:" is read as the middle of a line)."""
        generator = torch.Generator().manual_seed(seed)
        return self.continuation(sample(model, self.prompt_ids(prompt), length, temperature, top_k, generator))

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """A new line, then the prompt's tokens (`sample_text` says why)."""
        return self.vocabulary.encode(["\n"] + list(tokenize(prompt, self.config.level)))

    def continuation(self, ids: torch.Tensor) -> str:
        """The ids' text; at word level a space first where it starts with a word (after the prompt's)."""
        text = self.vocabulary.decode(ids)
        if self.config.level == "word" and text and text[0].isalnum():
            text = " " + text
        return text

    def unknown_in(self, prompt: str) -> list[str]:
        return self.vocabulary.unknown(tokenize(prompt, self.config.level))
