"""Tensor parallelism for the transformer: each block's matrices split over the ranks of a
``tp`` mesh, as Megatron-LM does, with ``torch.distributed.tensor.parallel``.

- Attention: ``qkv`` column-wise (each rank computes whole heads, since its rows run head by
  head), ``proj`` row-wise; the MLP: ``up`` column-wise (whole SwiGLU units), ``proj`` row-wise.
  One all-gather before and one reduce-scatter after each, and nothing in between.
- Sequence parallelism between them: the residual stream, the norms and dropout hold a slice of
  the sequence on each rank, so their activations are split too (``seq_len`` must divide).
- The token embedding and the output projection are split over the vocabulary; the logits stay
  split, and the cross-entropy is computed on the split logits (loss parallel), which never
  gathers them whole. The final norm's output is gathered, so objectives read whole hidden states.

Every parameter is a DTensor on the mesh (split, or replicated for the norms' gains), which is
what FSDP2 shards across the other mesh dimension for 2-D parallelism, and what
``torch.distributed.checkpoint`` reshards onto any other layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from headstart.errors import HeadstartError
from headstart.models.transformer import Transformer, mlp_hidden

OBJECTIVES = ("clm", "mlm")  # their loss is a cross-entropy over the vocabulary, computed split


def check(model: nn.Module, objective: str, tp: int, seq_len: int) -> None:
    """One clear line when this run cannot be split ``tp`` ways."""
    if not isinstance(model, Transformer):
        kind = type(model).__name__
        raise HeadstartError(
            f"train.parallel=tp: splits the transformer (decoder or encoder) alone, not {kind}; "
            "use train.parallel=fsdp to shard this model"
        )
    if objective not in OBJECTIVES:
        raise HeadstartError(
            f"train.parallel=tp: objective.name={objective} is not split; expected one of {', '.join(OBJECTIVES)}, "
            "or train.parallel=fsdp"
        )
    config = model.config
    for name, size in (("model.n_head", config.n_head), ("the MLP's hidden width", mlp_hidden(config)),
                       ("train.seq_len", seq_len)):  # fmt: skip
        if size % tp:
            raise HeadstartError(f"train.tp={tp}: {name} ({size}) must split evenly over the tensor-parallel ranks")


def parallelize(model: Transformer, mesh: DeviceMesh) -> None:
    """Split ``model`` in place over ``mesh`` (one dimension: the tensor-parallel ranks)."""
    plan: dict[str, object] = {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
    }
    if model.lm_head is not None:  # untied: read as a weight by ``Transformer.logits``, split like the embedding
        plan["lm_head"] = ColwiseParallel()
    for i in range(len(model.blocks)):
        block = f"blocks.{i}."
        plan |= {
            block + "norm1": SequenceParallel(),
            block + "attn": PrepareModuleInput(
                input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)
            ),
            block + "attn.qkv": ColwiseParallel(),
            block + "attn.proj": RowwiseParallel(output_layouts=Shard(1)),
            block + "norm2": SequenceParallel(),
            block + "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            block + "mlp.up": ColwiseParallel(),
            block + "mlp.proj": RowwiseParallel(output_layouts=Shard(1)),
        }
        if model.config.qk_norm:  # per head: the heads are what is split
            plan |= {
                block + "attn.q_norm": SequenceParallel(sequence_dim=2, use_local_output=True),
                block + "attn.k_norm": SequenceParallel(sequence_dim=2, use_local_output=True),
            }
    parallelize_module(model, mesh, plan)  # type: ignore[arg-type]
    model.norm.register_forward_hook(_whole_sequence)


def _whole_sequence(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    """The final norm's sequence slices, gathered: what the objectives and probes read."""
    assert isinstance(output, DTensor)
    return output.redistribute(output.device_mesh, [Replicate()]).to_local()


@contextlib.contextmanager
def split_loss(active: bool) -> Iterator[None]:
    """Cross-entropy on vocabulary-split logits, forward and backward (a no-op when not ``active``)."""
    with loss_parallel() if active else contextlib.nullcontext():
        yield


def local(value: torch.Tensor) -> torch.Tensor:
    """A loss computed on split logits is a replicated DTensor: its value, as a plain tensor
    (gradients flow back through it)."""
    return value.to_local() if isinstance(value, DTensor) else value


def vocab_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The highest-scoring token at each position; on vocabulary-split logits, each rank's best
    and its score are gathered (not the logits), and the best of those wins."""
    if not isinstance(logits, DTensor):
        return logits.argmax(-1)
    mesh = logits.device_mesh
    part = logits.to_local()
    score, token = part.max(-1)
    token = token + mesh.get_local_rank() * -(-logits.shape[-1] // mesh.size())  # torch.chunk's split
    scores = [torch.empty_like(score) for _ in range(mesh.size())]
    tokens = [torch.empty_like(token) for _ in range(mesh.size())]
    group = mesh.get_group()
    dist.all_gather(scores, score.contiguous(), group=group)
    dist.all_gather(tokens, token.contiguous(), group=group)
    best = torch.stack(scores).argmax(0, keepdim=True)
    return torch.stack(tokens).gather(0, best).squeeze(0)
