"""Mamba (Gu & Dao 2023, "Mamba-1"), a causal language model without attention, in one readable file.

Each block: RMSNorm → selective state space (in_proj to x and the gate z; causal depthwise
conv1d and SiLU on x; x_proj to the input-dependent step Δ and the matrices B, C; the
recurrence h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t, y_t = C_t · h_t + D x_t; gate SiLU(z);
out_proj) → residual. Token embeddings are tied to the output projection; the interface is
the transformer's (``forward``, ``layer_states``, ``logits``, ``num_params``), so the causal
objective, fine-tuning and the transfer study take either.

The recurrence has two implementations that agree to float rounding: a sequential reference
(the definition, autograd through every step) and a chunked scan, the default. The chunked scan
runs each chunk of steps as one loop that ``torch.compile`` fuses, the state kept in registers
(op by op where compiling is off or fails), and has a written-out backward pass that keeps one
state per chunk instead of autograd's several per step. On CUDA, the optional ``mamba_ssm``
package's fused kernel is used when it imports.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import InductorError

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


def _chunk_step(
    h: torch.Tensor, v: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, t: int
) -> torch.Tensor:
    """Step ``t`` of a chunk: h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t u_t B_t (v = Δ·u)."""
    return torch.exp(delta[:, t, :, None] * A) * h + v[:, t, :, None] * B[:, t, None, :]


def _chunk_forward(
    h: torch.Tensor, v: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk (v, delta: (batch, steps, inner); B, C: (batch, steps, state)) from the state
    ``h`` (batch, inner, state): the read-outs y (batch, steps, inner) and the last state.
    Written step by step, so that the compiler fuses the whole chunk into one loop over (batch,
    channel) that keeps the state, one vector of ``state`` lanes, in registers."""
    ys = []
    for t in range(v.size(1)):
        h = _chunk_step(h, v, delta, A, B, t)
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


