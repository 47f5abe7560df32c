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

import numpy as np
import torch

from headstart.objectives.skipgram import train_skipgram

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
