"""What every fine-tuning mode receives (one cell: an init, a task, a budget, a seed) and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from tokenizers import Tokenizer
from torch import nn

from headstart.config import FinetuneConfig
from headstart.errors import HeadstartError
from headstart.tasks import Task
from headstart.train.checkpoint import open_checkpoint


def load_backbone(config: FinetuneConfig) -> tuple[nn.Module, Tokenizer | None]:
    """The pretrained backbone, or the same architecture freshly initialised from the seed; and
    the checkpoint's tokenizer (None for an image checkpoint). Dropout off: a few labels."""
    source = config.architecture if config.init == "scratch" else config.init
    if not source:
        raise HeadstartError("architecture: init=scratch needs a checkpoint whose shape and tokenizer to copy")
    torch.manual_seed(config.train.seed)
    opened = open_checkpoint(source, weights=config.init != "scratch", dropout=0.0)
    return opened.backbone, opened.tokenizer


@dataclass
class Finetuning:
    """One cell: its config, the task, the model (backbone + head), the budget's fit and held-out
    parts (the held-out part picks steps and candidates), the reported set, the budget's rows of
    the training split, and what a forward pass costs per unit (token, image)."""

    config: FinetuneConfig
    task: Task
    model: nn.Module
    fit_set: Any
    held_set: Any
    eval_set: Any
    chosen: np.ndarray
    forward_flops: float
    run_dir: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))
    quiet: bool = False

    def unlabelled_set(self) -> Any:
        """The training examples outside the budget (``config.unlabelled`` of them, drawn per seed,
        when it is positive), encoded; what they are labelled as is never read."""
        pool = np.setdiff1d(np.arange(len(self.task.strata)), self.chosen)
        if self.config.unlabelled > 0:
            pool = np.random.default_rng([self.config.train.seed, 2]).permutation(pool)[: self.config.unlabelled]
        return self.task.encode("train", pool)

    def features_flops(self, *parts: Any) -> float:
        """Forward FLOPs of embedding every example of ``parts``."""
        return self.forward_flops * sum(self.task.units(part) for part in parts)

    def fresh_model(self) -> nn.Module:
        """The same init again, with a new head: where a student starts."""
        return self.task.build_model(load_backbone(self.config)[0], self.config.pooling)


@dataclass
class Outcome:
    """What a mode reports: metrics on the reported set (with the weights it chose), the step it
    chose and its validation score there, the steps it trained, and the FLOPs it spent."""

    metrics: dict[str, float]
    best_val: float
    flops: float
    best_step: int = 0
    steps: int = 0
