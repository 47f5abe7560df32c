"""Task heads on top of a backbone's hidden states: pooling and sequence classification."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from headstart.errors import HeadstartError

Pooling = Literal["mean", "cls", "last", "max"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """(B, T, D) hidden states and a (B, T) real-token mask → (B, D).

    ``cls`` takes the first position, ``last`` the last real token (what a decoder has seen
    the whole sequence by), ``mean`` and ``max`` run over real tokens only.
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    raise HeadstartError(f"pooling={how!r}: expected one of mean, cls, last, max")


@torch.no_grad()
def head_logits(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """A linear head applied to float32 CPU features (scoring gathers features there first)."""
    return features @ head.weight.detach().float().cpu().T + head.bias.detach().float().cpu()


class SequenceClassifier(nn.Module):
    """A backbone, a pooling and a linear classifier: the model a classification fine-tune trains."""

    def __init__(self, backbone: nn.Module, n_classes: int, pooling: Pooling = "mean", dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        width = backbone.config.n_embd
        self.head = nn.Linear(width, n_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(idx, padding_mask=mask)
        return self.head(self.dropout(pool(hidden, mask, self.pooling)))


class ProjectionHead(nn.Module):
    """The MLP a contrastive loss reads (SimCLR's g): Linear → BatchNorm → ReLU → Linear.
    Fine-tuning and probes use the features before it, which transfer better (Chen et al. 2020)."""

    def __init__(self, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
