"""Mamba (Gu & Dao 2023, "Mamba-1"), a causal language model without attention, in one readable file.

Each block: RMSNorm → selective state space (in_proj to x and the gate z; causal depthwise
conv1d and SiLU on x; x_proj to the input-dependent step Δ and the matrices B, C; the
recurrence h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t, y_t = C_t · h_t + D x_t; gate SiLU(z);
out_proj) → residual. Token embeddings are tied to the output projection; the interface is
the transformer's (``forward``, ``layer_states``, ``logits``, ``num_params``), so the causal
objective, fine-tuning and the transfer study take either.

The recurrence has two implementations that agree to float rounding: a sequential reference
(the definition, autograd through every step) and a chunked scan, the default. The chunked scan
does each chunk's decays, inputs and read-outs as whole-chunk tensor operations, leaves one fused
multiply-add per step, and has a written-out backward pass that keeps one state per chunk instead
of autograd's several per step. On CUDA, the optional ``mamba_ssm`` package's fused kernel is
used when it imports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from headstart.config import ModelConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import Norm


def resolve(config: ModelConfig) -> ModelConfig:
    """Check the shape and fill ``dt_rank``: Mamba is a decoder, and named sizes are transformer shapes."""
    if not config.causal:
        raise HeadstartError(
            "model.kind=mamba: a causal model only; masked objectives (mlm, rtd) need model.kind=transformer"
        )
    if config.size:
        raise HeadstartError(
            f"model.size={config.size!r}: named sizes are transformer shapes; give model.n_layer and "
            "model.n_embd for model.kind=mamba"
        )
    if config.vocab_size <= 0:
        raise HeadstartError("model.vocab_size: expected a positive vocabulary size (set from the tokenizer)")
    for name in ("n_layer", "n_embd", "d_state", "d_conv", "expand", "scan_chunk"):
        if getattr(config, name) < 1:
            raise HeadstartError(f"model.{name}={getattr(config, name)}: expected a positive integer")
    if config.dt_rank < 0:
        raise HeadstartError(f"model.dt_rank={config.dt_rank}: expected 0 (automatic) or a positive rank")
    return replace(config, dt_rank=config.dt_rank or math.ceil(config.n_embd / 16))


def selective_scan_reference(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """The recurrence as defined, one step at a time: A discretised by zero-order hold
    (exp(Δ A)), B by Euler (Δ B). u, delta: (batch, length, inner); A: (inner, state);
    B, C: (batch, length, state); D: (inner,). Returns y: (batch, length, inner)."""
    h = u.new_zeros(u.size(0), u.size(2), A.size(1))
    ys = []
    for u_t, delta_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1), strict=True):
        h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, None, :]
        ys.append((h * C_t[:, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + D * u


#: A chunk's work tensors, (steps, batch, inner, state), stay within this many elements (4 MiB in
#: float32). Longer chunks measured no faster on CPU (their passes stream from memory); much
#: shorter ones keep more chunk states for the backward pass and make more calls.
CHUNK_ELEMENTS = 2**20


def chunk_steps(chunk: int, batch: int, length: int, inner: int, state: int) -> int:
    """Steps per chunk that :func:`selective_scan_chunked` runs: ``chunk``, shortened to the
    sequence and to :data:`CHUNK_ELEMENTS` work elements, at least one."""
    return max(1, min(chunk, length, CHUNK_ELEMENTS // (batch * inner * state)))


def _chunk_states(
    v: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    start: torch.Tensor,
    decay: torch.Tensor,
    inputs: torch.Tensor,
    states: torch.Tensor,
) -> torch.Tensor:
    """One chunk, time-major: its decays exp(Δ A) and inputs v B all at once into ``decay`` and
    ``inputs``, then each state from ``start`` by one fused multiply-add into ``states``.
    Returns the last state."""
    torch.mul(delta[..., None], A, out=decay).exp_()
    torch.mul(v[..., None], B[:, :, None, :], out=inputs)
    h = start
    for t in range(len(states)):
        h = torch.addcmul(inputs[t], decay[t], h, out=states[t])
    return h


class _ChunkedScan(torch.autograd.Function):
    """y_t = C_t · h_t over time-major v = Δ·u, Δ: (length, batch, inner), B, C: (length, batch,
    state). Its backward keeps only each chunk's first state and recomputes the chunk: autograd
    would keep several (batch, inner, state) tensors for every step."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        v: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        size: int,
    ) -> torch.Tensor:
        length, batch, inner = v.shape
        n_chunks = -(-length // size)
        starts = v.new_empty(n_chunks, batch, inner, A.size(1))
        starts[0].zero_()
        decay, inputs, states = (v.new_empty(size, batch, inner, A.size(1)) for _ in range(3))
        y = v.new_empty(length, batch, inner)
        for k in range(n_chunks):
            t = slice(k * size, (k + 1) * size)
            steps = len(v[t])
            h = _chunk_states(v[t], delta[t], A, B[t], starts[k], decay[:steps], inputs[:steps], states[:steps])
            torch.matmul(C[t, :, None, :], states[:steps].transpose(-1, -2), out=y[t, :, None, :])
            if k + 1 < n_chunks:
                starts[k + 1].copy_(h)
        ctx.save_for_backward(v, delta, A, B, C, starts)
        ctx.size = size
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        v, delta, A, B, C, starts = ctx.saved_tensors
        dy = dy.contiguous()
        batch, inner = v.shape[1:]
        size, state = ctx.size, A.size(1)
        dv, ddelta, dB, dC = (torch.empty_like(t) for t in (v, delta, B, C))
        dA = torch.zeros_like(A)
        decay, inputs, states, grads = (v.new_empty(size, batch, inner, state) for _ in range(4))
        later = v.new_zeros(batch, inner, state)  # what the next chunk sends back to this one's last state
        for k in reversed(range(len(starts))):
            t = slice(k * size, (k + 1) * size)
            steps = len(v[t])
            e, w, h, g = decay[:steps], inputs[:steps], states[:steps], grads[:steps]
            _chunk_states(v[t], delta[t], A, B[t], starts[k], e, w, h)
            # g_t = ∂loss/∂h_t = dy_t C_t + exp(Δ_{t+1} A) ⊙ g_{t+1}: the recurrence run backwards.
            torch.mul(dy[t, :, :, None], C[t, :, None, :], out=g)
            g[-1] += later
            for i in range(steps - 2, -1, -1):
                torch.addcmul(g[i], e[i + 1], g[i + 1], out=g[i])
            torch.mul(e[0], g[0], out=later)
            torch.matmul(dy[t, :, None, :], h, out=dC[t, :, None, :])
            torch.matmul(v[t, :, None, :], g, out=dB[t, :, None, :])
            torch.matmul(B[t, :, None, :], g.transpose(-1, -2), out=dv[t, :, None, :])
            # ∂loss/∂(Δ_t A) = g_t ⊙ exp(Δ_t A) h_{t−1} = g_t ⊙ (h_t − v_t B_t), then by the chain rule
            # to Δ (a sum over states, as one matmul per channel) and to A (a sum over batch and steps).
            log_decay = h.sub_(w).mul_(g)
            per_channel = log_decay.view(steps * batch, inner, state).permute(1, 2, 0)
            ddelta[t] = torch.bmm(A[:, None, :], per_channel).view(inner, steps, batch).permute(1, 2, 0)
            dA += log_decay.mul_(delta[t, :, :, None]).sum((0, 1))
        return dv, ddelta, dA, dB, dC, None


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The same recurrence in chunks of at most ``chunk`` steps; same arguments as
    :func:`selective_scan_reference`, the same values to float rounding, in less time and far
    less memory.

    Per chunk, every step's decay exp(Δ A), input Δ u B and read-out C · h are each one tensor
    operation over the whole chunk; what stays step by step is one fused multiply-add,
    h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t u_t B_t, exact and stable whatever the decays. The backward
    pass is written out (:class:`_ChunkedScan`): it recomputes each chunk from its first state and
    runs the adjoint recurrence the same way, so a layer keeps length/chunk states, not several
    tensors per step. Chunks are shortened to :data:`CHUNK_ELEMENTS` work elements.

    Not the chunk-parallel closed form of Mamba-2 (SSD), h_t = Σ_s exp(L_t − L_s) Δ_s u_s B_s with
    L the running sum of Δ A: with a decay per channel and state it is elementwise work, not
    matmuls, and two passes more over the chunk's tensors than the fused step (slower on CPU, where
    each pass is bound by memory traffic); and its factors exp(−L_s) overflow once a chunk's Δ·|A|
    sums past ~88, so chunks would have to shrink wherever decays are fast.
    """
    size = chunk_steps(chunk, *u.shape, A.size(1))

    def time_major(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).contiguous()

    v, delta_t, B_t, C_t = (time_major(t) for t in (delta * u, delta, B, C))
    return _ChunkedScan.apply(v, delta_t, A, B_t, C_t, size).transpose(0, 1) + D * u


@functools.cache
def cuda_scan() -> Callable[..., torch.Tensor] | None:
    """``mamba_ssm``'s fused CUDA scan when that optional package imports, else None."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """The fused kernel for CUDA tensors when ``mamba_ssm`` is installed, else the chunked scan."""
    kernel = cuda_scan() if u.is_cuda else None
    if kernel is None:
        return selective_scan_chunked(u, delta, A, B, C, D, chunk)
    y = kernel(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D)
    return y.transpose(1, 2)  # its layout is (batch, channels, length)


