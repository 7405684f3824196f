"""Translation: the lecture's sequence to sequence of different lengths. An encoder reads the
English sentence; a decoder writes the translation a word at a time, each chosen word fed back
(teacher forcing in training: the reference's word), until it writes the end token.

    encoder:  e^j = h_enc(E_src[w_j], e^{j-1})                      j = 1 .. S (the source's own length)
    decoder:  s^t = h_dec(e^S, s^{t-1}, E_tgt[y^{t-1}]),  s^0 = e^S's state
    readout:  y^t = f(s^t)                           --attention none: the lecture's one-vector encoder
              y^t = f(tanh(W_c [s^t; sum_j a_tj e^j]))  --attention dot | additive: a_t = softmax(score(s^t, e^j))

Data (rnnlab/data/translation.py): English -> Spanish Bible verses of at most 20 words a side,
King James -> Reina-Valera 1909, split by book; or `--dataset numbers`, English -> French number
words ("eighty thousand and seventy-one" -> "quatre-vingt mille soixante et onze"), split by number.
Metrics on the held-out test split: BLEU and chrF (sacrebleu, on lowercased text) of the
beam-search translations, and the exact-match rate, beside two baselines: copying the source, and
retrieval (the translation of the training sentence that shares the most words with the source).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ATTENTION_KINDS, Attention
from ..cells import LADDER
from ..config import MAX_BEAM, MAX_LAYERS, knob, validate
from ..data.batches import Batch, ExampleBatches
from ..data.translation import (
    DATASETS,
    EOS,
    Pair,
    build_vocabulary,
    encode_pairs,
    load_pairs,
    sentence_tokens,
    split_pairs,
)
from ..data.vocabulary import Vocabulary, detokenize
from ..decoding import beam_search, greedy_search
from ..linear import Linear
from ..models import EncoderDecoder, RecurrentModel
from ..plots import pyplot, save_figure
from ..preprocessing import EmbeddingFeedback
from ..runners import IMPLEMENTATION_NAMES, Stacked
from ..training import TrainConfig
from .base import Task, Translator

__all__ = ["TranslateConfig", "TranslateTask", "build_model", "translation_loss", "retrieval_baseline",
           "corpus_scores"]

CELLS = ("lstm", "gru", "vanilla", "residual", "input", "forget")


@dataclass(frozen=True)
class TranslateConfig:
    """Which sentence pairs, and how big the encoder-decoder is."""

    dataset: str = knob("bible", "English -> Spanish Bible verses (split by book) or English -> French number "
                                 "words (split by number)", tuple(DATASETS))
    attention: str = knob("dot", "what the decoder reads of the source: the encoder's last output only (none, the "
                                 "lecture's encoder-decoder) or attention over all its outputs",
                          ("none", *ATTENTION_KINDS))
    cell: str = knob("lstm", "cell of the encoder and the decoder", CELLS)
    hidden: int = knob(256, "state size H of each layer", low=1)
    layers: int = knob(1, "stacked layers of the encoder and of the decoder", low=1, high=MAX_LAYERS)
    embedding: int = knob(128, "size of the word embeddings (source, and target fed back)", low=1)
    dropout: float = knob(0.2, "dropout on the embeddings, between layers and before the readout", low=0, below=1)
    min_count: int = knob(2, "words seen fewer times in the training split are read (and written) as <unk>",
                           low=1)
    batch_size: int = knob(64, "sentence pairs per batch (sorted by length in pools, so batches pad little)",
                            low=1)
    beam: int = knob(5, "beam width of the reported translations (1: greedy)", low=1, high=MAX_BEAM)
    length_penalty: float = knob(1.0, "beam search ranks log probability / length ** this (0: none)", low=0)
    implementation: str = knob("auto", "runner implementation", IMPLEMENTATION_NAMES)

    def __post_init__(self):
        validate(self)


def build_model(config: TranslateConfig, source_size: int, target_size: int) -> EncoderDecoder:
    """Embedding -> stacked cells (encoder); stacked cells with the chosen word fed back, optional
    attention, dropout and a linear readout over the target words (decoder)."""
    cell, E, H, p = LADDER[config.cell], config.embedding, config.hidden, config.dropout
    source_map = nn.Sequential(nn.Embedding(source_size, E), nn.Dropout(p))
    encoder = Stacked.of(cell, E, H, config.layers, implementation=config.implementation, dropout=p)
    core = Stacked.of(cell, H, H, config.layers, feedback_size=E, implementation=config.implementation, dropout=p)
    decoder = RecurrentModel(core, nn.Sequential(nn.Dropout(p), Linear(H, target_size)),
                             feedback_map=EmbeddingFeedback(target_size, E))
    attention = None if config.attention == "none" else Attention(config.attention, H, H)
    return EncoderDecoder(encoder, decoder, source_map, attention=attention)


def translation_loss(model, batch: Batch, state, teacher_forcing: float):
    """Mean cross-entropy in nats per target word (the end token included); targets are padded
    with -1, which the loss ignores. Every pair starts from a zero state."""
    steps = int((batch.targets >= 0).sum(1).max())
    targets = batch.targets[:, :steps]
    logits = model(batch.inputs, targets.clamp(min=0), source_lengths=batch.lengths, teacher_forcing=teacher_forcing)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
    return loss, None, int((targets >= 0).sum())


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """BLEU and chrF (sacrebleu's defaults; the texts are lowercased already) and the exact-match
    rate, each in percent."""
    import sacrebleu

    exact = sum(sentence_tokens(h) == sentence_tokens(r) for h, r in zip(hypotheses, references))
    exact /= max(1, len(references))
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score, "exact": 100 * exact}


def retrieval_baseline(train: list[Pair], sources: list[str]) -> list[str]:
    """For each source, the (lowercased) translation of the training pair whose source shares the
    most distinct words with it, relative to both lengths (Dice: 2 |A & B| / (|A| + |B|))."""
    words: dict[str, int] = {}
    train_sets = [set(sentence_tokens(p.source)) for p in train]
    query_sets = [set(sentence_tokens(s)) for s in sources]
    for group in (train_sets, query_sets):
        for tokens in group:
            for token in tokens:
                words.setdefault(token, len(words))

    def incidence(sets):  # (N, V) 0/1, sparse
        rows = [i for i, s in enumerate(sets) for _ in s]
        columns = [words[t] for s in sets for t in s]
        return torch.sparse_coo_tensor(torch.tensor([rows, columns]), torch.ones(len(rows)), (len(sets), len(words)),
                                       check_invariants=False)

    shared = torch.sparse.mm(incidence(train_sets), incidence(query_sets).to_dense().T)  # (N_train, N_query)
    sizes_train = torch.tensor([len(s) for s in train_sets], dtype=torch.float)[:, None]
    sizes_query = torch.tensor([len(s) for s in query_sets], dtype=torch.float)[None, :]
    best = (2 * shared / (sizes_train + sizes_query).clamp(min=1)).argmax(0)
    return [detokenize(sentence_tokens(train[i].target), "word") for i in best.tolist()]


class TranslateTask(Task, Translator):
    """The translate task: pairs and splits, vocabularies, model, batches, loss, decoding and metrics.

    vocabularies: the run's saved (source, target) vocabularies when rebuilding a run (None: built
    from the training split)."""

    description = ("sequence to sequence: English -> Spanish Bible verses (or number words), BLEU/chrF vs copy and "
                   "retrieval")
    name = "translate"
    Config = TranslateConfig
    # Sized on a 2-core CPU with one thread (docs/RESULTS.md): 1,000 steps of 64 verse pairs (6 epochs
    # of the 10,135 training pairs) take about 7 minutes of process CPU time; the 30-minute wall-clock
    # cap bounds a run on a machine whose cores are busy with other work.
    train_defaults = TrainConfig(steps=1000, max_minutes=30.0, lr=3e-3, eval_every=250, checkpoint_every=250,
                                 clip_norm=1.0, min_lr_ratio=0.05, threads=1)
    unit = "word"
    artifact_files = ("vocabulary.json",)

    def __init__(self, config: TranslateConfig, vocabularies: tuple[Vocabulary, Vocabulary] | None = None):
        self.config = config
        self.splits = split_pairs(load_pairs(config.dataset), config.dataset)
        train = self.splits["train"]
        self.source_vocabulary, self.target_vocabulary = vocabularies or (
            build_vocabulary([p.source for p in train], config.min_count, None, end=False),
            build_vocabulary([p.target for p in train], config.min_count, None, end=True))
        if self.target_vocabulary.tokens[1:2] != [EOS]:
            raise ValueError(f"TranslateTask: the target vocabulary must hold {EOS!r} at index 1; got "
                             f"{self.target_vocabulary.tokens[:3]}")
        self.eos = 1
        self.data = {name: encode_pairs(pairs, self.source_vocabulary, self.target_vocabulary)
                     for name, pairs in self.splits.items()}
        self.model = build_model(config, len(self.source_vocabulary), len(self.target_vocabulary))

    def artifacts(self) -> dict[str, object]:
        return {"vocabulary.json": {"source": self.source_vocabulary.to_dict(),
                                    "target": self.target_vocabulary.to_dict()}}

    @classmethod
    def from_artifacts(cls, config: TranslateConfig, artifacts: dict[str, object]) -> TranslateTask:
        saved = artifacts["vocabulary.json"]
        if not isinstance(saved, dict) or set(saved) != {"source", "target"}:
            raise ValueError("TranslateTask: vocabulary.json must hold {'source': ..., 'target': ...}")
        return cls(config, (Vocabulary.from_dict(saved["source"], "vocabulary.json: source"),
                             Vocabulary.from_dict(saved["target"], "vocabulary.json: target")))

    def batches(self, seed: int) -> ExampleBatches:
        sources, lengths, targets = self.data["train"]
        return ExampleBatches(sources, targets, self.config.batch_size, seed=seed, lengths=lengths, bucket=True)

    loss = staticmethod(translation_loss)

    @torch.no_grad()
    def scores(self, model, split: str) -> dict[str, float]:
        """Loss (nats per target word) and the accuracy of the next word under teacher forcing."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        sources, lengths, targets = self.data[split]
        total, correct, count = 0.0, 0, 0
        for chosen in torch.argsort(lengths, stable=True).split(256):
            steps_in, steps_out = int(lengths[chosen].max()), int((targets[chosen] >= 0).sum(1).max())
            batch = Batch(sources[chosen, :steps_in], targets[chosen, :steps_out], lengths[chosen]).to(device)
            logits = model(batch.inputs, batch.targets.clamp(min=0), source_lengths=batch.lengths)
            valid = batch.targets >= 0
            total += F.cross_entropy(logits[valid].float(), batch.targets[valid], reduction="sum").item()
            correct += int((logits.argmax(-1) == batch.targets)[valid].sum())
            count += int(valid.sum())
        model.train(was_training)
        return {"loss": total / count, "accuracy": correct / count}

    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        """Validation loss and next-word accuracy (all validation pairs, whatever `full`)."""
        return self.scores(model, "val")

    @torch.no_grad()
    def decode(self, model, sentences: list[str], beam: int | None = None, batch_size: int = 64) -> list[str]:
        """Translations (lowercased text) by beam search (beam None: the config's width; 1: greedy)."""
        beam = self.config.beam if beam is None else beam
        if not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM:
            raise ValueError(f"translate: beam must be an int in [1, {MAX_BEAM}]; got {beam!r}")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        encoded = [self.source_vocabulary.encode(sentence_tokens(s)) for s in sentences]
        lengths = torch.tensor([max(1, len(e)) for e in encoded])
        out: list[str] = [""] * len(sentences)
        for chosen in torch.argsort(lengths, stable=True).split(batch_size):
            steps = int(lengths[chosen].max())
            ids = torch.zeros(len(chosen), steps, dtype=torch.long)
            for row, i in enumerate(chosen.tolist()):
                ids[row, :len(encoded[i])] = encoded[i]
            state = model.start(ids.to(device), lengths[chosen].to(device))
            step = model.step if self.allow_unknown else self._never_unknown(model.step)
            max_steps = 3 * steps // 2 + 10  # the training translations: at most 1.5 times their source, plus 8
            if beam == 1:
                tokens = greedy_search(step, state, len(chosen), self.eos, max_steps)
            else:
                tokens = beam_search(step, state, len(chosen), self.eos, max_steps, beam,
                                     self.config.length_penalty)
            for i, row in zip(chosen.tolist(), tokens):
                out[i] = detokenize([self.target_vocabulary.tokens[t] for t in row], "word")
        model.train(was_training)
        return out

    allow_unknown = False  # decoding never writes <unk>: it matches no reference word

    @staticmethod
    def _never_unknown(step):
        def without_unknown(previous, state):
            logits, state = step(previous, state)
            return logits.index_fill(1, torch.tensor([0], device=logits.device), float("-inf")), state
        return without_unknown

    def translate(self, model, sentences: list[str], beam: int = 5) -> list[str]:
        """One translation per sentence (lowercased), by beam search of width `beam`."""
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise TypeError(f"translate: sentences must be a list of str; got {type(sentences).__name__}")
        return self.decode(model, sentences, beam)

    def unknown_in(self, sentence: str) -> list[str]:
        return self.source_vocabulary.unknown(sentence_tokens(sentence))

    def describe(self) -> str:
        c, params = self.config, sum(p.numel() for p in self.model.parameters())
        _, source, target = DATASETS[c.dataset]
        sizes = " / ".join(f"{len(self.splits[s]):,}" for s in ("train", "val", "test"))
        return (f"{source} -> {target}; {c.cell} x{c.layers} encoder and decoder, hidden {c.hidden}, attention "
                f"{c.attention}, {params:,} parameters; vocabularies {len(self.source_vocabulary):,} / "
                f"{len(self.target_vocabulary):,} words; {sizes} pairs (train / validation / test)")

    def report(self, model, run_dir) -> list[str]:
        """BLEU, chrF and exact match on the test split, by beam search and greedy, beside copying the
        source and retrieval; writes translations.txt (test source, reference, translation)."""
        test = self.splits["test"]
        sources = [p.source for p in test]
        references = [detokenize(sentence_tokens(p.target), "word") for p in test]
        rows = {f"beam {self.config.beam}": self.decode(model, sources)}
        if self.config.beam != 1:
            rows["greedy"] = self.decode(model, sources, beam=1)
        rows["copy the source"] = [detokenize(sentence_tokens(s), "word") for s in sources]
        rows["retrieval"] = retrieval_baseline(self.splits["train"], sources)
        found = {name: corpus_scores(hyps, references) for name, hyps in rows.items()}
        val = self.scores(model, "val")
        held_out = "held-out books" if self.config.dataset == "bible" else "unseen numbers"
        lines = [f"test ({len(test):,} pairs, {held_out}; lowercased): BLEU / chrF / exact match %"]
        lines += [f"  {name:<16} {s['bleu']:6.2f} {s['chrf']:6.2f} {s['exact']:6.2f}" for name, s in found.items()]
        lines.append(f"validation loss {val['loss']:.4f} nats/word, next-word accuracy {100 * val['accuracy']:.1f}%")
        if run_dir is not None:
            from pathlib import Path

            path = Path(run_dir) / "translations.txt"
            best = rows[f"beam {self.config.beam}"]
            path.write_text("".join(f"{p.key}\n  en  {p.source}\n  ref {r}\n  out {h}\n"
                                    for p, r, h in zip(test, references, best)), encoding="utf-8")
            lines.append(f"test translations: {path}")
            if self.config.attention != "none":
                picture = self.plot_attention(model, test[:3], Path(run_dir) / "attention.png")
                lines.append(f"attention weights: {picture}")
        return lines

    @torch.no_grad()
    def plot_attention(self, model, pairs: list[Pair], path) -> str:
        """A PNG of where the decoder looked: for each pair, its greedy translation's words (rows)
        against the source words (columns), shaded by the attention weight."""
        plt = pyplot()

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        figure, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 5.5), squeeze=False)
        for axis, pair in zip(axes[0], pairs):
            words = sentence_tokens(pair.source)
            ids = self.source_vocabulary.encode(words)[None].to(device)
            out = greedy_search(model.step, model.start(ids), 1, self.eos, 3 * len(words) // 2 + 10)[0]
            weights = model.attention_weights(ids, torch.tensor([out + [self.eos]], device=device))[0].cpu()
            axis.imshow(weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
            axis.set_xticks(range(len(words)), [w if w in self.source_vocabulary.index else f"{w}?" for w in words],
                            rotation=90, fontsize=8)
            axis.set_yticks(range(len(out) + 1), [self.target_vocabulary.tokens[t] for t in out] + [EOS], fontsize=8)
            axis.set_title(pair.key, fontsize=9)
        figure.suptitle(f"{self.config.attention} attention: each written word (row) over the source words")
        save_figure(figure, path, dpi=110)
        model.train(was_training)
        return str(path)
