"""What every objective provides to the one training loop."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Objective(Protocol):
    """Turns a window of token ids into a batch, and a batch into (loss, metrics).

    ``make_batch`` receives a generator seeded from the step, so any randomness (masking)
    is a pure function of the step: resume needs no replay.

    An objective with ``chunk`` > 0 back-propagates itself (GradCache, for large contrastive
    batches): the loop calls ``backward_loss(model, batch, scale)`` instead of ``loss``.

    Split across processes (``train/distributed.py``), a loss that is a mean over a varying
    number of terms says how many a batch has with ``terms(batch)``; one whose samples are
    compared with each other (contrastive negatives) sets ``couples_batch = True``.
    """

    name: str
    #: fraction of positions whose logits are computed (masked LM scores only masked ones)
    head_fraction: float

    def make_batch(self, windows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Input tokens the batch processes (for tokens/s)."""
        ...