def _chunk_backward(
    h: torch.Tensor,
    v: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dy: torch.Tensor,
    g: torch.Tensor,
    dA: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The chunk of :func:`_chunk_forward` backwards: it recomputes the chunk's states from its
    first one, ``h``, then runs the adjoint recurrence g_t = ∂loss/∂h_t = dy_t C_t + exp(Δ_{t+1} A)
    ⊙ g_{t+1} from ``g`` (what later chunks send back to its last state). ``dA`` (batch, inner,
    state) accumulates A's gradient before the sum over the batch. Returns dv, dΔ, dA, dB, dC and
    what goes back to the previous chunk's last state."""
    states = [h]
    for t in range(v.size(1)):
        states.append(_chunk_step(states[-1], v, delta, A, B, t))
    dv, ddelta, dB, dC = ([None] * v.size(1) for _ in range(4))
    for t in reversed(range(v.size(1))):
        g = g + dy[:, t, :, None] * C[:, t, None, :]
        dC[t] = (dy[:, t, :, None] * states[t + 1]).sum(1)
        dB[t] = (v[:, t, :, None] * g).sum(1)
        dv[t] = (B[:, t, None, :] * g).sum(-1)
        decay = torch.exp(delta[:, t, :, None] * A)  # recomputed: cheaper here than kept per step
        log_decay = g * decay * states[t]  # ∂loss/∂(Δ_t A)
        ddelta[t] = (log_decay * A).sum(-1)
        dA = dA + log_decay * delta[:, t, :, None]
        g = decay * g
    return (*(torch.stack(x, dim=1) for x in (dv, ddelta)), dA, *(torch.stack(x, dim=1) for x in (dB, dC)), g)


_COMPILE_FAILURES = (BackendCompilerFailed, InductorError)


class _Kernel:
    """A chunk function run through ``torch.compile`` (Inductor: C++ on CPU, Triton on CUDA), or
    as plain PyTorch operations where compiling fails (no C++ compiler, say): the same numbers,
    op by op. The failure is reported once, then this kernel stays eager. Each chunk length,
    dtype and device compiles once (a few seconds); past torch's recompile limit, new ones run
    eagerly, as torch.compile does."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        self.eager = fn
        self.compiled: Callable[..., tuple[torch.Tensor, ...]] | None = torch.compile(fn)

    def __call__(self, compiled: bool, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (compiled and self.compiled):
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except _COMPILE_FAILURES as error:
            self.compiled = None
            reason = str(error).strip().splitlines()[-1]
            warnings.warn(f"mamba scan: torch.compile failed ({reason}); running the scan eagerly", stacklevel=2)
            return self.eager(*args)


_FORWARD, _BACKWARD = _Kernel(_chunk_forward), _Kernel(_chunk_backward)


class _ChunkedScan(torch.autograd.Function):
    """y_t = C_t · h_t over v = Δ·u and Δ: (batch, length, inner), B, C: (batch, length, state),
    the length a whole number of chunks. Keeps each chunk's first state for the backward pass,
    which recomputes the chunk: autograd would keep several (batch, inner, state) tensors for
    every step."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        v: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        size: int,
        compiled: bool,
    ) -> torch.Tensor:
        h = v.new_zeros(v.size(0), v.size(2), A.size(1))
        starts, ys = [], []
        for t in range(0, v.size(1), size):
            starts.append(h)
            v_k, delta_k, B_k, C_k = (x[:, t : t + size] for x in (v, delta, B, C))
            y, h = _FORWARD(compiled, h, v_k, delta_k, A.detach(), B_k, C_k)
            ys.append(y)
        ctx.save_for_backward(v, delta, A, B, C, *starts)
        ctx.size, ctx.compiled = size, compiled
        return torch.cat(ys, dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        v, delta, A, B, C, *starts = ctx.saved_tensors
        dy, size = dy.contiguous(), ctx.size
        g, dA = torch.zeros_like(starts[0]), torch.zeros_like(starts[0])
        grads = []
        for k in reversed(range(len(starts))):
            v_k, delta_k, B_k, C_k, dy_k = (x[:, k * size : (k + 1) * size] for x in (v, delta, B, C, dy))
            dv, ddelta, dA, dB, dC, g = _BACKWARD(
                ctx.compiled, starts[k], v_k, delta_k, A.detach(), B_k, C_k, dy_k, g, dA
            )
            grads.append((dv, ddelta, dB, dC))
        dv, ddelta, dB, dC = (torch.cat(part[::-1], dim=1) for part in zip(*grads, strict=True))
        return dv, ddelta, dA.sum(0), dB, dC, None, None


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk: int = 16,
    compiled: bool = True,
) -> torch.Tensor:
    """The same recurrence in chunks of ``chunk`` steps; same arguments as
    :func:`selective_scan_reference`, the same values to float rounding, in a fraction of the time
    and memory.

    Each chunk is one call of a function written step by step (:func:`_chunk_forward`) that
    ``torch.compile`` turns into one fused loop: the state stays in registers across the chunk's
    steps and the decays exp(Δ A) are never stored, where eager PyTorch makes a pass over memory
    for every operation of every step. The backward pass is written out the same way
    (:func:`_chunk_backward`): it recomputes each chunk from its first state and runs the adjoint
    recurrence, so a layer keeps length/chunk states, not several tensors per step. A sequence
    that is not a whole number of chunks is padded with Δ = 0 and u = 0 (decay one, no input: the
    state carries over). ``compiled=False``, or a machine where compiling fails, runs the same
    chunk functions op by op.

    Not the chunk-parallel closed form of Mamba-2 (SSD), h_t = Σ_s exp(L_t − L_s) Δ_s u_s B_s with
    L the running sum of Δ A: with a decay per channel and state it is elementwise work, not
    matmuls, and its factors exp(−L_s) overflow once a chunk's Δ·|A| sums past ~88.
    """
    length = u.size(1)
    pad = -length % chunk

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0, 0, pad)) if pad else t.contiguous()

    v, delta_p, B_p, C_p = (padded(t) for t in (delta * u, delta, B, C))
    y = _ChunkedScan.apply(v, delta_p, A, B_p, C_p, chunk, compiled)
    return y[:, :length] + D * u


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
    compiled: bool,
) -> torch.Tensor:
    """The fused kernel for CUDA tensors when ``mamba_ssm`` is installed, else the chunked scan."""
    kernel = cuda_scan() if u.is_cuda else None
    if kernel is None:
        return selective_scan_chunked(u, delta, A, B, C, D, chunk, compiled)
    y = kernel(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D)
    return y.transpose(1, 2)  # its layout is (batch, channels, length)


class SelectiveSSM(nn.Module):
    """Mamba's mixer: what attention is to the transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inner = config.expand * config.n_embd
        self.d_state, self.dt_rank = config.d_state, config.dt_rank
        self.chunk, self.compiled = config.scan_chunk, config.scan_compiled
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
            y = selective_scan(x.float(), delta, A, B.float(), C.float(), self.D.float(), self.chunk, self.compiled)
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

    def start_embedding(self, rows: torch.Tensor, vectors: torch.Tensor) -> None:
        """Start the token embedding's ``rows`` (a boolean mask) from ``vectors`` (a warm start)."""
        with torch.no_grad():
            self.embed.weight[rows] = vectors.to(self.embed.weight.dtype)

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

    @property
    def output_weight(self) -> torch.Tensor:
        """The (vocab, n_embd) rows that score each token: the embedding when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.output_weight)

    def num_params(self, embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if embedding else total - self.embed.weight.numel()
