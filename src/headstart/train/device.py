"""Which device a run trains on, and in which precision: measured on the machine, not assumed."""

from __future__ import annotations

import torch

from headstart.errors import HeadstartError
from headstart.train.flops import peak_flops

BF16_MARGIN = 1.2  # bf16 must measure this much faster than fp32 to be chosen


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HeadstartError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HeadstartError(f"train.device={name!r}: no CUDA device is available here")
    return device


def pick_precision(name: str, device: torch.device) -> torch.dtype:
    """``auto`` takes bf16 where the hardware runs it and its matmuls measure faster than fp32's,
    on a CPU as on a GPU (the probe is cached per machine)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float32
    faster = peak_flops(torch.bfloat16, device) > BF16_MARGIN * peak_flops(torch.float32, device)
    return torch.bfloat16 if faster else torch.float32
