"""Sequence classification: a padded batch of token ids in, cross-entropy over classes out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def pad_batch(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (ids, real-token mask)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = True
    return ids, mask


class Classify:
    name = "classify"
    head_fraction = 0.0  # no vocabulary projection

    def make_batch(self, raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return raw

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["input"], batch["mask"]).float()
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"accuracy": accuracy.detach()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum())


def accuracy_and_macro_f1(predicted: np.ndarray, gold: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and the unweighted mean of per-class F1 (a class never predicted nor present scores 0)."""
    f1s = []
    for c in range(n_classes):
        tp = int(((predicted == c) & (gold == c)).sum())
        fp = int(((predicted == c) & (gold != c)).sum())
        fn = int(((predicted != c) & (gold == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": float((predicted == gold).mean()), "macro_f1": float(np.mean(f1s))}
