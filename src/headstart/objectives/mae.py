"""Masked autoencoding for images (MAE; He et al. 2022): hide most patches, encode only the
visible ones with the ViT, and let a light decoder reconstruct the hidden patches' pixels.

The encoder never sees mask tokens — that is what makes MAE cheap: at a 75% mask ratio the
encoder processes a quarter of the patches. The loss is on the masked patches only, against
pixels normalised per patch (the paper's better-transferring target).
"""

from __future__ import annotations

import torch
from torch import nn

from headstart.config import ModelConfig
from headstart.data.augment import to_float
from headstart.errors import HeadstartError
from headstart.models.transformer import Block, Norm, init_weights, rotary_table, run_blocks
from headstart.models.vision import VisionTransformer


class MaskedAutoencoder(nn.Module):
    """The ViT (``backbone``, what fine-tuning starts from) and a pixel decoder."""

    def __init__(self, backbone: VisionTransformer, width: int = 64, depth: int = 2, n_head: int = 4) -> None:
        super().__init__()
        self.backbone = backbone
        n = backbone.n_patches
        blocks = ModelConfig(
            causal=False, vocab_size=1, n_layer=depth, n_head=n_head, n_embd=width, context=n + 1, norm="layernorm",
            mlp="gelu",
        )  # fmt: skip
        self.to_decoder = nn.Linear(backbone.feature_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(Block(blocks) for _ in range(depth))
        self.norm = Norm(width, "layernorm")
        self.to_pixels = nn.Linear(width, backbone.config.channels * backbone.config.patch**2)
        self.register_buffer("rotation", rotary_table(width // n_head, n + 1, 10000.0), persistent=False)
        init_weights(self.blocks, 0.02, depth)
        nn.init.normal_(self.mask_token, 0.0, 0.02)

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, N, C·p·p) of every patch, from the patches at ``keep`` (B, K)."""
        tokens = self.backbone.patch_tokens(images)
        b, n, d = tokens.shape
        visible = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))
        encoded = self.to_decoder(self.backbone.encode(visible, keep))
        width = encoded.size(-1)
        patches = self.mask_token.to(encoded.dtype).expand(b, n, width).clone()  # bf16 under autocast
        patches.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, width), encoded[:, 1:])
        x = torch.cat([encoded[:, :1], patches], 1)
        return self.to_pixels(run_blocks(self.blocks, self.norm, x, self.rotation, None)[-1][:, 1:])


class MAE:
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
