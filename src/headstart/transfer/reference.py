"""Classical reference points a study reports beside its inits, each read out by the same
logistic-regression probe. For text classification:

- **bag of n-grams**: unigram and bigram indicators learned from the labelled budget alone —
  the floor a pretrained model must clear to be worth anything;
- **skip-gram word vectors** (word2vec with negative sampling, a contrastive objective):
  trained for about a minute on the same unlabelled text as the pretrained model,
  mean-pooled per sentence. Cheap and strong at tiny label budgets: a pretraining recipe
  that cannot beat it is not paying for its compute.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from headstart.config import FinetuneConfig, StudyConfig
from headstart.data.labelled import LabelledText, read_labelled_jsonl, split_validation, stratified_budget
from headstart.data.sources import ReadOptions, SkipLog, read_documents
from headstart.files import atomic_path
from headstart.objectives.classify import accuracy_and_macro_f1
from headstart.objectives.skipgram import train_skipgram
from headstart.readouts.probe import fit_logistic
from headstart.tasks.image import ImageClassifyTask

WORD = re.compile(r"[\w']+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the units both references count."""
    return WORD.findall(text.lower())


# ----------------------------------------------------------------------------- bag of n-grams


def ngram_features(fit_texts: Sequence[str], texts_by_split: Sequence[Sequence[str]], max_features: int = 50_000):
    """Binary unigram + bigram indicators over the n-grams seen at least twice in ``fit_texts``
    (all of them when the budget is tiny), as sparse (n, vocabulary) tensors per split."""

    def grams(text: str) -> set[str]:
        tokens = words(text)
        return {*tokens, *(f"{a} {b}" for a, b in itertools.pairwise(tokens))}

    counts = Counter(g for text in fit_texts for g in grams(text))
    min_count = 2 if len(fit_texts) >= 1000 else 1
    vocabulary = {g: i for i, (g, c) in enumerate(counts.most_common(max_features)) if c >= min_count}
    matrices = []
    for texts in texts_by_split:
        rows, cols = [], []
        for row, text in enumerate(texts):
            found = sorted(vocabulary[g] for g in grams(text) if g in vocabulary)
            rows += [row] * len(found)
            cols += found
        index = torch.tensor([rows, cols], dtype=torch.int64).reshape(2, -1)
        values = torch.ones(index.size(1))
        shape = (len(texts), max(1, len(vocabulary)))
        matrices.append(torch.sparse_coo_tensor(index, values, shape, check_invariants=True).coalesce())
    return matrices


# ----------------------------------------------------------------------------- skip-gram


@dataclass
class WordVectors:
    vocabulary: dict[str, int]
    vectors: torch.Tensor  # (V, dim)
    seconds: float
    pairs: int

    def sentence_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean of the in-vocabulary word vectors (zeros for a sentence with none)."""
        out = torch.zeros(len(texts), self.vectors.size(1))
        for row, text in enumerate(texts):
            ids = [self.vocabulary[w] for w in words(text) if w in self.vocabulary]
            if ids:
                out[row] = self.vectors[ids].mean(0)
        return out


def train_word_vectors(
    documents: Iterable[str], dim: int = 100, min_count: int = 3, epochs: int = 3, seed: int = 0
) -> WordVectors:
    """Skip-gram vectors for the words seen at least ``min_count`` times."""
    tokenized = [words(d) for d in documents]
    counts = Counter(w for doc in tokenized for w in doc)
    vocab_words = [w for w, c in counts.most_common() if c >= min_count]
    vocabulary = {w: i for i, w in enumerate(vocab_words)}
    encoded = [np.array([vocabulary[w] for w in doc if w in vocabulary], dtype=np.int64) for doc in tokenized]
    frequency = np.array([counts[w] for w in vocab_words], dtype=np.int64)
    trained = train_skipgram(encoded, frequency, dim=dim, epochs=epochs, seed=seed)
    return WordVectors(vocabulary, trained.vectors, trained.seconds, trained.pairs)


# ----------------------------------------------------------------------------- pixels


def pixel_features(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) images → (N, H·W·C) floats in [0, 1]."""
    return torch.from_numpy(images.reshape(len(images), -1)).float().div_(255.0)


