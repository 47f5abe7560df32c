"""Translation as conditional language modelling: next-token cross-entropy on the target
side only (the source positions have the target ``IGNORE``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.objectives.tag import IGNORE


class TargetLM:
    """Next-token cross-entropy on the target side only."""

    name = "translate"
    head_fraction = 1.0

    def make_batch(self, raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return raw

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["input"], batch["mask"]).float()
        return F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=IGNORE), {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum())
