"""Skip-gram with negative sampling (word2vec; Mikolov et al. 2013): a contrastive objective
over (centre, context) id pairs.

It lives beside the loop's objectives but trains outside the loop: with sparse embeddings and
sparse Adam it sees tens of millions of pairs a minute on a CPU, which the dense loop cannot.
Two users: the study's skip-gram reference (word vectors) and the pretraining warm start
(token embeddings a transformer starts from).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class SkipGramVectors:
    vectors: torch.Tensor  # (V, dim): the centre ("input") vectors
    seconds: float
    pairs: int  # (centre, context) pairs trained on, all epochs
    dots_per_pair: int  # the context and the negatives

    @property
    def flops(self) -> float:
        """Training FLOPs: a ``dim``-wide dot product per context and negative, forward and backward."""
        return 6.0 * self.pairs * self.vectors.size(1) * self.dots_per_pair


def window_pairs(
    documents: Sequence[np.ndarray], keep_prob: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of (centre, context) pairs: frequent ids subsampled, a random reach per centre."""
    centres, contexts = [], []
    for doc in documents:
        kept = doc[rng.random(len(doc)) < keep_prob[doc]]
        if len(kept) < 2:
            continue
        reach = rng.integers(1, window + 1, size=len(kept))
        for offset in range(1, min(window, len(kept) - 1) + 1):
            ok = reach[: len(kept) - offset] >= offset
            left, right = kept[:-offset][ok], kept[offset:][ok]
            centres += [left, right]
            contexts += [right, left]
    if not centres:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.concatenate(centres)), torch.from_numpy(np.concatenate(contexts))


def train_skipgram(
    documents: Sequence[np.ndarray],
    counts: np.ndarray,
    dim: int = 100,
    window: int = 5,
    negatives: int = 5,
    epochs: int = 3,
    batch_size: int = 4096,
    lr: float = 0.01,
    seed: int = 0,
) -> SkipGramVectors:
    """Vectors for ids ``0 .. len(counts) - 1`` from documents of ids; ``counts`` are the ids'
    frequencies (subsampling, and negatives from the unigram distribution to the 3/4). An id
    that never occurs keeps its small random start. The global torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train(documents, counts, dim, window, negatives, epochs, batch_size, lr, seed)


def _train(
    documents: Sequence[np.ndarray],
    counts: np.ndarray,
    dim: int,
    window: int,
    negatives: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> SkipGramVectors:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    frequency = counts.astype(np.float64)
    seen = frequency > 0
    keep_prob = np.ones_like(frequency)
    keep_prob[seen] = np.minimum(1.0, np.sqrt(1e-4 * frequency.sum() / frequency[seen]))
    noise = torch.from_numpy(frequency**0.75 / (frequency**0.75).sum()).float()
    centre_in = torch.nn.Embedding(len(counts), dim, sparse=True)
    context_out = torch.nn.Embedding(len(counts), dim, sparse=True)
    torch.nn.init.uniform_(centre_in.weight, -0.5 / dim, 0.5 / dim)
    torch.nn.init.zeros_(context_out.weight)
    optimizer = torch.optim.SparseAdam([*centre_in.parameters(), *context_out.parameters()], lr=lr)
    pairs_seen = 0
    for _ in range(epochs):
        centre, context = window_pairs(documents, keep_prob, window, rng)
        order = torch.from_numpy(rng.permutation(len(centre)))
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            c, o = centre_in(centre[rows]), context_out(context[rows])
            sampled = context_out(torch.multinomial(noise, len(rows) * negatives, replacement=True)).view(
                len(rows), negatives, dim
            )
            positive = F.logsigmoid((c * o).sum(-1))
            negative = F.logsigmoid(-(sampled @ c.unsqueeze(-1)).squeeze(-1)).sum(-1)
            loss = -(positive + negative).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pairs_seen += len(order)
    return SkipGramVectors(centre_in.weight.detach().clone(), time.perf_counter() - start, pairs_seen, 1 + negatives)
