"""The networks around a backbone that only a pretraining objective reads: ELECTRA's generator
and detection head, SimCSE's sentence projection, SimCLR's projection head and MAE's pixel
decoder. Each keeps the backbone that fine-tuning starts from as ``backbone``
(``models.backbone_of``)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from headstart.config import ModelConfig
from headstart.errors import HeadstartError
from headstart.models.heads import Pooling, ProjectionHead, pool
from headstart.models.transformer import Block, Norm, Transformer, init_weights, rotary_table, run_blocks
from headstart.models.vision import VisionTransformer


class ElectraPair(nn.Module):
    """The discriminator (the backbone), a detection head, and the generator sharing its embedding.

    ``forward`` and ``logits`` are the discriminator's, so the pair stands in for the backbone
    wherever a model is expected (evaluation, checkpoints).
    """

    def __init__(self, discriminator: Transformer, generator_layers: int) -> None:
        super().__init__()
        config = discriminator.config
        if not 1 <= generator_layers <= config.n_layer:
            raise HeadstartError(
                f"objective.generator_layers={generator_layers}: expected 1 to model.n_layer={config.n_layer}"
            )
        self.config = config
        self.discriminator = discriminator
        self.generator = Transformer(replace(config, n_layer=generator_layers, tie_embeddings=True))
        self.generator.embed = discriminator.embed  # shared token embedding, as in ELECTRA
        self.detect = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.detect.weight, 0.0, config.init_std)
        nn.init.zeros_(self.detect.bias)

    @property
    def backbone(self) -> Transformer:
        """The discriminator: what fine-tuning starts from."""
        return self.discriminator

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.discriminator(idx, padding_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.discriminator.logits(hidden)


class SentenceEncoder(nn.Module):
    """A text backbone, pooled over real tokens, and SimCSE's MLP (dense + tanh) that only the
    loss reads; ``backbone`` is what fine-tuning and ``embed`` use."""

    def __init__(self, backbone: nn.Module, pooling: Pooling = "mean") -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        width = backbone.config.n_embd
        self.projection = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool(self.backbone(ids, padding_mask=mask), mask, self.pooling)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.embed(ids, mask))


class ContrastiveModel(nn.Module):
    """A backbone and the projection head its contrastive loss reads; ``backbone`` is what
    fine-tuning starts from."""

    def __init__(self, backbone: nn.Module, hidden: int = 512, out: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.feature_dim, hidden, out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(images))


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
