"""Token classification: cross-entropy over the tokens that carry a tag (a word's first
sub-word); every other position has the target ``IGNORE``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the target of tokens that carry no label (later sub-words, the start marker)


class TagTokens:
    """Cross-entropy over the tokens that carry a tag."""

    name = "tag"
    head_fraction = 0.0

    def make_batch(self, raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return raw

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["input"], batch["mask"]).float()
        loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=IGNORE)
        return loss, {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum())
