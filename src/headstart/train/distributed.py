"""Training on several processes launched by torchrun: DDP, FSDP2, tensor parallelism or both
of the last two (2-D), inside the one loop.

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
``train.parallel`` (``auto``: DDP under torchrun, one process otherwise) picks DDP, which
replicates the model, FSDP2, which shards every block's parameters, gradients and optimizer
state across the ranks, or ``tp``, which splits every block's matrices over ``train.tp`` ranks
(``tensor_parallel.py``) and, when there are more ranks than that, shards the split model with
FSDP2 across the copies: a 2-D mesh, (copies, tp). gloo on CPU, NCCL on GPUs (one per local rank).

FSDP2 and tensor parallelism start from the meta device: the transformer is built without
memory, laid out, and only this rank's shards are allocated and initialised, with the weights a
one process run of the same seed starts from (``models.transformer.init_weights``; skip-gram
embeddings included). A model that does not fit on one device therefore starts. A continued
checkpoint (``init=``, itself read whole) and the other model kinds are built whole on every rank
first, then sharded.

What keeps a run independent of the number of ranks:

- data: every rank prepares each global micro-batch of the sample order exactly as one process
  does (``source.batch`` and ``make_batch`` with the step's generator, so masks and
  augmentations are drawn for the whole batch) and keeps its rows: copy r of W trains on
  samples r·B/W .. (r+1)·B/W of each micro-batch (the ranks of one tensor-parallel group are one
  copy and read the same rows). Preparing the whole batch costs W× the data work, small beside
  the model's.
- loss: each rank's mean loss is weighted by W (the copies) × its copy's share of the terms the
  global loss averages (``objective.terms``; by default a fixed number per sample, as in causal
  LM, MAE and ELECTRA's detection), so the gradient averaged over the copies is the one-process
  gradient. Masked LM counts its selected positions and is exact too.
- metrics: losses are averaged over the ranks; tokens and FLOPs count the global batch.
- checkpoints: the model and optimizer as ``torch.distributed.checkpoint`` shards (``dcp/``)
  beside the usual files and a consolidated ``model.safetensors`` gathered on rank 0, so a
  checkpoint resumes on any number of ranks and every other verb reads it as usual.

Limits: contrastive objectives (SimCLR, SimCSE) are refused, since their loss compares each
sample with the whole batch; ELECTRA's generator loss is a mean over each rank's own masked
positions (equal to one process's only when the ranks draw as many); dropout draws from each
rank's own generator; every rank evaluates the whole validation set.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from headstart.config import ModelConfig, TrainConfig
from headstart.errors import HeadstartError
from headstart.models.transformer import Transformer
from headstart.objectives.base import Objective
from headstart.train import checkpoint as ckpt
from headstart.train import tensor_parallel
from headstart.train.flops import peak_flops

SHARDED = "dcp"  # the checkpoint's folder of torch.distributed.checkpoint shards
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether torchrun started this process."""
    return all(name in os.environ for name in TORCHRUN)


