"""How good a backbone's frozen features are, without training it: weighted kNN (Wu et al.
2018) and a logistic-regression probe, both on features of labelled images.

The backbone runs in eval mode under no_grad, so batch-norm statistics and dropout are frozen:
measuring must never change the model being pretrained. Its previous mode is restored.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.data.augment import to_float
from headstart.train.probe import fit_logistic


@torch.no_grad()
def image_features(backbone: nn.Module, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Pooled features (N, D), float32 on the CPU, of uint8 (N, H, W, C) images."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    try:
        chunks = [
            backbone(to_float(images[i : i + batch_size], device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        backbone.train(was_training)
    return torch.cat(chunks)


def knn_accuracy(
    fit: torch.Tensor, fit_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, k: int = 20,
    temperature: float = 0.07,
) -> float:  # fmt: skip
    """Each test feature votes among its k most cosine-similar fit features, weighted by
    exp(similarity / temperature)."""
    n_classes = int(max(fit_labels.max(), test_labels.max())) + 1
    fit, test = F.normalize(fit, dim=1), F.normalize(test, dim=1)
    correct = 0
    for first in range(0, len(test), 1024):
        similarity = test[first : first + 1024] @ fit.T
        top, index = similarity.topk(min(k, len(fit)), dim=1)
        votes = torch.zeros(len(top), n_classes).scatter_add_(1, fit_labels[index], (top / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[first : first + 1024]).sum())
    return correct / len(test)


def frozen_scores(
    backbone: nn.Module, fit_images: np.ndarray, fit_labels: np.ndarray, test_images: np.ndarray,
    test_labels: np.ndarray,
) -> dict[str, float]:  # fmt: skip
    """kNN and linear-probe test accuracy of the backbone's frozen features (the probe's L2
    chosen on a fifth of the fit images)."""
    fit, test = image_features(backbone, fit_images), image_features(backbone, test_images)
    y_fit, y_test = torch.from_numpy(fit_labels), torch.from_numpy(test_labels)
    held = torch.arange(len(fit)) % 5 == 0
    n_classes = int(max(y_fit.max(), y_test.max())) + 1
    probe = fit_logistic(fit[~held], y_fit[~held], fit[held], y_fit[held], n_classes)
    return {
        "knn_accuracy": knn_accuracy(fit, y_fit, test, y_test),
        "probe_accuracy": float((probe.predict(test) == y_test).float().mean()),
    }
