"""Masked autoencoding for images (MAE; He et al. 2022): hide most patches, encode only the
visible ones with the ViT, and let a light decoder reconstruct the hidden patches' pixels.

The encoder never sees mask tokens — that is what makes MAE cheap: at a 75% mask ratio the
encoder processes a quarter of the patches. The loss is on the masked patches only, against
pixels normalised per patch (the paper's better-transferring target).
"""

from __future__ import annotations

import torch
from torch import nn

from headstart.data.augment import to_float
from headstart.errors import HeadstartError
from headstart.objectives.base import Objective


class MAE(Objective):
    name = "mae"
    head_fraction = 0.0
    unit = "img"  # throughput counts images

    def __init__(self, n_patches: int, mask_ratio: float = 0.75, norm_pixels: bool = True) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise HeadstartError(f"objective.mask_ratio={mask_ratio}: expected a fraction between 0 and 1")
        self.n_patches = n_patches
        self.n_keep = max(1, round(n_patches * (1.0 - mask_ratio)))
        self.norm_pixels = norm_pixels

    def make_batch(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A random subset of ``n_keep`` patches per image stays visible; the rest are masked."""
        batch = to_float(images)
        order = torch.rand(batch.size(0), self.n_patches, generator=generator).argsort(1)
        keep = order[:, : self.n_keep].sort(1).values
        masked = torch.ones(batch.size(0), self.n_patches, dtype=torch.bool)
        masked.scatter_(1, keep, False)
        return {"images": batch, "keep": keep, "masked": masked}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        predicted = model(batch["images"], batch["keep"]).float()
        target = model.backbone.patchify(batch["images"]).float()
        if self.norm_pixels:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (predicted - target).pow(2).mean(-1)
        masked = batch["masked"].float()
        return (per_patch * masked).sum() / masked.sum(), {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["images"].size(0)
