"""``readout=setfit`` (SetFit, Tunstall et al. 2022): contrastive fine-tuning of the pooled
embedding on pairs drawn from the budget (``objectives/pair_similarity.py``), one pass over
``setfit_pairs`` same-class and as many other-class pairs per example, then a logistic head on
the fine-tuned embeddings. Every evaluation refits that head and scores the held-out part of the
budget, so early stopping picks the embedding the head reads best."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from headstart.errors import HeadstartError
from headstart.objectives.pair_similarity import PairSimilarity
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.full import finetuned
from headstart.readouts.registry import ReadoutEntry, register


def contrastive_pairs(labels: np.ndarray, per_example: int, seed: int) -> np.ndarray:
    """Rows (first, second, same): for each example, ``per_example`` times, one partner of its own
    class (another example where there is one) and one of another class; shuffled."""
    rng = np.random.default_rng([seed, 3])
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    others = {c: np.flatnonzero(labels != c) for c in by_class}
    if any(len(rows) == 0 for rows in others.values()):
        raise HeadstartError("readout=setfit: the budget holds one class only; expected examples of at least two")
    pairs = []
    for _ in range(per_example):
        for i, label in enumerate(labels):
            same = by_class[label][by_class[label] != i]
            pairs.append((i, rng.choice(same) if len(same) else i, 1))
            pairs.append((i, rng.choice(others[label]), 0))
    return rng.permutation(np.array(pairs, dtype=np.int64))


class PairBatches:
    """Batches of pairs by position in the shuffled list (wrapping), each side collated by the task."""

    def __init__(self, pairs: np.ndarray, collate: Callable[[list[int]], dict[str, torch.Tensor]]) -> None:
        self.pairs, self.collate = pairs, collate

    def batch(self, first: int, count: int) -> dict[str, Any]:
        rows = self.pairs[np.arange(first, first + count) % len(self.pairs)]
        side = lambda column: {k: v for k, v in self.collate(rows[:, column].tolist()).items() if k != "label"}  # noqa: E731
        return {"first": side(0), "second": side(1), "same": torch.from_numpy(rows[:, 2])}


def setfit(ft: Finetuning) -> Outcome:
    config, task = ft.config, ft.task
    pairs = contrastive_pairs(ft.fit_set.labels, config.setfit_pairs, config.train.seed)
    steps = math.ceil(len(pairs) / (config.train.batch_size * config.train.grad_accum))
    config = replace(config, train=replace(config.train, steps=steps, eval_every=min(config.train.eval_every, steps)))
    examples = task.size(ft.fit_set)
    ft.console.print(f"setfit: {len(pairs):,} pairs from {examples} examples, {steps} steps", highlight=False)
    source = PairBatches(pairs, task.collate(ft.fit_set))
    objective = PairSimilarity(config.pooling)
    return finetuned(ft, ft.model, ft.fit_set, config, objective=objective, source=source, probe_each_eval=True)


register(ReadoutEntry("setfit", setfit, task_kinds=("classify",)))
