"""What a fine-tuning task provides to ``finetune``: the one loop and the study stay task-agnostic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from headstart.objectives.base import Objective


class Task(Protocol):
    #: the score that early stopping, the sweep and the study use (higher is better)
    metric: str
    #: whether to score the reported set at every evaluation too (for metric-vs-step curves)
    track_eval: bool
    objective: Objective

    def read(self) -> None:
        """Read the train and eval files (the eval labels must lie in the train label set)."""
        ...

    @property
    def strata(self) -> np.ndarray:
        """One class per training record: what label budgets are stratified on."""
        ...

    def encode(self, tokenizer: Tokenizer, split: str, rows: np.ndarray | None = None) -> Any:
        """Records of ``split`` ("train" or "eval", ``rows`` of it) as model inputs and targets."""
        ...

    def build_model(self, backbone: nn.Module, pooling: str) -> nn.Module:
        """The backbone with this task's head (a ``head`` linear layer)."""
        ...

    def collate(self, encoded: Any, pad_id: int) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        """Rows of ``encoded`` → a padded training batch for ``objective``."""
        ...

    def size(self, encoded: Any) -> int: ...

    def features(self, model: nn.Module, encoded: Any, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-backbone features and their targets, for the logistic probe."""
        ...

    def score(self, model: nn.Module, encoded: Any, pad_id: int, final: bool = False) -> dict[str, float]:
        """The task's metrics on ``encoded`` (``metric`` among them); ``final``: the reported score
        (a task may score a cheaper way while training, e.g. greedy decoding of a subset)."""
        ...


class ExampleBatches:
    """Seeded epoch permutations over n examples; sample i is a pure function of (seed, i)."""

    def __init__(self, n: int, collate: Callable[[list[int]], dict[str, torch.Tensor]], seed: int) -> None:
        self.n, self.collate, self.seed = n, collate, seed
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def batch(self, first: int, count: int) -> dict[str, torch.Tensor]:
        rows = []
        for index in range(first, first + count):
            epoch, position = divmod(index, self.n)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
            rows.append(int(self._order[position]))
        return self.collate(rows)


def length_batches(lengths: list[int], batch_size: int = 64) -> list[np.ndarray]:
    """Row groups sorted by length, so inference spends little on padding."""
    order = np.argsort(lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
