"""How good a backbone's frozen features are, without training it: weighted kNN (Wu et al.
2018) and a logistic-regression probe, both on features of labelled images.

The backbone runs in eval mode under no_grad (``image_features``), so batch-norm statistics and
dropout are frozen: measuring must never change the model being pretrained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.readouts.probe import fit_logistic
from headstart.tasks.image import image_features


def knn_votes(
    fit: torch.Tensor, fit_labels: torch.Tensor, query: torch.Tensor, n_classes: int, k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:  # fmt: skip
    """(N, n_classes) votes: each query feature's k most cosine-similar fit features vote for
    their labels, weighted by exp(similarity / temperature); rows sum to 1. In float32 whatever
    the autocast it is called under (evaluations run under the training's)."""
    fit, query = F.normalize(fit.float(), dim=1), F.normalize(query.float(), dim=1)
    votes = torch.zeros(len(query), n_classes)
    with torch.autocast(fit.device.type, enabled=False):
        for first in range(0, len(query), 1024):
            similarity = query[first : first + 1024] @ fit.T
            top, index = similarity.topk(min(k, len(fit)), dim=1)
            weights = ((top - top[:, :1]) / temperature).exp()  # shifted by the row's best: no overflow
            votes[first : first + 1024].scatter_add_(1, fit_labels[index], weights)
    return votes / votes.sum(1, keepdim=True)


def knn_accuracy(
    fit: torch.Tensor, fit_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, k: int = 20,
    temperature: float = 0.07,
) -> float:  # fmt: skip
    """Weighted kNN (Wu et al. 2018) test accuracy."""
    n_classes = int(max(fit_labels.max(), test_labels.max())) + 1
    votes = knn_votes(fit, fit_labels, test, n_classes, k, temperature)
    return float((votes.argmax(1) == test_labels).float().mean())


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
