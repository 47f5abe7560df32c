"""The transformer, decoder (causal) or encoder (bidirectional), in one readable file.

Pre-norm blocks: RMSNorm (or LayerNorm) → multi-head self-attention with rotary position
embeddings through ``F.scaled_dot_product_attention`` → residual; RMSNorm → SwiGLU (or GELU)
MLP → residual. Token embeddings are tied to the output projection. Weights start at
N(0, init_std) with the residual output projections scaled by 1/sqrt(2·n_layer) so the
residual stream's variance does not grow with depth. ``qk_norm`` RMS-normalises each head's
queries and keys first (as OLMo 2 and the GPT-2 speedruns do), which bounds the attention logits.

The fused projections keep what one attention head or one MLP unit needs together: ``qkv``'s
output rows run head by head (each head's query, key and value), and SwiGLU's ``up`` interleaves
each unit's gate and input. Splitting their rows into equal contiguous parts, as tensor
parallelism does, then hands every rank whole heads and whole units (``WEIGHT_LAYOUT``).
Initial weights are a function of one number drawn from the global generator when the model is
built and of each parameter's name, whatever device or shard holds them, so a model built on the
meta device and initialised shard by shard starts from the weights one process would.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Replicate

from headstart.config import ModelConfig
from headstart.errors import HeadstartError

# Named sizes: (n_layer, n_head, n_embd). Parameter counts below exclude the embedding.
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (2, 2, 64),  # 0.1M
    "micro": (4, 4, 128),  # 0.8M — nanoGPT's CPU Shakespeare shape
    "tiny": (6, 6, 192),  # 2.7M
    "mini": (6, 6, 384),  # 10.6M
    "small": (8, 8, 512),  # 25M
    "medium": (12, 8, 512),  # 38M
    "gpt2-small": (12, 12, 768),  # 85M, 124M with GPT-2's 50,257-token embedding
}
RMS_NORM_EPS = 1e-6  # what an exported model's config must repeat (headstart.export)
# How checkpoints store the fused projections (the module docstring): qkv rows head by head, SwiGLU
# rows unit by unit. Checkpoints without it in their metadata hold the earlier layout, (q | k | v)
# and (gate | up), which headstart.train.checkpoint converts on load.
WEIGHT_LAYOUT = "2"


def resolve(config: ModelConfig) -> ModelConfig:
    """Apply a named size (if any) and check that the shape is consistent."""
    if config.size:
        if config.size not in SIZES:
            raise HeadstartError(f"model.size={config.size!r}: expected one of {', '.join(SIZES)}")
        preset = dict(zip(("n_layer", "n_head", "n_embd"), SIZES[config.size], strict=True))
        default = ModelConfig()
        for name, value in preset.items():
            given = getattr(config, name)
            if given != getattr(default, name) and given != value:
                raise HeadstartError(
                    f"model.{name}={given}: model.size={config.size} sets {name}={value}; "
                    f"set model.size= (empty) to give the shape field by field"
                )
        config = replace(config, size="", **preset)
    if config.n_embd % config.n_head:
        raise HeadstartError(f"model.n_embd={config.n_embd}: expected a multiple of n_head={config.n_head}")
    if (config.n_embd // config.n_head) % 2:
        raise HeadstartError("model: head size n_embd/n_head must be even for rotary embeddings")
    if config.vocab_size <= 0:
        raise HeadstartError("model.vocab_size: expected a positive vocabulary size (set from the tokenizer)")
    return config


def mlp_hidden(config: ModelConfig) -> int:
    """Hidden width; SwiGLU gets 2/3 of 4·n_embd so both MLP kinds have the same parameter count."""
    if config.mlp_hidden:
        return config.mlp_hidden
    if config.mlp == "gelu":
        return 4 * config.n_embd
    return 64 * math.ceil(8 * config.n_embd / 3 / 64)


class Norm(nn.Module):
    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.size(-1),), self.weight, eps=RMS_NORM_EPS)
        return F.layer_norm(x, (x.size(-1),), self.weight, None, eps=1e-5)


def rotary_table(head_dim: int, length: int, theta: float) -> torch.Tensor:
    """(cos, sin) of pos·θ_j for each position and pair of channels: (length, head_dim/2, 2),
    real so that the compiler can use it, laid out so it views as complex e^{i·pos·θ_j}."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) by position. Eagerly: one complex multiply, cheaper than
    the rotate-half form's slices, concatenation and two real multiplies. Under torch.compile:
    the same arithmetic in real numbers, which the compiler can fuse (it does not fuse complex)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    rotation = rotation.float()
    if torch.compiler.is_compiling():
        cos, sin = rotation[..., 0], rotation[..., 1]
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    else:
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation))
    return rotated.flatten(-2).to(x.dtype)