def process_rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 speaks."""
    return int(os.environ["RANK"]) if launched() else 0


@dataclass(frozen=True)
class Parallel:
    """How this process takes part in a run: alone (``none``), or as ``rank`` of ``world`` under
    ``ddp``, ``fsdp`` or ``tp`` (``tp`` ranks per model copy, on ``mesh``), on ``device``. The
    loop's one parallelism strategy: which rows a rank trains on, how the model is built and
    wrapped, how gradients accumulate, what MFU divides by, and how checkpoints are saved and
    loaded differ between the modes here and nowhere else."""

    mode: str = "none"
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tp: int = 1
    mesh: DeviceMesh | None = None  # under tp: dimensions ("copies", "tp")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def copies(self) -> int:
        """Model copies that train on different rows: every rank, but one per tensor-parallel group."""
        return self.world // self.tp

    def rows(self, batch: Any) -> Any:
        """This rank's rows of a global batch (every tensor's first dimension is the sample)."""
        if self.copies == 1:
            return batch
        if isinstance(batch, dict):
            return {key: self.rows(value) for key, value in batch.items()}
        local, copy = batch.size(0) // self.copies, self.rank // self.tp
        return batch[copy * local : (copy + 1) * local]

    def weight(self, objective: Objective, full: Any, local: Any) -> float:
        """What this rank's mean loss is multiplied by so that the mean over copies is the global
        batch's mean: copies × the copy's share of the terms the loss averages."""
        if self.copies == 1:
            return 1.0
        total = objective.terms(full)
        return 1.0 if total is None else self.copies * objective.terms(local) / max(total, 1)

    def split_loss(self) -> AbstractContextManager[None]:
        """Where a loss and its backward run: on vocabulary-split logits under tensor parallelism."""
        return tensor_parallel.split_loss(self.mode == "tp")

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the ranks (gloo has no average: a sum, divided)."""
        if self.mode == "none":
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world

    def any_rank(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any rank: all ranks stop at the same step."""
        if self.mode == "none":
            return list(flags)
        raised = torch.tensor(flags, dtype=torch.int32, device=self.device)
        dist.all_reduce(raised, op=dist.ReduceOp.MAX)
        return [bool(flag) for flag in raised.tolist()]

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a choice measured per process must agree)."""
        if self.mode == "none":
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def refuse_coupled(self, objective: Objective) -> None:
        """A loss that compares each sample with the whole batch cannot be split across ranks."""
        if self.mode != "none" and objective.couples_batch:
            raise HeadstartError(
                f"objective.name={objective.name}: its loss compares each sample with the whole batch, which "
                "distributed training does not split; use train.parallel=none (one process)"
            )

    def peak_flops(self, dtype: torch.dtype) -> float:
        """What MFU divides by: the measured peak of one device (rank 0's, so every rank reports
        the same) times the number of ranks, since tokens/s counts the whole global batch."""
        return self.from_main(peak_flops(dtype, self.device)) * self.world

    def wrap(self, model: nn.Module, objective: str, seq_len: int, compiled: bool) -> nn.Module:
        """``model`` (compiled if asked) in a :class:`Step`, replicated by DDP, or split by tensor
        parallelism and/or sharded by FSDP2 (each block of every ``nn.ModuleList``, then the rest as
        the root); a model built on the meta device then gets memory for its shards, initialised."""
        if self.mode == "tp":
            assert self.mesh is not None
            tensor_parallel.check(model, objective, self.tp, seq_len)
            tensor_parallel.parallelize(model, self.mesh["tp"])  # type: ignore[arg-type]
        inner = torch.compile(model) if compiled else model
        step = LocalStep(inner) if self.mode == "tp" else Step(inner)
        if self.mode == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(step, device_ids=device_ids)
        meta = any(p.is_meta for p in model.parameters())
        if self.copies > 1:
            if not meta:
                with torch.no_grad():  # every rank starts from rank 0's weights, as DDP does
                    for tensor in [*model.parameters(), *model.buffers()]:
                        dist.broadcast(tensor.detach(), src=0)
            mesh = self.mesh["copies"] if self.mesh is not None else init_device_mesh(self.device.type, (self.world,))
            blocks = [block for module in model.modules() if isinstance(module, nn.ModuleList) for block in module]
            for block in blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(step, mesh=mesh)
        if meta:
            assert isinstance(model, Transformer)
            step.to_empty(device=self.device)
            model.reset_parameters()
        return step

    @staticmethod
    def accumulating(wrapped: nn.Module, sync: bool) -> AbstractContextManager[Any]:
        """Micro-batches before the last keep their gradients local; the last one synchronises them."""
        if isinstance(wrapped, FSDPModule):
            wrapped.set_requires_gradient_sync(sync)
        elif isinstance(wrapped, DistributedDataParallel) and not sync:
            return wrapped.no_sync()
        return contextlib.nullcontext()

    @staticmethod
    def whole(norm: torch.Tensor) -> torch.Tensor:
        """A gradient norm over sharded gradients is a partial DTensor: its value over all ranks."""
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def evaluate(
        self, wrapped: nn.Module, model: nn.Module, fn: Callable[[nn.Module], dict[str, float]]
    ) -> dict[str, float]:
        """``fn(model)``; under FSDP2 inside the root's forward (where the weights are gathered), the
        weights sharded again afterwards."""
        with self.split_loss():
            if not isinstance(wrapped, FSDPModule):
                return fn(model)
            result = wrapped(fn)
            wrapped.reshard()
            return result

    def load_weights(self, folder: Path, model: nn.Module) -> None:
        """After wrapping: a one-process checkpoint's weights, whole or into this rank's shards
        (a sharded checkpoint's load with the optimizer)."""
        if is_sharded(folder):
            if ckpt.earlier_layout(folder):
                raise HeadstartError(
                    f"checkpoint {folder}: its shards hold the earlier weight layout; resume it with the "
                    "headstart version that wrote it, or start from it with init= (one process reads it)"
                )
            return
        if not any(isinstance(p, DTensor) for p in model.parameters()):
            ckpt.load_weights(folder, model)
            return
        whole = ckpt.open_checkpoint(folder).model  # on the CPU, converted from an earlier layout if need be
        set_model_state_dict(model, whole.state_dict(), options=StateDictOptions(full_state_dict=True))

    def load_training(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After wrapping: the optimizer state (and, from shards, the weights) of ``folder``,
        resharded for however many ranks (one process included) this run has."""
        if is_sharded(folder):
            model_state, optimizer_state = get_state_dict(model, optimizer)
            with warnings.catch_warnings():  # one process reading shards is intended here
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder / SHARDED)
            set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
        else:
            load_optimizer(model, optimizer, ckpt.load_state(folder)["optimizer"])

    def save(
        self,
        root: Path,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        config: dict[str, Any],
        write_extras: Callable[[Path], None],
        keep: int,
    ) -> Path:
        """One process writes the optimizer into ``state.pt``. Several write their shards to a
        staging folder; rank 0 gathers the whole weights, moves the shards into its checkpoint
        and writes it as one process does (atomically)."""
        if self.mode == "none":
            state = {"optimizer": optimizer.state_dict(), **state}
            return ckpt.write_checkpoint(root, step, model, state, config, write_extras, keep=keep)
        staging = root / f".tmp_dcp_step_{step:08d}"
        if self.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        dist.barrier()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=staging)
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        final = root / f"step_{step:08d}"
        if self.main:

            def extras(folder: Path) -> None:
                staging.rename(folder / SHARDED)
                write_extras(folder)

            final = ckpt.write_checkpoint(root, step, model, state, config, extras, keep=keep, weights=weights)
        dist.barrier()
        return final


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave() -> None:
    """After a finished command, tear the process group down together: a rank that leaves while
    another still holds its connections aborts the whole launch."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def builds_on_meta(train: TrainConfig, model: ModelConfig, objective: str, continued: bool) -> bool:
    """Whether a run builds its model on the meta device (see the module docstring): a plain
    transformer, sharded or split under torchrun, not continuing a checkpoint (``init=``)."""
    transformer = model.kind == "transformer" and objective in tensor_parallel.OBJECTIVES
    return launched() and train.parallel in ("fsdp", "tp") and transformer and not continued


def start(train: TrainConfig, device: torch.device) -> Parallel:
    """This process's part in the run, with the process group started once (and destroyed at
    exit) when it runs under torchrun; its device is cuda:LOCAL_RANK on GPUs."""
    mode = train.parallel
    if mode == "auto":
        mode = "ddp" if launched() else "none"
    if mode == "none":
        if launched() and int(os.environ["WORLD_SIZE"]) > 1:
            raise HeadstartError(
                f"train.parallel=none: torchrun started {os.environ['WORLD_SIZE']} processes; "
                "set train.parallel=ddp or fsdp (or auto)"
            )
        return Parallel(device=device)
    if not launched():
        raise HeadstartError(
            f"train.parallel={mode}: needs torchrun's processes, e.g. "
            "torchrun --nproc_per_node=2 -m headstart pretrain RECIPE ..."
        )
    world = int(os.environ["WORLD_SIZE"])
    tp = (train.tp or world) if mode == "tp" else 1
    if world % tp:
        raise HeadstartError(f"train.tp={tp}: expected a divisor of the {world} ranks torchrun started")
    if train.batch_size % (world // tp):
        raise HeadstartError(
            f"train.batch_size={train.batch_size}: the global batch must split evenly over {world // tp} model copies"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        atexit.register(_destroy)  # after an error; a finished run calls leave()
    mesh = init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("copies", "tp")) if mode == "tp" else None
    return Parallel(mode, dist.get_rank(), dist.get_world_size(), device, tp, mesh)


class Step(nn.Module):
    """Runs ``fn(model, *args)`` as its forward. DDP and FSDP2 act around a module's forward, so
    the objective's whole loss (the vocabulary head, ELECTRA's two networks) runs inside one,
    and under FSDP2 so does evaluation, with the weights gathered."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


class LocalStep(Step):
    """A :class:`Step` under tensor parallelism: a loss computed on split logits comes back as
    a plain tensor, as it does from one process."""

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        result = fn(self.model, *args)
        if isinstance(result, tuple) and result and isinstance(result[0], torch.Tensor):
            return (tensor_parallel.local(result[0]), *result[1:])
        return result


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """A one-process optimizer state (tensors by parameter index) into this rank's optimizer:
    as it is over whole parameters, sharded like them under FSDP2."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        optimizer.load_state_dict(state)
        return
    names = {param: name for name, param in model.named_parameters()}
    order = [names[param] for group in optimizer.param_groups for param in group["params"]]
    by_name = {
        "state": {order[index]: values for index, values in state["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def is_sharded(folder: Path) -> bool:
    return (folder / SHARDED).is_dir()
