"""AdamW with decoupled weight decay on weight matrices only (not norms, not biases, not a
tensor marked ``_no_weight_decay`` such as Mamba's A_log), optionally with a per-parameter
learning-rate scale (layer-wise decay when fine-tuning); or Muon (``optim.name=muon``) for the
matrices inside the model's blocks, with AdamW for the rest."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from headstart.config import OptimConfig
from headstart.errors import HeadstartError
from headstart.train.muon import Muon


def build_optimizer(
    model: nn.Module,
    config: OptimConfig,
    device: torch.device,
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """Parameter groups keyed by (decayed or not, lr scale, Muon or not); the loop sets each
    group's lr as the schedule's lr times the group's ``lr_scale``."""
    muon = config.name == "muon"
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decay = param.dim() >= 2 and not getattr(param, "_no_weight_decay", False)
            key = (decay, lr_scale(name) if lr_scale else 1.0, muon and decay and is_hidden_matrix(name, param))
            groups.setdefault(key, []).append(param)
    specs = [
        {"params": params, "weight_decay": config.weight_decay if decay else 0.0, "lr_scale": scale}
        | ({"muon": hidden} if muon else {})
        for (decay, scale, hidden), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]
    betas = (config.beta1, config.beta2)
    if muon:
        return Muon(specs, lr=config.lr, betas=betas, eps=config.eps, momentum=config.momentum)
    return torch.optim.AdamW(specs, lr=config.lr, betas=betas, eps=config.eps, fused=device.type in ("cuda", "cpu"))


def is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    """A 2-D weight inside the model's blocks: not an embedding, not the head, not a convolution."""
    return param.dim() == 2 and "blocks" in name.split(".")


def carried_state(optimizer: torch.optim.Optimizer, carried: dict, source: str) -> dict:
    """The state dict that starts ``optimizer`` from another run's per-parameter state (AdamW's
    moments and step counts, Muon's momentum), keeping this run's hyperparameters: continued
    pretraining without the first steps of a cold optimizer. The parameters must line up one to
    one, in the same shapes, except that rows a grown vocabulary appended start with zero moments."""
    own = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    kinds = [[group.get("muon") for group in groups["param_groups"]] for groups in (own, carried)]
    if kinds[0] != kinds[1]:
        raise HeadstartError(
            f"init_optimizer=carry: {source} was trained with another optimizer (optim.name); "
            "use the same optim.name, or init_optimizer=fresh"
        )
    sizes = [len(group["params"]) for group in own["param_groups"]]
    theirs = [len(group["params"]) for group in carried["param_groups"]]
    if sizes != theirs:
        raise HeadstartError(
            f"init_optimizer=carry: {source}'s optimizer has parameter groups of {theirs} tensors; "
            f"this model has {sizes}"
        )
    states = {}
    for index, state in carried["state"].items():
        shape = params[int(index)].shape
        states[index] = dict(state)
        for name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if name not in state:
                continue
            moment = state[name]
            if moment.shape[1:] == shape[1:] and moment.shape[0] < shape[0]:  # appended vocabulary rows
                moment = torch.cat([moment, moment.new_zeros(shape[0] - moment.shape[0], *shape[1:])])
            if moment.shape != shape:
                raise HeadstartError(
                    f"init_optimizer=carry: {source}'s optimizer state has shape {tuple(state[name].shape)} for "
                    f"parameter {index}; this model's is {tuple(shape)}"
                )
            states[index][name] = moment
    return {"state": states, "param_groups": own["param_groups"]}
