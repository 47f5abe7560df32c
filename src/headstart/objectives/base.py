"""What every objective provides to the one training loop, and the capabilities it may declare."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Objective:
    """Turns samples into a batch, and a batch into (loss, metrics).

    ``make_batch`` receives a generator seeded from the step, so any randomness (masking,
    augmentation) is a pure function of the step: resume needs no replay. Subclasses set the
    class attributes below where they differ from the defaults; the loop reads them directly.
    """

    #: the registry name (config ``objective.name``) or the task's
    name: str = ""
    #: fraction of positions whose vocabulary logits are computed (masked LM scores only masked ones)
    head_fraction: float = 0.0
    #: what throughput counts: tokens (``tok``) or images (``img``)
    unit: str = "tok"
    #: > 0: GradCache, this many examples per forward; the loop calls ``backward_loss`` instead of ``loss``
    chunk: int = 0
    #: the loss compares each sample with the rest of the batch (contrastive negatives), so it
    #: cannot be split across processes
    couples_batch: bool = False
    #: its validation loss is a token-level cross-entropy, so perplexity means something
    reports_perplexity: bool = True

    def make_batch(self, samples: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Input units the batch processes (tokens, or images), for throughput and FLOPs."""
        raise NotImplementedError

    def terms(self, batch: dict[str, torch.Tensor]) -> int | None:
        """How many terms the loss averages over, when that varies by batch (masked LM's selected
        positions), so ranks of a distributed run weigh their losses into the global mean;
        None: a fixed number per sample."""
        return None

    def backward_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss, already back-propagated times ``scale`` (objectives with ``chunk`` > 0)."""
        raise NotImplementedError(f"objective {self.name}: chunk > 0 needs backward_loss")
