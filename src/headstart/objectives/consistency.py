"""Consistency training on unlabelled examples (FixMatch, Sohn et al. 2020; UDA, Xie et al.
2020): beside the budget's cross-entropy, each unlabelled example is seen twice — a weak view
whose confident prediction (≥ ``threshold``) becomes a hard pseudo-label, and a strong view
trained towards it. Images: flips and crops against heavy colour, blur and cutout; text: the
clean sentence against one with tokens masked or replaced. The unlabelled examples' own labels
are never read: their batches carry none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from headstart.objectives.base import Objective

View = Callable[[Any, torch.Generator], dict[str, torch.Tensor]]


def logits_of(model: nn.Module, view: dict[str, torch.Tensor]) -> torch.Tensor:
    """Class scores of a view: token ids with their mask, or images."""
    return (model(view["input"], view["mask"]) if "mask" in view else model(view["input"])).float()


def noised_tokens(
    ids: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, prob: float, mask_id: int, vocab: int
) -> torch.Tensor:
    """``ids`` with each real token after the first masked (half of the chosen) or replaced by a
    random token (the other half), each with probability ``prob``."""
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & mask
    chosen[:, 0] = False  # the start token stays
    masked = chosen & (torch.rand(ids.shape, generator=generator) < 0.5)
    random = torch.randint(0, vocab, ids.shape, generator=generator)
    return torch.where(masked, torch.full_like(ids, mask_id), torch.where(chosen, random, ids))


def cutout(images: torch.Tensor, generator: torch.Generator, fraction: float = 0.5) -> torch.Tensor:
    """Each image with a square of side ``fraction`` × its side set to grey, at a random place."""
    n, _, height, width = images.shape
    side = max(1, int(fraction * min(height, width)))
    top = torch.randint(0, height - side + 1, (n,), generator=generator)
    left = torch.randint(0, width - side + 1, (n,), generator=generator)
    rows, cols = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))  # fmt: skip
    return images.masked_fill(inside[:, None], 0.5)


class Consistency(Objective):
    """The task's own loss on the labelled batch plus ``weight`` × the pseudo-label loss on the
    unlabelled one. ``weak`` and ``strong`` turn a raw unlabelled batch into a view each."""

    def __init__(
        self, supervised: Objective, weak: View, strong: View, threshold: float = 0.95, weight: float = 1.0
    ) -> None:
        self.supervised, self.weak, self.strong = supervised, weak, strong
        self.threshold, self.weight = threshold, weight
        self.name, self.unit = f"{supervised.name}+consistency", supervised.unit

    def make_batch(self, raw: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        return {
            "labelled": self.supervised.make_batch(raw["labelled"], generator),
            "weak": self.weak(raw["unlabelled"], generator),
            "strong": self.strong(raw["unlabelled"], generator),
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        supervised, metrics = self.supervised.loss(model, batch["labelled"])
        with torch.no_grad():
            confidence, pseudo = logits_of(model, batch["weak"]).softmax(-1).max(-1)
        confident = (confidence >= self.threshold).float()
        per_example = F.cross_entropy(logits_of(model, batch["strong"]), pseudo, reduction="none")
        unlabelled = (per_example * confident).mean()
        extra = {**metrics, "unlabelled_loss": unlabelled.detach(), "confident": confident.mean()}
        return supervised + self.weight * unlabelled, extra

    def tokens(self, batch: dict[str, Any]) -> int:
        """Units trained on: the labelled batch and the strong views; the weak views' forward
        pass (no backward) counts a third."""
        view = batch["strong"]
        strong = int(view["mask"].sum()) if "mask" in view else len(view["input"])
        return self.supervised.tokens(batch["labelled"]) + strong + strong // 3


class NoisedInputs(Objective):
    """The task's loss on a noised view of each input (``strong``): a noisy student's training."""

    def __init__(self, supervised: Objective, strong: View) -> None:
        self.supervised, self.strong = supervised, strong
        self.name, self.unit = f"{supervised.name}+noise", supervised.unit

    def make_batch(self, raw: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {**self.supervised.make_batch(raw, generator), **self.strong(raw, generator)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.supervised.loss(model, batch)

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.supervised.tokens(batch)
