"""Deterministic, seekable batches of whole examples (labelled records, images, sentences).

Each epoch visits every example once in a fresh seeded permutation; sample i is a pure
function of (seed, i), so resuming at any step replays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from headstart.errors import HeadstartError

Batch = TypeVar("Batch")


class ExampleBatches(Generic[Batch]):
    """Seeded epoch permutations over n examples; sample i is a pure function of (seed, i), so a
    resumed run replays nothing. ``collate`` turns rows into what the objective's make_batch takes."""

    def __init__(self, n: int, collate: Callable[[list[int]], Batch], seed: int) -> None:
        if n < 1:
            raise HeadstartError("no training examples: expected at least one")
        self.n, self.collate, self.seed = n, collate, seed
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def batch(self, first: int, count: int) -> Batch:
        rows = []
        for index in range(first, first + count):
            epoch, position = divmod(index, self.n)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
            rows.append(int(self._order[position]))
        return self.collate(rows)