def read_vectors(path: Path) -> WordVectors | None:
    """Word vectors a study cached, or None when there are none to trust. Loaded with
    ``weights_only=True`` (tensors, strings and numbers; never arbitrary objects), on every
    torch version headstart supports."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
        return WordVectors(saved["vocabulary"], saved["vectors"], saved["seconds"], saved["pairs"])
    except Exception:  # not a cache this study wrote (truncated, or holding objects): train anew
        return None


def write_vectors(vectors: WordVectors, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(vars(vectors), tmp)


# Reference inits read out by logistic regression, and the task kind each reads.
REFERENCES = {"skipgram": "classify", "ngrams": "classify", "pixels": "image"}


class References:
    """The classical reference inits, read out by the same logistic probe as a frozen backbone."""

    def __init__(self, config: StudyConfig, base: FinetuneConfig, run_dir: Path, console: Console) -> None:
        self.task = base.task
        self.val_fraction, self.val_max = base.val_fraction, base.val_max
        self.config, self.run_dir, self.console = config, run_dir, console
        self._vectors: WordVectors | None = None

    def vectors(self) -> WordVectors:
        if self._vectors is None:
            cache = self.run_dir / "reference" / "skipgram.pt"
            self._vectors = read_vectors(cache)
            if self._vectors is None:
                skipped = SkipLog()
                documents = list(read_documents(self.config.reference_text, ReadOptions(text_mode="line"), skipped))
                self.console.print(f"skip-gram reference: training word vectors on {len(documents):,} documents")
                self._vectors = train_word_vectors(documents)
                write_vectors(self._vectors, cache)
        return self._vectors

    @cached_property
    def train(self) -> LabelledText:
        return read_labelled_jsonl(self.task.train, self.task.text_field, self.task.label_field)

    @cached_property
    def eval(self) -> LabelledText:
        task = self.task
        return read_labelled_jsonl(task.eval, task.text_field, task.label_field, classes=self.train.classes)

    @cached_property
    def images(self) -> ImageClassifyTask:
        task = ImageClassifyTask(self.task)
        task.read()
        return task

    def cell(self, kind: str, budget: int, seed: int) -> dict[str, Any]:
        strata = self.images.strata if kind == "pixels" else self.train.labels
        chosen = stratified_budget(strata, budget, seed)
        fit, held = split_validation(strata, chosen, self.val_fraction, seed, self.val_max)
        labels = torch.from_numpy(strata)
        if kind == "pixels":
            task = self.images
            splits = (task.encode("train", fit), task.encode("train", held), task.encode("eval"))
            x, v, e = (pixel_features(split.images) for split in splits)
            probe = fit_logistic(x, labels[fit], v, labels[held], task.n_classes)
            metrics = task.metrics(e @ probe.weight.T + probe.bias, splits[2].labels)
        else:
            data = self.train
            fit_texts, held_texts = [data.texts[i] for i in fit], [data.texts[i] for i in held]
            if kind == "skipgram":
                vectors = self.vectors()
                x, v, e = (vectors.sentence_features(t) for t in (fit_texts, held_texts, self.eval.texts))
            else:
                x, v, e = ngram_features(fit_texts, [fit_texts, held_texts, self.eval.texts])
            probe = fit_logistic(x, labels[fit], v, labels[held], len(data.classes))
            metrics = accuracy_and_macro_f1(probe.predict(e).numpy(), self.eval.labels, len(data.classes))
        return {"metric": "accuracy", "budget": len(chosen), "best_val": probe.val_accuracy,
                "chosen": f"logistic l2={probe.l2:g}",
                "steps": 0, "best_step": 0, "flops": 0.0, "sweep_flops": 0.0, **metrics}  # fmt: skip
