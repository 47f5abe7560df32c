"""AdamW with decoupled weight decay on weight matrices only (not norms, not biases),
optionally with a per-parameter learning-rate scale (layer-wise decay when fine-tuning)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from headstart.config import OptimConfig


def build_optimizer(
    model: nn.Module,
    config: OptimConfig,
    device: torch.device,
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    """Parameter groups keyed by (decayed or not, lr scale); the loop sets each group's lr as
    the schedule's lr times the group's ``lr_scale``."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (param.dim() >= 2, lr_scale(name) if lr_scale else 1.0)
            groups.setdefault(key, []).append(param)
    return torch.optim.AdamW(
        [
            {"params": params, "weight_decay": config.weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda kv: kv[0])
        ],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=device.type in ("cuda", "cpu"),
    )
