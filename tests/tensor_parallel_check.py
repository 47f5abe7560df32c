"""Run under torchrun by test_tensor_parallel.py: on every rank, a transformer built on the meta
device and split (TP, or 2-D when TP_RANKS is fewer than the ranks) against the same transformer
whole in this process — initial weights, loss, gradients, gradient norm and one Muon step, for a
decoder and an encoder, tied and untied, with and without QK-norm. With MEMORY_CAP=MODE (tp or
fsdp): under an address-space limit of three quarters of the model's weights, the model starts
split or sharded, and building it whole fails. Exits non-zero on a mismatch."""

import os
import resource
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from headstart.config import ModelConfig, OptimConfig
from headstart.models.transformer import Transformer
from headstart.train.distributed import Parallel
from headstart.train.optim import build_optimizer
from headstart.train.tensor_parallel import vocab_argmax

TOLERANCE = 1e-5  # relative to each tensor's largest entry
STEP_TOLERANCE = 1e-4  # after an AdamW step, which divides tiny gradients by their own size


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def worst(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    return max(
        float((a - whole(b)).abs().max() / a.abs().max().clamp(min=1e-12)) for a, b in zip(expected, got, strict=True)
    )


def loss_of(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logits = model.logits(model(ids[:, :-1]))
    return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()), {"argmax": vocab_argmax(logits)}


def check(parallel: Parallel, config: ModelConfig) -> None:
    torch.manual_seed(0)
    reference = Transformer(config)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(config)
    wrapped = parallel.wrap(model, "clm", 16, compiled=False)
    assert worst([p.detach() for p in reference.parameters()], [p.detach() for p in model.parameters()]) == 0.0
    ids = torch.randint(0, config.vocab_size, (4, 17), generator=torch.Generator().manual_seed(1))
    expected, extra = loss_of(reference, ids)
    expected.backward()
    with parallel.split_loss():
        got, got_extra = wrapped(loss_of, ids)
        got.backward()
    assert not isinstance(got, DTensor) and abs(got.item() - expected.item()) <= TOLERANCE * expected.item()
    assert torch.equal(got_extra["argmax"], extra["argmax"])
    assert worst([p.grad for p in reference.parameters()], [p.grad for p in model.parameters()]) <= TOLERANCE
    norms = [torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5) for m in (reference, model)]
    assert abs(float(Parallel.whole(norms[1])) - float(norms[0])) <= TOLERANCE * float(norms[0])
    optimizers = [build_optimizer(m, OptimConfig(name="muon", lr=0.02), parallel.device) for m in (reference, model)]
    for optimizer in optimizers:
        optimizer.step()
    stepped = worst([p.detach() for p in reference.parameters()], [p.detach() for p in model.parameters()])
    assert stepped <= STEP_TOLERANCE, stepped


def address_space() -> int:
    """Bytes this process has mapped now (VmSize)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmSize"].split()[0]) * 1024


def starts_under_a_cap(mode: str) -> None:
    """Blocks of many small matrices (the largest one the init draws whole at a time is 1/48 of
    the model): 100 MB of weights; the cap leaves room for three quarters of them."""
    config = ModelConfig(vocab_size=512, n_layer=8, n_head=8, n_embd=512, context=16)
    with torch.device("meta"):
        weights = 4 * Transformer(config).num_params()  # fp32
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("copies", "tp")) if mode == "tp" else None
    parallel = Parallel(mode, dist.get_rank(), world, torch.device("cpu"), world if mode == "tp" else 1, mesh)
    dist.barrier()
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + 3 * weights // 4, resource.RLIM_INFINITY))
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(config)
    parallel.wrap(model, "clm", 16, compiled=False)
    assert all(isinstance(p, DTensor) and not p.is_meta for p in model.parameters())
    try:
        Transformer(config)
    except (RuntimeError, MemoryError):
        return
    raise AssertionError("the whole model was built under a cap below its weights")


def main() -> None:
    dist.init_process_group("gloo")
    if "MEMORY_CAP" in os.environ:
        starts_under_a_cap(os.environ["MEMORY_CAP"])
        return
    world, tp = dist.get_world_size(), int(os.environ["TP_RANKS"])
    mesh = init_device_mesh("cpu", (world // tp, tp), mesh_dim_names=("copies", "tp"))
    parallel = Parallel("tp", dist.get_rank(), world, torch.device("cpu"), tp, mesh)
    shape = {"vocab_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 32, "context": 16}
    for causal, qk_norm, tie in ((True, True, True), (False, False, True), (True, False, False)):
        check(parallel, ModelConfig(**shape, causal=causal, qk_norm=qk_norm, tie_embeddings=tie))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
