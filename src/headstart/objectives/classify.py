"""Classification objectives: a padded batch of token ids, or a batch of images, in;
cross-entropy over classes out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.data.augment import augment, to_float
from headstart.objectives.base import Objective


def pad_batch(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (ids, real-token mask)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = True
    return ids, mask


class Classify(Objective):
    name = "classify"
    head_fraction = 0.0  # no vocabulary projection

    def make_batch(self, raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return raw

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return cross_entropy_and_accuracy(model(batch["input"], batch["mask"]), batch["label"])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum())


class ImageClassify(Objective):
    """uint8 images in (made float here, and randomly cropped / flipped when ``views`` is given,
    with randomness drawn from the step's generator: resume needs no replay)."""

    name = "image-classify"
    head_fraction = 0.0
    unit = "img"  # throughput counts images

    def __init__(self, views: nn.Module | None = None) -> None:
        self.views = views

    def make_batch(self, raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = to_float(raw["input"])
        if self.views is not None:
            images = augment(self.views, images, int(torch.randint(2**62, (1,), generator=generator)))
        return {"input": images, "label": raw["label"]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return cross_entropy_and_accuracy(model(batch["input"]), batch["label"])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["label"])


def cross_entropy_and_accuracy(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Labels as class ids, or as class probabilities (B, n_classes) from a teacher."""
    logits = logits.float()
    hard = labels.argmax(-1) if labels.is_floating_point() else labels
    accuracy = (logits.argmax(-1) == hard).float().mean()
    return F.cross_entropy(logits, labels), {"accuracy": accuracy.detach()}


def accuracy_and_macro_f1(predicted: np.ndarray, gold: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and the unweighted mean of per-class F1 (a class never predicted nor present scores 0)."""
    f1s = []
    for c in range(n_classes):
        tp = int(((predicted == c) & (gold == c)).sum())
        fp = int(((predicted == c) & (gold != c)).sum())
        fn = int(((predicted != c) & (gold == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": float((predicted == gold).mean()), "macro_f1": float(np.mean(f1s))}
