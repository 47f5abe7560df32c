"""Contrastive objectives: two views of each example should match each other against every
other example in the batch (InfoNCE / NT-Xent; Oord et al. 2018, Chen et al. 2020).

- ``SimCLR``: two random augmentations of each image, through the backbone and a projection
  head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.data.augment import augment, to_float
from headstart.models.heads import ProjectionHead


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over 2B embeddings: for each, its pair is the positive and the other 2B − 2 are
    negatives; cosine similarity / temperature. Returns (loss, accuracy of picking the pair)."""
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    n = first.size(0)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(logits, target)
    accuracy = (logits.argmax(1) == target).float().mean()
    return loss, accuracy


class ContrastiveModel(nn.Module):
    """A backbone and the projection head its contrastive loss reads; ``backbone`` is what
    fine-tuning starts from."""

    def __init__(self, backbone: nn.Module, hidden: int = 512, out: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.feature_dim, hidden, out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(images))


class SimCLR:
    name = "simclr"
    head_fraction = 0.0
    unit = "img"  # throughput counts images

    def __init__(self, views: nn.Module, temperature: float = 0.2) -> None:
        self.views = views
        self.temperature = temperature

    def make_batch(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, C) images → two augmented float views, drawn from the step's generator."""
        batch = to_float(images)
        seeds = torch.randint(0, 2**62, (2,), generator=generator).tolist()
        return {"first": augment(self.views, batch, seeds[0]), "second": augment(self.views, batch, seeds[1])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Each view through the model alone: batch-norm statistics shared across the two views
        # would let the network match pairs by batch composition instead of content.
        loss, accuracy = nt_xent(model(batch["first"]), model(batch["second"]), self.temperature)
        return loss, {"pair_accuracy": accuracy.detach()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["first"].size(0)
