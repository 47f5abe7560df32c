"""The one training loop, for every objective and task.

It knows nothing of text or images: a *source* yields deterministic samples by index, an
*objective* turns them into a batch and a batch into a loss, an *evaluate* callback scores
the model. The loop adds AdamW, the schedule, accumulation, clipping, mixed precision,
periodic evaluation and atomic checkpoints, and resumes exactly: everything random is a
pure function of the step or is restored from the checkpoint. Under torchrun the same loop
runs on every process, each training on its rows of every global batch (``distributed.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn

from headstart.config import OptimConfig, ScheduleConfig, TrainConfig
from headstart.errors import HeadstartError
from headstart.objectives.base import Objective
from headstart.train import checkpoint as ckpt
from headstart.train import distributed
from headstart.train.flops import peak_flops
from headstart.train.log import MetricsFile, ProgressDisplay
from headstart.train.optim import build_optimizer, carried_state
from headstart.train.schedule import lr_multiplier


class SampleSource(Protocol):
    def batch(self, first: int, count: int) -> Any:
        """Samples ``first .. first+count-1``, deterministic in the index."""
        ...


@dataclass
class LoopResult:
    step: int
    tokens_seen: int
    flops: float
    elapsed_s: float
    last_eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted: bool = False


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
    """``auto`` takes bf16 where the hardware runs it faster than fp32, measured, not assumed."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return (
        torch.bfloat16
        if peak_flops(torch.bfloat16, device) > 1.2 * peak_flops(torch.float32, device)
        else torch.float32
    )


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + micro)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so the loop can checkpoint first."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train_loop(
    model: nn.Module,
    objective: Objective,
    source: SampleSource,
    train: TrainConfig,
    optim: OptimConfig,
    schedule: ScheduleConfig,
    run_dir: Path,
    config_dict: dict[str, Any],
    flops_per_token: float,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    write_extras: Callable[[Path], None] | None = None,
    lr_scale: Callable[[str], float] | None = None,
    prior: tuple[float, float] = (0.0, 0.0),
    resume: Path | None = None,
    carried_optimizer: tuple[dict[str, Any], str] | None = None,
    eval_at_start: bool = False,
    console: Console | None = None,
    quiet: bool = False,
) -> LoopResult:
    """Train ``model`` for ``train.steps`` optimizer steps; returns where it ended.

    ``prior``: FLOPs and seconds already spent on the model before the loop (a warm start),
    counted in its compute record. ``carried_optimizer``: another run's optimizer state (and
    where it came from) that a fresh run starts from instead of zero moments. ``eval_at_start``:
    a fresh run also evaluates before its first step (a continued run's starting point)."""
    console = console or Console(stderr=True)
    parallel = distributed.start(train, pick_device(train.device))
    distributed.refuse_coupled(objective, parallel)
    device = parallel.device
    dtype = parallel.from_main(pick_precision(train.precision, device))
    model.to(device)
    sharded = resume is not None and distributed.is_sharded(resume)
    if resume is not None and not sharded:
        ckpt.load_weights(resume, model)
    wrapped = distributed.wrap(torch.compile(model) if train.compile else model, parallel)
    optimizer = build_optimizer(model, optim, device, lr_scale)
    if carried_optimizer is not None and resume is None:
        distributed.load_optimizer(model, optimizer, carried_state(optimizer, *carried_optimizer))
    step, samples_seen, tokens_seen = 0, 0, 0
    flops_spent, elapsed_before = prior
    if resume is not None:
        state = ckpt.load_state(resume)
        if sharded:
            distributed.load_sharded(resume, model, optimizer)
        else:
            distributed.load_optimizer(model, optimizer, state["optimizer"])
        step, samples_seen, tokens_seen = state["step"], state["samples_seen"], state["tokens_seen"]
        flops_spent, elapsed_before = state["flops"], state["elapsed_s"]
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    peak = peak_flops(dtype, device)
    resume_step = step if resume is not None else None
    metrics = MetricsFile(run_dir / "metrics.jsonl", resume_step) if parallel.main else None  # rank 0 writes
    unit = getattr(objective, "unit", "tok")
    progress = ProgressDisplay(console, train.steps, step, quiet=quiet or not parallel.main, unit=unit)
    per_step = train.batch_size * train.grad_accum
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    )
    last_eval: dict[str, float] = {}
    last_checkpoint: Path | None = None
    start_time = time.perf_counter()
    window_start, window_step, window_tokens, window_losses = start_time, step, 0, []
    window_extra: dict[str, list[torch.Tensor]] = {}

    def save(at_step: int) -> Path:
        state = {"optimizer": optimizer.state_dict()} if parallel.mode == "none" else {}  # else: in the shards
        state.update(
            step=at_step,
            samples_seen=samples_seen,
            tokens_seen=tokens_seen,
            flops=flops_spent,
            elapsed_s=elapsed_before + time.perf_counter() - start_time,
            torch_rng=torch.get_rng_state(),
        )
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)

        def extras(folder: Path) -> None:
            if write_extras is not None:
                write_extras(folder)
            if metrics is not None and metrics.path.exists():
                (folder / "metrics.jsonl").write_bytes(metrics.path.read_bytes())
            compute = {
                "flops": flops_spent,
                "flops_per_token": flops_per_token,
                "tokens": tokens_seen,
                "steps": at_step,
                "wall_seconds": state["elapsed_s"],
                "device": str(device),
                "precision": str(dtype).removeprefix("torch."),
            }
            (folder / "compute.json").write_text(json.dumps(compute, indent=1), encoding="utf-8")

        root, keep = run_dir / "checkpoints", train.keep_checkpoints
        if parallel.mode == "none":
            return ckpt.write_checkpoint(root, at_step, model, state, config_dict, extras, keep=keep)
        return distributed.save_checkpoint(parallel, root, at_step, model, optimizer, state, config_dict, extras, keep)

    def run_eval(at_step: int) -> dict[str, float]:
        if evaluate is None:
            return {}
        model.eval()
        with torch.no_grad(), autocast:
            result = distributed.evaluate(wrapped, model, evaluate)
        model.train()
        elapsed = elapsed_before + time.perf_counter() - start_time
        if metrics is not None:
            metrics.write({"step": at_step, "split": "val", "tokens": tokens_seen, "elapsed_s": elapsed, **result})
        progress.note(f"step {at_step}  " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    interrupted = False
    if eval_at_start and resume is None:
        run_eval(0)
    model.train()
    try:
        with deferred_interrupt() as signals:
            while step < train.steps:
                lr = optim.lr * lr_multiplier(step, train.steps, schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                for micro in range(train.grad_accum):
                    raw = source.batch(samples_seen + micro * train.batch_size, train.batch_size)
                    full = objective.make_batch(raw, step_generator(train.seed, step, micro))  # the global batch
                    rows = parallel.rows(full)
                    batch, weight = to_device(rows, device), parallel.weight(objective, full, rows)
                    with distributed.accumulating(wrapped, parallel, sync=micro == train.grad_accum - 1):
                        if getattr(objective, "chunk", 0) > 0:  # GradCache: the objective back-propagates itself
                            with autocast:
                                loss, extra = wrapped(objective.backward_loss, batch, 1.0 / train.grad_accum)
                        else:
                            with autocast:
                                loss, extra = wrapped(objective.loss, batch)
                            (loss * weight / train.grad_accum).backward()
                    window_losses.append(loss.detach() * weight)
                    for key, value in extra.items():
                        window_extra.setdefault(key, []).append(value)
                    n_tokens = objective.tokens(full)  # all ranks'
                    tokens_seen += n_tokens
                    window_tokens += n_tokens
                    flops_spent += flops_per_token * n_tokens
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), optim.grad_clip if optim.grad_clip > 0 else math.inf
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                samples_seen += per_step
                step += 1
                if step % train.log_every == 0 or step == train.steps:
                    now = time.perf_counter()
                    loss_value = parallel.mean(torch.stack(window_losses).float().mean()).item()
                    if not math.isfinite(loss_value):
                        raise HeadstartError(
                            f"training diverged at step {step} (loss {loss_value}); "
                            f"lower optim.lr (now {optim.lr:g}) or raise schedule.warmup_steps"
                        )
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    elapsed = elapsed_before + now - start_time
                    record = {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": float(distributed.whole(grad_norm)),
                        "tokens_per_s": tokens_per_s,
                        "mfu": tokens_per_s * flops_per_token / peak,
                        "tokens": tokens_seen,
                        "elapsed_s": elapsed,
                        "eta_s": (train.steps - step) * (now - window_start) / max(1, step - window_step),
                        **{k: parallel.mean(torch.stack(v).float().mean()).item() for k, v in window_extra.items()},
                    }
                    if metrics is not None:
                        metrics.write(record)
                    progress.update(record, train.steps)
                    window_start, window_step, window_tokens, window_losses, window_extra = now, step, 0, [], {}
                if train.eval_every and step % train.eval_every == 0 and step < train.steps:
                    last_eval = run_eval(step)
                    window_start = time.perf_counter()  # evaluation time is not training throughput
                out_of_time = train.max_minutes > 0 and time.perf_counter() - start_time > 60 * train.max_minutes
                signalled, out_of_time = parallel.any_rank(bool(signals), out_of_time)
                if signalled or out_of_time:
                    interrupted = signalled
                    break
                if train.checkpoint_every and step % train.checkpoint_every == 0 and step < train.steps:
                    last_checkpoint = save(step)
        if not interrupted:
            last_eval = run_eval(step) or last_eval
        last_checkpoint = save(step)
    finally:
        progress.close()
    return LoopResult(
        step=step,
        tokens_seen=tokens_seen,
        flops=flops_spent,
        elapsed_s=elapsed_before + time.perf_counter() - start_time,
        last_eval=last_eval,
        checkpoint=last_checkpoint,
        interrupted=interrupted,
    )
