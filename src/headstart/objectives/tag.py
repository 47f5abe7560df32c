"""Per-token targets: cross-entropy over the positions that carry one — a word's first
sub-word when tagging entities, the target side when translating; every other position has
the target ``IGNORE``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.objectives.base import Objective

IGNORE = -100  # the target of tokens that carry no label (later sub-words, the start marker, the source)


class TokenTargets(Objective):
    def __init__(self, name: str, head_fraction: float) -> None:
        self.name = name
        self.head_fraction = head_fraction  # 0 for a small tag head, 1 when the vocabulary is scored

    def make_batch(self, raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return raw

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["input"], batch["mask"]).float()
        return F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=IGNORE), {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum())
