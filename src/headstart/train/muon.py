"""Muon (Jordan et al. 2024; Liu et al. 2025): momentum for the hidden weight matrices,
orthogonalised by a Newton–Schulz iteration before it is applied, so every direction of a
matrix's update moves at the same rate. The other parameters (embeddings, the head, norms,
biases, and any matrix marked ``_no_weight_decay``) take AdamW's update in the same optimizer,
so the loop, the schedule and checkpoints see one optimizer with one state dict.

Each orthogonalised update is scaled by 0.2·√max(rows, cols), which gives it about the RMS of
an AdamW update: the same learning rate and weight decay serve both kinds of parameter.

Under FSDP2 a matrix is sharded across ranks: its momentum is gathered whole, every rank
orthogonalises the same matrix, and each keeps its own shard of the result."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

# The quintic's coefficients: steep at zero, so small singular values grow fast in few steps.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
RMS_MATCH = 0.2


def newton_schulz(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix with ``matrix``'s singular vectors: U·Vᵀ, with each
    singular value mapped into about [0.7, 1.2] rather than exactly 1, in float32."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.float()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.T
    x = x / (x.norm() + 1e-7)  # every singular value ≤ 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def orthogonalised(update: torch.Tensor) -> torch.Tensor:
    """:func:`newton_schulz` of the whole matrix; a sharded one (FSDP2's DTensor) is gathered,
    and this rank keeps its shard of the result (every rank computes the same: no scatter)."""
    if isinstance(update, DTensor):
        whole = newton_schulz(update.full_tensor())
        return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)
    return newton_schulz(update)


class Muon(torch.optim.Optimizer):
    """Groups flagged ``muon`` take the orthogonalised Nesterov momentum; the rest take AdamW.
    ``lr``, ``weight_decay`` (decoupled) and the betas mean what they mean in AdamW."""

    def __init__(
        self,
        groups: list[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
    ) -> None:
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "momentum": momentum, "weight_decay": 0.0})
        for group in self.param_groups:
            group.setdefault("muon", False)
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon orthogonalises matrices: a muon group holds only 2-D parameters")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                param.mul_(1.0 - group["lr"] * group["weight_decay"])
                if group["muon"]:
                    self._muon(param, group)
                else:
                    self._adamw(param, group)

    def _muon(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer, grad = state["momentum_buffer"], param.grad
        buffer.mul_(group["momentum"]).add_(grad)
        nesterov = grad.add(buffer, alpha=group["momentum"])
        scale = RMS_MATCH * math.sqrt(max(param.shape))  # a DTensor's shape is the whole matrix's
        param.add_(orthogonalised(nesterov).to(param.dtype), alpha=-group["lr"] * scale)

    def _adamw(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(param), torch.zeros_like(param)
        (beta1, beta2), grad = group["betas"], param.grad
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(grad, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denominator = (state["exp_avg_sq"].sqrt() / math.sqrt(1.0 - beta2**step)).add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1.0 - beta1**step))
