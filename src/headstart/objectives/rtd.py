"""Replaced-token detection (ELECTRA, Clark et al. 2020): a small generator fills masked
positions with plausible tokens, and the model being pretrained (the discriminator) learns,
at *every* position, whether the token is original or replaced.

Every token gives the discriminator a training signal (masked LM learns from 15%), which is
why ELECTRA is the most compute-efficient objective at small scale. The generator is a
shallower transformer of the same width sharing the token embedding; only the discriminator
is the backbone that fine-tuning starts from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.objectives.base import Objective
from headstart.objectives.mlm import MaskedLM


def default_generator_layers(n_layer: int) -> int:
    """A third of the discriminator's depth: ELECTRA finds a generator 1/4–1/2 the size works best."""
    return max(1, n_layer // 3)


class ReplacedTokenDetection(Objective):
    name = "rtd"
    head_fraction = 0.0  # the discriminator scores one logit per token, not the vocabulary
    reports_perplexity = False

    def __init__(
        self,
        vocab_size: int,
        mask_id: int,
        special_ids: Sequence[int],
        mask_prob: float = 0.15,
        word_start: np.ndarray | None = None,
        detection_weight: float = 50.0,
    ) -> None:
        self.masking = MaskedLM(vocab_size, mask_id, special_ids, mask_prob, word_start)
        self.mask_id = mask_id
        self.detection_weight = detection_weight

    def make_batch(self, windows: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """All selected positions become ``<mask>`` for the generator; ``noise`` fixes its sample."""
        tokens = windows[:, :-1]
        selected = self.masking.select(tokens, generator)
        noise = torch.rand(tokens.shape, generator=generator)
        return {"input": torch.where(selected, self.mask_id, tokens), "target": tokens, "selected": selected,
                "noise": noise}  # fmt: skip

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pair = getattr(model, "_orig_mod", model)  # the compiled wrapper's module, for its parts
        selected, target = batch["selected"], batch["target"]
        generator_hidden = pair.generator(batch["input"])
        generator_logits = pair.generator.logits(generator_hidden[selected]).float()
        masked_target = target[selected]
        if masked_target.numel():
            generator_loss = F.cross_entropy(generator_logits, masked_target)
        else:
            generator_loss = generator_hidden.sum() * 0.0
        with torch.no_grad():  # sample replacements by inverse CDF of the generator's distribution
            cumulative = generator_logits.softmax(-1).cumsum(-1)
            draw = batch["noise"][selected].unsqueeze(-1) * cumulative[:, -1:]
            sampled = torch.searchsorted(cumulative, draw).squeeze(-1).clamp(max=cumulative.size(-1) - 1)
            corrupted = target.clone()
            corrupted[selected] = sampled
            replaced = (corrupted != target).float()
        detection_logits = pair.detect(model(corrupted)).squeeze(-1).float()
        detection_loss = F.binary_cross_entropy_with_logits(detection_logits, replaced)
        loss = generator_loss + self.detection_weight * detection_loss
        with torch.no_grad():
            detection_accuracy = ((detection_logits > 0).float() == replaced).float().mean()
            generator_accuracy = (
                (generator_logits.argmax(-1) == masked_target).float().mean() if masked_target.numel() else loss * 0
            )
        return loss, {
            "detection_loss": detection_loss.detach(),
            "detection_accuracy": detection_accuracy,
            "generator_accuracy": generator_accuracy,
            "replaced_fraction": replaced.mean(),
        }

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input"].numel()
