"""Backbones. Token models, the transformer and Mamba, are built here from a ``ModelConfig``
by its ``kind``; image models by :func:`headstart.models.vision.build_vision`."""

from __future__ import annotations

from torch import nn

from headstart.config import ModelConfig
from headstart.models import mamba, transformer
from headstart.models.mamba import Mamba
from headstart.models.transformer import Transformer

TextBackbone = Transformer | Mamba


def resolve(config: ModelConfig) -> ModelConfig:
    """The shape checked and completed for its kind (a named size applied, Mamba's dt_rank filled)."""
    return mamba.resolve(config) if config.kind == "mamba" else transformer.resolve(config)


def build_backbone(config: ModelConfig) -> TextBackbone:
    """The one place a token model is made from its config."""
    return Mamba(config) if config.kind == "mamba" else Transformer(config)


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone that fine-tuning starts from: the ``backbone`` of a network an objective built
    around one (ELECTRA's is its discriminator), or the model itself."""
    return getattr(model, "backbone", model)
