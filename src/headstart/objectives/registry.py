"""Every pretraining objective, one entry each: its modality, the network it trains around the
backbone, how it is made from a config, and what the rest of headstart needs to know of it
(causal or not, which samples it reads, the transformer passes a token costs). Adding an
objective is its module plus one ``register`` call; nothing else dispatches on its name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from tokenizers import Tokenizer
from torch import nn

from headstart.config import ModelConfig, PretrainConfig
from headstart.data.augment import build_views
from headstart.data.tokenizers import tokenizer_info, word_start
from headstart.errors import HeadstartError
from headstart.models import build_backbone
from headstart.models.pretraining import ContrastiveModel, ElectraPair, MaskedAutoencoder, SentenceEncoder
from headstart.models.vision import VisionTransformer, build_vision
from headstart.objectives.base import Objective
from headstart.objectives.clm import CausalLM
from headstart.objectives.contrastive import SimCLR, SimCSE
from headstart.objectives.mae import MAE
from headstart.objectives.mlm import MaskedLM
from headstart.objectives.rtd import ReplacedTokenDetection, default_generator_layers

# (shape, share of tokens the vocabulary head scores, how many times) per training token
Passes = list[tuple[ModelConfig, float, float]]


def _as_is(backbone: nn.Module, config: PretrainConfig) -> nn.Module:
    return backbone


def _unchanged(config: PretrainConfig) -> PretrainConfig:
    return config


@dataclass(frozen=True)
class ObjectiveEntry:
    """One objective. ``make(config, tokenizer)`` builds it (the tokenizer is None for images);
    ``wrap(backbone, config)`` is the network the loop trains around the backbone; ``causal``:
    the text backbone is a decoder (True), an encoder (False), or as ``model.causal`` says
    (None); ``samples``: token windows, whole sentences, or images; ``passes``: the transformer
    passes one training token costs (text; images are counted by torch's FLOP counter);
    ``resolve`` fills settings the objective derives from the model; ``comparable_loss``: its
    validation loss measures the model (SimCSE's, without dropout, is trivial: probes do)."""

    name: str
    modality: Literal["text", "image"]
    make: Callable[[PretrainConfig, Tokenizer | None], Objective]
    wrap: Callable[[nn.Module, PretrainConfig], nn.Module] = _as_is
    causal: bool | None = None
    samples: Literal["windows", "sentences", "images"] = "windows"
    passes: Callable[[PretrainConfig], Passes] | None = None
    resolve: Callable[[PretrainConfig], PretrainConfig] = _unchanged
    comparable_loss: bool = True


OBJECTIVES: dict[str, ObjectiveEntry] = {}


def register(entry: ObjectiveEntry) -> ObjectiveEntry:
    OBJECTIVES[entry.name] = entry
    return entry


def objective_entry(name: str) -> ObjectiveEntry:
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(name, OBJECTIVES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise HeadstartError(f"objective.name={name}: expected one of {', '.join(OBJECTIVES)}{hint}")
    return OBJECTIVES[name]


def build_model(config: PretrainConfig) -> nn.Module:
    """What the loop trains: the backbone (``model`` for text, ``vision`` for images) with what
    its objective adds around it."""
    entry = objective_entry(config.objective.name)
    backbone = build_vision(config.vision) if entry.modality == "image" else build_backbone(config.model)
    return entry.wrap(backbone, config)


def build_objective(config: PretrainConfig, tokenizer: Tokenizer | None) -> Objective:
    return objective_entry(config.objective.name).make(config, tokenizer)


def masking(config: PretrainConfig, tokenizer: Tokenizer | None) -> dict:
    """What masked LM and ELECTRA draw their masks from."""
    assert tokenizer is not None
    info = tokenizer_info(tokenizer)
    return {
        "vocab_size": config.model.vocab_size,
        "mask_id": info.mask_id,
        "special_ids": info.special_ids,
        "mask_prob": config.objective.mask_prob,
        "word_start": word_start(tokenizer) if config.objective.whole_word else None,
    }


def _simcse(config: PretrainConfig, tokenizer: Tokenizer | None) -> Objective:
    assert tokenizer is not None
    return SimCSE(tokenizer_info(tokenizer).pad_id, config.objective.temperature, config.objective.chunk)


def _simclr(config: PretrainConfig, tokenizer: Tokenizer | None) -> Objective:
    vision = config.vision
    views = build_views((vision.image_size, vision.image_size), vision.channels, config.augment)
    return SimCLR(views, config.objective.temperature, config.objective.chunk)


def _mae_model(backbone: nn.Module, config: PretrainConfig) -> nn.Module:
    if not isinstance(backbone, VisionTransformer):
        raise HeadstartError("objective.name=mae: masked autoencoding needs vision.kind=vit")
    o = config.objective
    return MaskedAutoencoder(backbone, o.decoder_width, o.decoder_depth, config.vision.n_head)


def _rtd_layers(config: PretrainConfig) -> PretrainConfig:
    if config.objective.generator_layers:
        return config
    layers = default_generator_layers(config.model.n_layer)
    return replace(config, objective=replace(config.objective, generator_layers=layers))


def _rtd(config: PretrainConfig, tokenizer: Tokenizer | None) -> Objective:
    return ReplacedTokenDetection(**masking(config, tokenizer), detection_weight=config.objective.detection_weight)


def _rtd_passes(config: PretrainConfig) -> Passes:
    m, o = config.model, config.objective
    return [(m, 0.0, 1.0), (replace(m, n_layer=o.generator_layers), o.mask_prob, 1.0)]


register(ObjectiveEntry("clm", "text", lambda c, t: CausalLM(), causal=True, passes=lambda c: [(c.model, 1.0, 1.0)]))
register(
    ObjectiveEntry(
        "mlm", "text", lambda c, t: MaskedLM(**masking(c, t)), causal=False,
        passes=lambda c: [(c.model, c.objective.mask_prob, 1.0)],
    )
)  # fmt: skip
register(
    ObjectiveEntry(
        "rtd", "text", _rtd,
        wrap=lambda b, c: ElectraPair(b, c.objective.generator_layers), causal=False, passes=_rtd_passes,
        resolve=_rtd_layers,
    )
)  # fmt: skip
register(
    ObjectiveEntry(
        "simcse", "text", _simcse, wrap=lambda b, c: SentenceEncoder(b), samples="sentences",
        passes=lambda c: [(c.model, 0.0, 2 * (4 / 3 if c.objective.chunk > 0 else 1.0))], comparable_loss=False,
    )
)  # fmt: skip
register(
    ObjectiveEntry(
        "simclr", "image", _simclr, samples="images",
        wrap=lambda b, c: ContrastiveModel(b, c.objective.projection_hidden, c.objective.projection_dim),
    )
)  # fmt: skip
register(
    ObjectiveEntry(
        "mae", "image", lambda c, t: MAE((c.vision.image_size // c.vision.patch) ** 2, c.objective.mask_ratio),
        wrap=_mae_model, samples="images",
    )
)  # fmt: skip
