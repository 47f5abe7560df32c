"""Causal language modelling: predict every next token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.objectives.base import Objective


class CausalLM(Objective):
    name = "clm"
    head_fraction = 1.0

    def make_batch(self, windows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Windows hold seq_len + 1 tokens: inputs are the first seq_len, targets are shifted by one."""
        return {"input": windows[:, :-1], "target": windows[:, 1:]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model.logits(model(batch["input"]))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten())
        return loss, {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input"].numel()
