"""Image backbones: a small ResNet and a ViT built from the text transformer's blocks.

Both map float images (B, C, H, W) in [0, 1] to feature maps and pool them to one vector per
image (``forward``), so the objectives, probes and fine-tuning treat them alike. The ViT also
exposes its patch tokens (``patch_tokens`` / ``encode``) for masked autoencoding, which drops
most patches before the encoder sees them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from headstart.config import ModelConfig, VisionConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import Block, Norm, init_weights, rotary_table, run_blocks

ImagePooling = Literal["avg", "max", "cls"]


def pool_tokens(tokens: torch.Tensor, how: ImagePooling) -> torch.Tensor:
    """(B, 1 + N, D) class token and patch tokens → (B, D)."""
    if how == "cls":
        return tokens[:, 0]
    patches = tokens[:, 1:]
    return patches.mean(1) if how == "avg" else patches.amax(1)


def pool_map(features: torch.Tensor, how: ImagePooling) -> torch.Tensor:
    """(B, D, H, W) feature map → (B, D): global average or max."""
    if how == "cls":
        raise HeadstartError("pooling=cls: only the ViT has a class token; use avg or max for a ResNet")
    return features.mean((2, 3)) if how == "avg" else features.amax((2, 3))


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the (projected) input."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity (Goyal et al. 2017)
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet for small images: a 3×3 stem (stride ``stem_stride``), three stages
    (the last two halve the resolution), global pooling."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.width, 2 * config.width, 4 * config.width]
        self.stem = nn.Sequential(
            nn.Conv2d(config.channels, widths[0], 3, config.stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks, inputs = [], widths[0]
        for stage, outputs in enumerate(widths):
            for index in range(config.depth):
                blocks.append(BasicBlock(inputs, outputs, 2 if stage and not index else 1))
                inputs = outputs
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pool_map(self.blocks(self.stem(images)), self.config.pooling)


class VisionTransformer(nn.Module):
    """Patches → linear embedding → [class token, patches] → the text transformer's blocks
    (bidirectional, rotary positions over the raster order) → norm."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.image_size % config.patch:
            raise HeadstartError(f"vision.patch={config.patch}: must divide the image size {config.image_size}")
        self.config = config
        self.grid = config.image_size // config.patch
        self.n_patches = self.grid**2
        blocks = ModelConfig(
            causal=False,
            vocab_size=1,
            n_layer=config.depth,
            n_head=config.n_head,
            n_embd=config.width,
            context=self.n_patches + 1,
            norm="layernorm",
            mlp="gelu",
        )
        self.patch_embed = nn.Linear(config.channels * config.patch**2, config.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.width))
        self.blocks = nn.ModuleList(Block(blocks) for _ in range(config.depth))
        self.norm = Norm(config.width, "layernorm")
        rotation = rotary_table(config.width // config.n_head, self.n_patches + 1, 10000.0)
        self.register_buffer("rotation", rotation, persistent=False)
        self.feature_dim = config.width
        init_weights(self.blocks, 0.02, config.depth)
        nn.init.normal_(self.patch_embed.weight, 0.0, 1.0 / math.sqrt(self.patch_embed.in_features))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls, 0.0, 0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, N, C·p·p), patches in raster order."""
        p = self.config.patch
        b, c, h, w = images.shape
        if (h, w) != (self.config.image_size, self.config.image_size) or c != self.config.channels:
            raise HeadstartError(
                f"images of {c}×{h}×{w}: this ViT takes {self.config.channels}×{self.config.image_size}×"
                f"{self.config.image_size}"
            )
        patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(b, (h // p) * (w // p), c * p * p)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, width): every patch embedded (before any masking)."""
        return self.patch_embed(self.patchify(images))

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, width) patch tokens (M ≤ N: MAE keeps a subset) at ``positions`` (B, M) in the
        raster order, with the class token prepended → (B, 1 + M, width), normed."""
        b, m, _ = tokens.shape
        if positions is None:
            positions = torch.arange(m, device=tokens.device).expand(b, m)
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], 1)
        index = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=tokens.device), positions + 1], 1)
        rotation = self.rotation[index].unsqueeze(1)  # (B, 1, 1 + M, head_dim/2, 2): per-row positions
        return run_blocks(self.blocks, self.norm, x, rotation, None)[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pool_tokens(self.encode(self.patch_tokens(images)), self.config.pooling)


def build_vision(config: VisionConfig) -> nn.Module:
    """The backbone ``config`` names; channels and image size must be filled (from the data)."""
    if config.channels < 1 or config.image_size < 1:
        raise HeadstartError("vision.channels and vision.image_size: expected positive sizes (from the data)")
    if config.kind == "resnet":
        return ResNet(config)
    if config.kind == "vit":
        return VisionTransformer(config)
    raise HeadstartError(f"model.kind={config.kind!r}: expected resnet or vit")
