"""SetFit's contrastive fine-tuning loss (Tunstall et al. 2022): the cosine similarity of two
texts' pooled embeddings, regressed onto 1 when they share a class and 0 when they do not. It
trains the backbone only; a head is fitted on the embeddings afterwards."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from headstart.models.heads import Pooling, pool
from headstart.objectives.base import Objective


class PairSimilarity(Objective):
    name = "pair-similarity"
    reports_perplexity = False

    def __init__(self, pooling: Pooling = "mean") -> None:
        self.pooling = pooling

    def make_batch(self, raw: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        return raw

    def embed(self, model: nn.Module, side: dict[str, torch.Tensor]) -> torch.Tensor:
        return pool(model.backbone(side["input"], padding_mask=side["mask"]), side["mask"], self.pooling).float()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        similarity = F.cosine_similarity(self.embed(model, batch["first"]), self.embed(model, batch["second"]))
        return F.mse_loss(similarity, batch["same"].float()), {"similarity": similarity.mean().detach()}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["first"]["mask"].sum() + batch["second"]["mask"].sum())
