"""AdamW with decoupled weight decay on weight matrices only (not norms, not biases),
optionally with a per-parameter learning-rate scale (layer-wise decay when fine-tuning)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from headstart.config import OptimConfig
from headstart.errors import HeadstartError


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


def carry_moments(optimizer: torch.optim.Optimizer, carried: dict, source: str) -> None:
    """Start ``optimizer`` from another run's per-parameter AdamW state (moments and step
    counts), keeping this run's hyperparameters: continued pretraining without the first steps
    of a cold optimizer. The parameters must line up one to one, in the same shapes."""
    own = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(group["params"]) for group in own["param_groups"]]
    theirs = [len(group["params"]) for group in carried["param_groups"]]
    if sizes != theirs:
        raise HeadstartError(
            f"init_optimizer=carry: {source}'s optimizer has parameter groups of {theirs} tensors; "
            f"this model has {sizes}"
        )
    for index, state in carried["state"].items():
        moment = state.get("exp_avg")
        if moment is not None and moment.shape != params[int(index)].shape:
            raise HeadstartError(
                f"init_optimizer=carry: {source}'s optimizer state has shape {tuple(moment.shape)} for parameter "
                f"{index}; this model's is {tuple(params[int(index)].shape)}"
            )
    optimizer.load_state_dict({"state": carried["state"], "param_groups": own["param_groups"]})
