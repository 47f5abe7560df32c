"""A linear probe fitted properly: multinomial logistic regression on frozen features by
full-batch L-BFGS, with the L2 strength chosen on a held-out split.

With a hundred labels, a convex fit of the head on standardised features is both faster and
far less noisy than training the head by SGD, and it is what the classical baselines
(bag-of-n-grams, word vectors) use, so every init is read out the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Candidate L2 strengths (penalty λ·‖W‖² / n on standardised features), strongest first.
L2_GRID = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01)


@dataclass
class LogisticProbe:
    weight: torch.Tensor  # (n_classes, dim) on the raw features (standardisation folded in)
    bias: torch.Tensor  # (n_classes,)
    l2: float  # the strength chosen
    val_accuracy: float

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() @ self.weight.T + self.bias).argmax(-1)  # dense or sparse features

    def as_linear(self) -> nn.Linear:
        layer = nn.Linear(self.weight.size(1), self.weight.size(0))
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer


def _fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int) -> tuple[torch.Tensor, ...]:
    weight = torch.zeros(n_classes, x.size(1), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.square().sum() / len(y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_logistic(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    n_classes: int,
    grid: tuple[float, ...] = L2_GRID,
    max_iter: int = 300,
) -> LogisticProbe:
    """Fit one probe per L2 strength on ``train``; keep the best on ``val`` (ties: the stronger).

    Dense features are standardised; sparse ones (n-gram indicators) are used as they are."""
    train_x, val_x = train_x.double(), val_x.double()
    if train_x.is_sparse:
        mean, std = torch.zeros(train_x.size(1), dtype=torch.float64), torch.ones(train_x.size(1), dtype=torch.float64)
        scaled_train, scaled_val = train_x, val_x
    else:
        mean = train_x.mean(0)
        std = train_x.std(0, unbiased=False).clamp(min=1e-6)
        scaled_train, scaled_val = (train_x - mean) / std, (val_x - mean) / std
    best: LogisticProbe | None = None
    for l2 in grid:
        weight, bias = _fit(scaled_train, train_y, n_classes, l2, max_iter)
        accuracy = ((scaled_val @ weight.T + bias).argmax(-1) == val_y).double().mean().item()
        if best is None or accuracy > best.val_accuracy:
            raw_weight = weight / std  # fold the standardisation into the raw-feature weights
            raw_bias = bias - raw_weight @ mean
            best = LogisticProbe(raw_weight.float(), raw_bias.float(), l2, accuracy)
    assert best is not None
    return best
