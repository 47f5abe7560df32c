"""What a fine-tuning task provides to ``finetune``: the one loop and the study stay task- and
modality-agnostic (text tasks hold their tokenizer, image tasks need none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from headstart.config import TaskConfig
from headstart.data.tokenizers import tokenizer_info
from headstart.errors import HeadstartError
from headstart.objectives.base import Objective


class Task(Protocol):
    #: the score that early stopping, the sweep and the study use (higher is better)
    metric: str
    #: whether to score the reported set at every evaluation too (for metric-vs-step curves)
    track_eval: bool
    objective: Objective

    def read(self) -> None:
        """Read the train and eval data (the eval labels must lie in the train label set)."""
        ...

    @property
    def strata(self) -> np.ndarray:
        """One class per training record: what label budgets are stratified on."""
        ...

    def encode(self, split: str, rows: np.ndarray | None = None) -> Any:
        """Records of ``split`` ("train" or "eval", ``rows`` of it) as model inputs and targets."""
        ...

    def build_model(self, backbone: nn.Module, pooling: str) -> nn.Module:
        """The backbone with this task's head (a ``head`` linear layer)."""
        ...

    def collate(self, encoded: Any) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        """Rows of ``encoded`` → a training batch for ``objective``."""
        ...

    def size(self, encoded: Any) -> int: ...

    def units(self, encoded: Any) -> int:
        """What the backbone processes for ``encoded`` (tokens, or images), for FLOP counts."""
        ...

    def features(self, model: nn.Module, encoded: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-backbone features and their targets, for the logistic probe."""
        ...

    def score(self, model: nn.Module, encoded: Any, final: bool = False) -> dict[str, float]:
        """The task's metrics on ``encoded`` (``metric`` among them); ``final``: the reported score
        (a task may score a cheaper way while training, e.g. greedy decoding of a subset)."""
        ...


class TextTask:
    """What the text tasks share: the checkpoint's tokenizer and its padding id."""

    def __init__(self, config: TaskConfig, tokenizer: Tokenizer | None) -> None:
        if tokenizer is None:
            raise HeadstartError(f"task.kind={config.kind}: expected a text checkpoint (with a tokenizer.json)")
        self.config, self.tokenizer = config, tokenizer
        self.pad_id = tokenizer_info(tokenizer).pad_id

    def units(self, encoded: Any) -> int:
        return sum(len(ids) for ids in encoded.ids)


def length_batches(lengths: list[int], batch_size: int = 64) -> list[np.ndarray]:
    """Row groups sorted by length, so inference spends little on padding."""
    order = np.argsort(lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
