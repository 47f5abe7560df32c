"""What a checkpoint holds beyond the weights: the run's position, so a resumed run continues
exactly where an uninterrupted one would be.

Everything random in the loop is a pure function of the step (``step_generator``) or restored
from here (torch's global RNG, which dropout draws from); the data cursor is a sample count,
since sources are deterministic by index; the schedule is a function of the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """The model and optimizer being trained, and where the run stands: optimizer steps taken,
    samples drawn (the data cursor), tokens and FLOPs spent, and wall time before this process."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    flops: float = 0.0
    elapsed_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_s(self) -> float:
        """Wall seconds the run has spent, its earlier processes included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        """Counters and RNG state as plain tensors and numbers (``state.pt`` loads with
        ``weights_only=True``). The optimizer's state is saved by the parallelism strategy,
        which knows whether it is whole or sharded."""
        state: dict[str, Any] = {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "flops": self.flops,
            "elapsed_s": self.elapsed_s,
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples_seen, self.tokens_seen = state["step"], state["samples_seen"], state["tokens_seen"]
        self.flops, self.elapsed_before = state["flops"], state["elapsed_s"]
        self.started = time.perf_counter()
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
