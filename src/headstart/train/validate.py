"""Validation of a language model on fixed windows: loss, perplexity, bits per byte."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from headstart.objectives.base import Objective

EVAL_SEED = 20_240_601  # masking during evaluation is fixed, so evaluations are comparable


def evaluate_windows(
    model: nn.Module,
    objective: Objective,
    windows: np.ndarray,
    batch_size: int,
    bytes_per_token: float | None = None,
) -> dict[str, float]:
    """Mean loss over ``windows`` weighted by scored tokens; perplexity and, given the split's
    UTF-8 bytes per token, bits per byte (comparable across tokenizers)."""
    device = next(model.parameters()).device
    total_loss, total_weight = 0.0, 0
    extras: dict[str, float] = {}
    generator = torch.Generator().manual_seed(EVAL_SEED)
    for first in range(0, len(windows), batch_size):
        raw = torch.from_numpy(windows[first : first + batch_size])
        batch = {k: v.to(device) for k, v in objective.make_batch(raw, generator).items()}
        loss, extra = objective.loss(model, batch)
        weight = int(batch["selected"].sum()) if "selected" in batch else batch["target"].numel()
        total_loss += float(loss) * weight
        total_weight += weight
        for key, value in extra.items():
            extras[key] = extras.get(key, 0.0) + float(value) * weight
    loss = total_loss / max(1, total_weight)
    result = {"val_loss": loss}
    if objective.reports_perplexity:
        result["val_ppl"] = math.exp(min(loss, 50.0))
    if bytes_per_token and "val_ppl" in result:
        result["val_bpb"] = loss / math.log(2) / bytes_per_token
    result.update({f"val_{k}": v / max(1, total_weight) for k, v in extras.items()})
    return result
