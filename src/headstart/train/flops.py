"""FLOPs per token, the machine's measured peak FLOP/s, and model FLOPs utilisation (MFU).

The peak is measured, never assumed: a square matmul probe in the run's precision, its fastest
of a dozen tries (the ceiling; a busy moment must not lower it), cached per (device model,
precision, threads, cores, torch version) for ``PEAK_CACHE_DAYS`` so it costs a second once.

Mamba's count per token, independent of the sequence length: its matmuls (in_proj, x_proj,
dt_proj, out_proj: 2 FLOPs per weight), the depthwise convolution (2·d_conv per inner
channel), and the selective scan at about ``SCAN_FLOPS`` = 9 per inner channel and state:
the recurrence's 7 (Δ·A and its exp, Δ·B·x, the update a·h + b, C·h) and the chunked scan's
carry. torch's FLOP counter counts the matmuls and the convolution, not the scan's elementwise work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from headstart.config import ModelConfig
from headstart.files import write_text_atomic
from headstart.models import resolve
from headstart.models.transformer import mlp_hidden

SCAN_FLOPS = 9  # Mamba's selective scan, per token, inner channel and state
PEAK_CACHE_DAYS = 7  # a cached peak older than this is measured again


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (blocks, not the embedding lookup)."""
    config = resolve(config)
    if config.kind == "mamba":
        d, inner = config.n_embd, config.expand * config.n_embd
        x_proj, dt_proj = inner * (config.dt_rank + 2 * config.d_state), config.dt_rank * inner
        return config.n_layer * (2 * d * inner + x_proj + dt_proj + inner * d)
    d, hidden = config.n_embd, mlp_hidden(config)
    mlp = d * hidden * (3 if config.mlp == "swiglu" else 2)
    return config.n_layer * (4 * d * d + mlp)


def forward_flops_per_token(config: ModelConfig, seq_len: int, head_fraction: float = 1.0) -> float:
    """Forward FLOPs for one token: 2 per matmul weight, attention scores and mixing (Mamba:
    its convolution and scan instead), and the output projection (on ``head_fraction`` of the
    tokens: masked LM only scores masked ones)."""
    config = resolve(config)
    head = 2 * config.n_embd * config.vocab_size * head_fraction
    if config.kind == "mamba":
        inner = config.expand * config.n_embd
        mixing = config.n_layer * inner * (2 * config.d_conv + SCAN_FLOPS * config.d_state)
        return 2 * matmul_params(config) + mixing + head
    attention = 2 * 2 * config.n_layer * seq_len * config.n_embd  # QK^T and AV (PaLM convention)
    return 2 * matmul_params(config) + attention + head


def train_flops_per_token(config: ModelConfig, seq_len: int, head_fraction: float = 1.0) -> float:
    """Forward + backward ≈ 3 × forward."""
    return 3 * forward_flops_per_token(config, seq_len, head_fraction)


def _cache_dir() -> Path:
    root = os.environ.get("HEADSTART_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "headstart")
    return Path(root)


@functools.cache
def _device_name(device: torch.device) -> str:
    """The accelerator's or the CPU's model name: machines of one architecture differ in peak."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_peak_flops(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 12) -> float:
    """Best FLOP/s of a square matmul in ``dtype`` over a few tries: the ceiling MFU is reported
    against. The fastest try, not the median, so a busy moment does not lower the ceiling."""
    if device.type == "cuda":
        size = 8192
    numbers = torch.Generator(device=device).manual_seed(0)  # the run's own random stream stays untouched
    a = torch.randn(size, size, device=device, generator=numbers).to(dtype)
    b = torch.randn(size, size, device=device, generator=numbers).to(dtype)
    timings = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            timings.append(time.perf_counter() - start)
    return 2 * size**3 / min(timings)


def peak_cache_path(dtype: torch.dtype, device: torch.device) -> Path:
    """Where the probe of ``dtype`` on ``device`` is cached, keyed by everything that changes the peak."""
    key = json.dumps([_device_name(device), str(dtype), torch.get_num_threads(), torch.__version__, os.cpu_count()])
    return _cache_dir() / f"peak-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def peak_flops(dtype: torch.dtype, device: torch.device) -> float:
    """The measured peak, cached on disk for ``PEAK_CACHE_DAYS`` (then measured again: drivers,
    clocks and the machine under a path can change)."""
    path = peak_cache_path(dtype, device)
    try:
        cached = json.loads(path.read_text())
        if time.time() - float(cached["measured_at"]) < PEAK_CACHE_DAYS * 86400:
            return float(cached["flops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    flops = measure_peak_flops(dtype, device)
    with contextlib.suppress(OSError):  # a read-only home only costs a re-probe next time
        write_text_atomic(path, json.dumps({"flops": flops, "measured_at": time.time()}))
    return flops


def counted_flops(run: Callable[[], object]) -> float:
    """FLOPs torch's counter sees while ``run()`` runs, attention included: SDPA goes through its
    math kernel meanwhile, because the counter has no formula for the fused CPU kernel and would
    count no attention at all there."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())
