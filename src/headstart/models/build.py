"""The one place a pretraining config becomes the network its run trains, for text and images,
and the backbone inside it that fine-tuning, probes and export start from."""

from __future__ import annotations

from torch import nn

from headstart.config import PretrainConfig
from headstart.models import build_backbone
from headstart.models.pretraining import ContrastiveModel, ElectraPair, MaskedAutoencoder, SentenceEncoder
from headstart.models.vision import VisionTransformer, build_vision


def build_model(config: PretrainConfig) -> nn.Module:
    """What the loop trains: the backbone (``model.kind`` for text, ``vision.kind`` for images)
    with what its objective adds around it."""
    objective = config.objective
    if config.data.images:
        vision = build_vision(config.vision)
        if objective.name == "mae":
            assert isinstance(vision, VisionTransformer)
            return MaskedAutoencoder(vision, objective.decoder_width, objective.decoder_depth, config.vision.n_head)
        return ContrastiveModel(vision, objective.projection_hidden, objective.projection_dim)
    backbone = build_backbone(config.model)
    if objective.name == "rtd":
        return ElectraPair(backbone, objective.generator_layers)
    if objective.name == "simcse":
        return SentenceEncoder(backbone)
    return backbone


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone that fine-tuning starts from: ELECTRA's discriminator, the ``backbone`` of a
    network built around one, or the model itself."""
    if isinstance(model, ElectraPair):
        return model.discriminator
    return getattr(model, "backbone", model)