class SelectiveSSM(nn.Module):
    """Mamba's mixer: what attention is to the transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inner = config.expand * config.n_embd
        self.d_state, self.dt_rank, self.chunk = config.d_state, config.dt_rank, config.scan_chunk
        self.in_proj = nn.Linear(config.n_embd, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, config.d_conv, groups=inner)
        self.x_proj = nn.Linear(inner, config.dt_rank + 2 * config.d_state, bias=False)
        self.dt_proj = nn.Linear(config.dt_rank, inner)
        self.A_log = nn.Parameter(torch.empty(inner, config.d_state))
        self.A_log._no_weight_decay = True  # a log rate, not a weight: decay would pull every A towards −1
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, config.n_embd, bias=False)

    def reset_parameters(self, std: float, n_layer: int) -> None:
        """Projections N(0, std), out_proj scaled by 1/sqrt(n_layer) (one residual branch per
        block); the conv as PyTorch starts it; Δ, A and D as in Mamba."""
        nn.init.normal_(self.in_proj.weight, 0.0, std)
        nn.init.normal_(self.x_proj.weight, 0.0, std)
        nn.init.normal_(self.out_proj.weight, 0.0, std / math.sqrt(n_layer))
        self.conv.reset_parameters()
        # Δ starts log-uniform in [1e-3, 1e-1] per channel: time scales 1/(Δ·|A|) from one step to a thousand.
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        inner = self.D.numel()
        dt = torch.exp(torch.rand(inner) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
            # S4D-real: A = −(1, 2, …, d_state) in every channel.
            self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(inner, -1))
            self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = F.pad(x.transpose(1, 2), (self.conv.kernel_size[0] - 1, 0))  # left padding only: the conv stays causal
        x = F.silu(self.conv(x)).transpose(1, 2)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The recurrence multiplies hundreds of decays: float32 whatever the autocast, bf16 would lose them.
        with torch.autocast(hidden.device.type, enabled=False):
            delta = F.softplus(F.linear(dt.float(), self.dt_proj.weight.float(), self.dt_proj.bias.float()))
            A = -torch.exp(self.A_log.float())
            y = selective_scan(x.float(), delta, A, B.float(), C.float(), self.D.float(), self.chunk)
        return self.out_proj(y.to(z.dtype) * F.silu(z))


class MambaBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = Norm(config.n_embd, config.norm)
        self.mixer = SelectiveSSM(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mixer(self.norm(x)))


class Mamba(nn.Module):
    """Token ids → hidden states (``forward``) → vocabulary logits (``logits``); causal only."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config = resolve(config)
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layer))
        self.norm = Norm(config.n_embd, config.norm)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The transformer's conventions where they apply: embedding (and head) N(0, init_std), norm gains one."""
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, 0.0, std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        nn.init.ones_(self.norm.weight)
        for block in self.blocks:
            nn.init.ones_(block.norm.weight)
            block.mixer.reset_parameters(std, self.config.n_layer)

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, n_embd). ``padding_mask`` (B, T) is accepted and not needed: in a
        right-padded batch the padding comes after every real token, which a causal model never reads."""
        return self.layer_states(idx, padding_mask)[-1]

    def layer_states(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The token embedding and every block's output (the last one normed): what probes of
        each layer read."""
        length = idx.size(1)
        if length > self.config.context:
            raise HeadstartError(f"input of {length} tokens: longer than the model's context of {self.config.context}")
        states = [self.drop(self.embed(idx))]
        for block in self.blocks:
            states.append(block(states[-1]))
        states[-1] = self.norm(states[-1])
        return states

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def num_params(self, embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if embedding else total - self.embed.weight.numel()
