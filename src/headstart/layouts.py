"""Which layout a run needs when it is spread over devices: the memory each device holds under one
process, DDP, FSDP2, tensor parallelism and 2-D (TP inside, FSDP2 across), what each sends per
optimizer step, and the smallest layout that fits a device memory. ``headstart plan --devices N
--device-memory SIZE`` reports it.

Per device, for P parameters sharded ``s`` ways (FSDP2: the copies; TP: its ranks; 2-D: both):

- weights and gradients 4·P/s each (fp32), the optimizer's state (``plan.optimizer_bytes``) / s;
- in flight: at the loss, the logits, their log-softmax and its gradient side by side (12 bytes a
  vocabulary entry of each scored token, of which the log-softmax's 4 are counted as activations);
  DDP's gradient buckets (4·P); under FSDP2 the block being computed gathered whole, with the next
  one prefetched (2 × 4 bytes a block parameter) and its gradients before they are
  reduce-scattered (4), and the root's own parameters (embedding, final norm) gathered for the
  whole step, with their gradients; all of it divided by the TP ranks;
- activations: ``plan.activation_bytes`` for the micro-batch rows a copy trains on, divided by the
  TP ranks, except the inputs of the split matrices (gathered whole on every TP rank: two per
  block); under bf16, autocast's bf16 copy of the local weights (2·P/s).

What each device sends per optimizer step (ring collectives: (n−1)/n of the data per gather or
scatter, twice that per all-reduce) is the throughput cost: DDP all-reduces the gradients,
FSDP2 gathers the weights twice (forward, backward) and reduce-scatters the gradients, TP gathers
and reduce-scatters the activations around every split matrix, forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from headstart.config import PretrainConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import mlp_hidden
from headstart.objectives.registry import build_model
from headstart.workflows.pretrain_data import transformer_passes

HEADROOM = 0.9  # a layout fits when its total is at most this share of the device's memory
LOGIT_TRANSIENT_BYTES = 8  # per vocabulary entry scored: the logits and a gradient, beside the kept log-softmax


@dataclass(frozen=True)
class Layout:
    """``tp`` ranks split each model copy; ``copies`` copies train on different rows, sharded by
    FSDP2 (``sharded``) or replicated by DDP."""

    tp: int
    copies: int
    sharded: bool

    @property
    def devices(self) -> int:
        return self.tp * self.copies

    @property
    def name(self) -> str:
        if self.devices == 1:
            return "one process"
        if self.tp == 1:
            return f"FSDP2 × {self.copies}" if self.sharded else f"DDP × {self.copies}"
        return f"TP {self.tp}" if self.copies == 1 else f"TP {self.tp} × FSDP2 {self.copies}"

    @property
    def overrides(self) -> list[str]:
        """What ``headstart pretrain`` is given, under ``torchrun --nproc_per_node=devices``."""
        if self.devices == 1:
            return []
        if self.tp == 1:
            return ["train.parallel=fsdp" if self.sharded else "train.parallel=ddp"]
        return ["train.parallel=tp", *([f"train.tp={self.tp}"] if self.copies > 1 else [])]


@dataclass(frozen=True)
class LayoutPlan:
    layout: Layout
    memory: dict[str, float]  # bytes per device: weights, gradients, optimizer, in_flight, activations, total
    sent: float  # bytes each device sends per optimizer step
    fits: bool


def candidates(config: PretrainConfig, devices: int) -> list[Layout]:
    """The layouts ``devices`` devices allow for this model, cheapest in communication first: DDP,
    FSDP2, then 2-D with TP over 2, 4, … ranks, then TP over all of them."""
    if devices == 1:
        return [Layout(1, 1, False)]
    model, train = config.model, config.train
    splits = [t for t in range(2, devices + 1) if devices % t == 0]
    splittable = [
        t for t in splits
        if model.n_head % t == 0 and mlp_hidden(model) % t == 0 and train.seq_len % t == 0
        and train.batch_size % (devices // t) == 0 and config.objective.name in ("clm", "mlm")
    ]  # fmt: skip
    layouts = [Layout(1, devices, sharded) for sharded in (False, True) if train.batch_size % devices == 0]
    return layouts + [Layout(t, devices // t, devices > t) for t in splittable]


def plan_layout(
    config: PretrainConfig,
    layout: Layout,
    per_token_activations: float,
    optimizer: float,
    dtype: torch.dtype,
    device_memory: float,
) -> LayoutPlan:
    """Memory per device and bytes sent per step for ``config`` under ``layout`` (module docstring);
    ``per_token_activations``: bytes one token keeps for the backward in one process."""
    with torch.device("meta"):
        model = build_model(config)
    params = sum(p.numel() for p in model.parameters())
    block = max((sum(p.numel() for p in b.parameters()) for b in _blocks(model)), default=0)
    root = params - sum(p.numel() for b in _blocks(model) for p in b.parameters())
    tp, copies = layout.tp, layout.copies
    shards = tp * (copies if layout.sharded else 1)
    train, width, layers = config.train, config.model.n_embd, config.model.n_layer
    tokens = train.batch_size // copies * train.seq_len  # a micro-batch's, on one copy
    element = 2 if dtype == torch.bfloat16 else 4
    scored = sum(times * head for _, head, times in transformer_passes(config))  # vocabularies scored a token
    in_flight = LOGIT_TRANSIENT_BYTES * scored * config.model.vocab_size * tokens / tp
    if copies > 1 and not layout.sharded:
        in_flight += 4.0 * params  # DDP's gradient buckets
    elif copies > 1:
        in_flight += (12.0 * block + 8.0 * root) / tp
    gathered = 2 * layers * width * element * tokens * (1 - 1 / tp)  # the split matrices' whole inputs
    activations = per_token_activations * tokens / tp + gathered
    if dtype == torch.bfloat16:
        activations += 2.0 * params / shards
    memory = {
        "weights": 4.0 * params / shards,
        "gradients": 4.0 * params / shards,
        "optimizer": optimizer / shards,
        "in_flight": in_flight,
        "activations": activations,
    }
    memory["total"] = sum(memory.values())
    fits = memory["total"] <= HEADROOM * device_memory
    return LayoutPlan(layout, memory, _sent(config, layout, params, element), fits)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [block for module in model.modules() if isinstance(module, nn.ModuleList) for block in module]


def _sent(config: PretrainConfig, layout: Layout, params: int, element: int) -> float:
    """Bytes each device sends per optimizer step (module docstring)."""
    tp, copies, train = layout.tp, layout.copies, config.train
    share = params / tp  # what one copy's device holds of the model, before FSDP2
    across = 0.0
    if copies > 1:
        ring = (copies - 1) / copies
        across = (3 if layout.sharded else 2) * ring * 4.0 * share
    within = 0.0
    if tp > 1:
        tokens = train.batch_size // copies * train.seq_len * train.grad_accum
        within = 8 * config.model.n_layer * tokens * config.model.n_embd * element * (tp - 1) / tp
    return across + within


def choose(
    config: PretrainConfig,
    devices: int,
    device_memory: float,
    per_token_activations: float,
    optimizer: float,
    dtype: torch.dtype,
) -> list[LayoutPlan]:
    """Every layout ``devices`` allow, with its memory and traffic; the first that fits is the
    one to use (the list is cheapest first)."""
    if devices < 1:
        raise HeadstartError(f"--devices {devices}: expected at least 1")
    if not device_memory > 0:
        raise HeadstartError(f"--device-memory {device_memory}: expected a positive size, e.g. 80GiB")
    layouts = candidates(config, devices)
    if not layouts:
        raise HeadstartError(
            f"--devices {devices}: train.batch_size={config.train.batch_size} splits over none of the layouts; "
            f"give a batch that {devices} divides"
        )
    return [plan_layout(config, layout, per_token_activations, optimizer, dtype, device_memory) for layout in layouts]