# CPU bf16 attention runs in float32 while length × head_dim is at most this: there the fused
# kernel is 2-4× slower in bf16 than in float32 (benchmarks/cpu_attention.py, RESULTS).
CPU_FLOAT32_ATTENTION_MAX = 8192


def float32_attention(device: torch.device, dtype: torch.dtype, length: int, head_dim: int) -> bool:
    """Whether ``attend`` runs this attention through the float32 kernel (see the constant above)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and length * head_dim <= CPU_FLOAT32_ATTENTION_MAX


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float, causal: bool
) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, T, head_dim); short bf16 sequences on a CPU go
    through the float32 kernel, which is faster there and exact to bf16 rounding."""
    upcast = float32_attention(q.device, q.dtype, q.shape[-2], q.shape[-1])
    if not upcast:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
    with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
        y = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout, is_causal=causal
        )
    return y.to(torch.bfloat16)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.head_dim = head_dim = config.n_embd // config.n_head
        self.q_norm = Norm(head_dim, "rmsnorm") if config.qk_norm else None
        self.k_norm = Norm(head_dim, "rmsnorm") if config.qk_norm else None

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, T, heads · 3 · head_dim): every head here, or a tensor-parallel rank's
        batch, length = qkv.shape[:2]
        q, k, v = qkv.view(batch, length, -1, 3, self.head_dim).unbind(3)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0, self.causal and mask is None)
        return self.proj(y.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = mlp_hidden(config)
        self.gated = config.mlp == "swiglu"
        self.up = nn.Linear(config.n_embd, (2 if self.gated else 1) * hidden, bias=False)
        self.proj = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up(x).unflatten(-1, (-1, 2)).unbind(-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = Norm(config.n_embd, config.norm)
        self.attn = Attention(config)
        self.norm2 = Norm(config.n_embd, config.norm)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rotation, mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module, std: float, n_layer: int, seed: int | None = None) -> None:
    """Norm gains at one, matrices N(0, std), residual output projections scaled by 1/sqrt(2·n_layer).

    With ``seed``, each matrix is drawn on the CPU from a generator of the seed and its name, and
    a sharded parameter keeps its own part of that draw: the same weights on any device and under
    any layout. Without, from the global generator in parameter order."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.is_meta:
                continue
            if param.dim() < 2:
                param.fill_(1.0)
                continue
            scale = std / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else std
            assign(param, initial_draw(param.shape, scale, seed, name))


def initial_draw(shape: torch.Size, std: float, seed: int | None, name: str) -> torch.Tensor:
    """N(0, std) of ``shape`` on the CPU: from a generator of ``seed`` and ``name``, or without a
    seed from the global one."""
    generator = None if seed is None else torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def assign(param: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy ``whole`` (the full tensor, on the CPU) into ``param``, or into this rank's shard of it."""
    if isinstance(param, DTensor):
        mesh, placements = param.device_mesh, param.placements
        replicated = DTensor.from_local(whole.to(param.device, param.dtype), mesh, [Replicate()] * mesh.ndim)
        param.to_local().copy_(replicated.redistribute(mesh, placements).to_local())
    else:
        param.copy_(whole)


def adopt_weight_layout(model: nn.Module) -> None:
    """Reorder, in place, weights loaded from a checkpoint of the earlier layout ((q | k | v) and
    (gate | up) rows) into ``WEIGHT_LAYOUT``'s (head by head, unit by unit)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Attention):
                weight = module.qkv.weight
                weight.copy_(weight.view(3, -1, module.head_dim, weight.size(-1)).transpose(0, 1).reshape(weight.shape))
            elif isinstance(module, MLP) and module.gated:
                weight = module.up.weight
                weight.copy_(weight.view(2, -1, weight.size(-1)).transpose(0, 1).reshape(weight.shape))


def run_blocks(
    blocks: nn.ModuleList, norm: Norm, x: torch.Tensor, rotation: torch.Tensor, mask: torch.Tensor | None
) -> list[torch.Tensor]:
    """The input vectors and every block's output, the last one normed. Shared by every input
    kind: token embeddings here, image patches in :mod:`headstart.models.vision`."""
    states = [x]
    for block in blocks:
        states.append(block(states[-1], rotation, mask))
    states[-1] = norm(states[-1])
    return states


class Transformer(nn.Module):
    """Token ids → hidden states (``forward``) → vocabulary logits (``logits``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config = resolve(config)
        # drawn first, before any layer's constructor draws (none do on the meta device)
        self.init_seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = Norm(config.n_embd, config.norm)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.register_buffer("rotation", torch.empty(config.context, config.n_embd // config.n_head // 2, 2),
                             persistent=False)  # fmt: skip
        self.embedding_start: torch.Tensor | None = None  # a warm start's embedding, for a meta-device build
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The rotary table and the initial weights; called again on a model built on the meta
        device, once its shards have memory."""
        config = self.config
        if not self.rotation.is_meta:
            self.rotation.copy_(rotary_table(config.n_embd // config.n_head, config.context, config.rope_theta))
        init_weights(self, config.init_std, config.n_layer, seed=self.init_seed)
        if self.embedding_start is not None and not self.embed.weight.is_meta:
            with torch.no_grad():
                assign(self.embed.weight, self.embedding_start)
            self.embedding_start = None

    def start_embedding(self, rows: torch.Tensor, vectors: torch.Tensor) -> None:
        """Start the token embedding's ``rows`` (a boolean mask) from ``vectors`` (a warm start),
        the others from their random draw; on the meta device, once its shards have memory."""
        config = self.config
        start = initial_draw(self.embed.weight.shape, config.init_std, self.init_seed, "embed.weight")
        start[rows] = vectors.to(start.dtype)
        if self.embed.weight.is_meta:
            self.embedding_start = start
        else:
            with torch.no_grad():
                assign(self.embed.weight, start)

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, n_embd). ``padding_mask`` (B, T) is True on real tokens."""
        return self.layer_states(idx, padding_mask)[-1]

    def layer_states(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The token embedding and every block's output (the last one normed): what probes of
        each layer read."""
        length = idx.size(1)
        if length > self.config.context:
            raise HeadstartError(f"input of {length} tokens: longer than the model's context of {self.config.context}")
        rotation = self.rotation[:length]
        mask = None
        if padding_mask is not None:
            mask = padding_mask[:, None, None, :]
            if self.config.causal:
                mask = mask & torch.ones(length, length, dtype=torch.bool, device=idx.device).tril()
        return run_blocks(self.blocks, self.norm, self.drop(self.embed(idx)), rotation, mask)

    @property
    def output_weight(self) -> torch.Tensor:
        """The (vocab, n_embd) rows that score each token: the embedding when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.output_weight
        if isinstance(weight, DTensor):  # the vocabulary split over tensor-parallel ranks: so are the logits
            hidden = DTensor.from_local(hidden, weight.device_mesh, [Replicate()], run_check=False)
        return F.linear(hidden, weight)

    def num_params(self, embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if embedding else total - self.embed.weight.numel()
