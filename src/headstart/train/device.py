"""Which device a run trains on, in which precision, and whether it is compiled: measured on the
machine, not assumed."""

from __future__ import annotations

import functools
import resource
import sys

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.train.flops import peak_flops

BF16_MARGIN = 1.2  # bf16 must measure this much faster than fp32 to be chosen
# Compiling gpt-tiny took about 40 s on a 2-core CPU and bought 18% more steps within 5 minutes
# (about 500 steps; benchmarks/RESULTS.md, time to a validation loss): shorter runs stay eager.
COMPILE_MIN_STEPS = 500


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


def pick_compile(setting: bool | str, model: nn.Module, objective: str, steps: int, processes: int) -> bool:
    """``auto`` compiles where it was measured to pay: one process pretraining a transformer
    decoder (causal LM) for ``COMPILE_MIN_STEPS`` steps or more, where Inductor builds on this
    machine. Other runs stay eager unless ``train.compile=true``: a fine-tune's padded batches
    change shape, and the other models and layouts were not measured."""
    if setting != "auto":
        return bool(setting)
    config = getattr(model, "config", None)
    measured = getattr(config, "kind", "") == "transformer" and objective == "clm" and processes == 1
    return measured and steps >= COMPILE_MIN_STEPS and inductor_builds(next(model.parameters()).device.type)


@functools.cache
def inductor_builds(device_type: str) -> bool:
    """Whether torch.compile's Inductor builds a kernel here (a C++ compiler and Python's headers
    on a CPU, Triton on CUDA): a one-line function compiled once per process, a few seconds."""
    try:
        kernel = torch.compile(lambda x: torch.relu(x) * 2 + 1)
        return bool(kernel(torch.ones(8, device=device_type)).eq(3).all())
    except Exception:  # any failure to build means: run eagerly
        return False


def peak_memory(device: torch.device) -> int:
    """The most memory this process has held so far, in bytes: on a GPU the tensors torch
    allocated there; on a CPU the process's peak resident set (the interpreter, libraries and
    data included, so a run's own share is this less a tiny run's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
