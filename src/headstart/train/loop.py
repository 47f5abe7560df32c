"""The one training loop, for every objective and task.

It knows nothing of text or images: a *source* yields deterministic samples by index, an
*objective* turns them into a batch and a batch into a loss, an *evaluate* callback scores
the model. The loop adds the optimizer, the schedule, accumulation, clipping, mixed precision,
periodic evaluation and atomic checkpoints, and resumes exactly: everything random is a pure
function of the step or is restored from the checkpoint (``state.py``). Its parts, one concern
each: the run's position (``TrainState``), the parallelism strategy (``distributed.Parallel``:
one process, DDP or FSDP2), and the callbacks around the steps (``callbacks.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn

from headstart.config import OptimConfig, ScheduleConfig, TrainConfig
from headstart.files import read_jsonl
from headstart.objectives.base import Objective
from headstart.train import checkpoint as ckpt
from headstart.train import distributed
from headstart.train.callbacks import Callbacks, Checkpointing, Evaluation, StepGuard, StepLog, Stopping
from headstart.train.device import pick_compile, pick_device, pick_precision
from headstart.train.distributed import Parallel
from headstart.train.log import MetricsFile, ProgressDisplay
from headstart.train.optim import build_optimizer, carried_state
from headstart.train.schedule import lr_multiplier
from headstart.train.state import TrainState


class SampleSource(Protocol):
    def batch(self, first: int, count: int) -> Any:
        """Samples ``first .. first+count-1``, deterministic in the index."""
        ...


class LoopSettings(Protocol):
    """A run's config as the loop reads it (pretraining and fine-tuning configs both are)."""

    train: TrainConfig
    optim: OptimConfig
    schedule: ScheduleConfig


@dataclass
class Job:
    """What a run trains: the model, the objective that scores it, the samples, the settings,
    and the training FLOPs one unit (a token, an image) costs. ``lr_scale``: a learning-rate
    factor by parameter name (layer-wise decay)."""

    model: nn.Module
    objective: Objective
    source: SampleSource
    settings: LoopSettings
    flops_per_unit: float
    lr_scale: Callable[[str], float] | None = None


@dataclass
class Outputs:
    """Where a run writes and what it shows: its directory, the config every checkpoint holds,
    the evaluation it logs, and files of its own for each checkpoint (``write_extras``)."""

    run_dir: Path
    config: dict[str, Any]
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    write_extras: Callable[[Path], None] | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    quiet: bool = False


@dataclass
class Start:
    """Where a run starts: a checkpoint to resume, or fresh, with compute already spent on the
    model (a warm start: FLOPs and seconds), another run's optimizer state to start from instead
    of zero moments (and where it came from), and whether to evaluate before the first step."""

    resume: Path | None = None
    prior_flops: float = 0.0
    prior_seconds: float = 0.0
    carried_optimizer: tuple[dict[str, Any], str] | None = None
    eval_at_start: bool = False


@dataclass
class LoopResult:
    step: int
    tokens_seen: int
    flops: float
    elapsed_s: float
    last_eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted: bool = False


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + micro)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def train_loop(job: Job, outputs: Outputs, start: Start | None = None) -> LoopResult:
    """Train ``job.model`` for ``train.steps`` optimizer steps; returns where it ended."""
    start = start or Start()
    train = job.settings.train
    parallel = distributed.start(train, pick_device(train.device))
    parallel.refuse_coupled(job.objective)
    dtype = parallel.from_main(pick_precision(train.precision, parallel.device))
    state, wrapped, saved = initial_state(job, start, parallel)
    autocast = (
        torch.autocast(parallel.device.type, dtype=torch.bfloat16)
        if dtype == torch.bfloat16
        else contextlib.nullcontext()
    )
    callbacks = build_callbacks(job, outputs, start, parallel, state, wrapped, dtype, autocast, saved)
    if start.resume is not None and state.step >= train.steps:  # resuming a finished run: nothing to redo
        return already_finished(state, callbacks, start.resume, outputs.run_dir)
    last_eval: dict[str, float] = {}
    last_checkpoint: Path | None = None
    try:
        with callbacks.stop.catching_signals():
            if start.eval_at_start and start.resume is None:
                callbacks.evaluate(state)
            while state.step < train.steps:
                lr = set_learning_rate(state.optimizer, state.step, job.settings)
                grad_norm = train_step(job, state, wrapped, parallel, autocast, callbacks)
                callbacks.log.after_step(state, lr, grad_norm, callbacks.guard.skipped)
                evaluate, checkpoint = callbacks.due(train, state.step)
                if evaluate:
                    last_eval = callbacks.evaluate(state)
                if callbacks.stop():
                    break
                if checkpoint:
                    last_checkpoint = callbacks.checkpoint(state)
        if not callbacks.stop.signalled:
            last_eval = callbacks.evaluate(state) or last_eval
        last_checkpoint = callbacks.checkpoint(state)
    finally:
        callbacks.log.progress.close()
        if callbacks.log.metrics is not None:
            callbacks.log.metrics.close()
    return LoopResult(
        state.step, state.tokens_seen, state.flops, state.elapsed_s, last_eval, last_checkpoint,
        callbacks.stop.signalled,
    )  # fmt: skip


def already_finished(state: TrainState, callbacks: Callbacks, checkpoint: Path, run_dir: Path) -> LoopResult:
    """A run resumed from its final checkpoint (killed after writing it): its last evaluation as
    logged, and nothing evaluated, logged or written again."""
    callbacks.log.progress.close()
    if callbacks.log.metrics is not None:
        callbacks.log.metrics.close()
    evaluations = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "val"]
    last = evaluations[-1] if evaluations else {}
    scores = {k: v for k, v in last.items() if k not in ("step", "split", "tokens", "elapsed_s")}
    return LoopResult(state.step, state.tokens_seen, state.flops, state.elapsed_s, scores, checkpoint)


def initial_state(job: Job, start: Start, parallel: Parallel) -> tuple[TrainState, nn.Module, dict[str, Any]]:
    """The model on its device, wrapped for the strategy, its optimizer, and the run's position:
    from ``start.resume`` (weights, optimizer, counters, RNG) or fresh; and the resumed
    checkpoint's saved state (empty when fresh), which the callbacks restore theirs from."""
    model, train = job.model, job.settings.train
    if not any(p.is_meta for p in model.parameters()):  # built on the meta device: its shards get memory
        model.to(parallel.device)
    compiled = pick_compile(train.compile, model, job.objective.name, train.steps, parallel.world)
    wrapped = parallel.wrap(model, job.objective.name, train.seq_len, compiled)
    if start.resume is not None:
        parallel.load_weights(start.resume, model)
    optimizer = build_optimizer(model, job.settings.optim, parallel.device, job.lr_scale)
    state = TrainState(model, optimizer, parallel.device, flops=start.prior_flops, elapsed_before=start.prior_seconds)
    saved: dict[str, Any] = {}
    if start.resume is not None:
        parallel.load_training(start.resume, model, optimizer)
        saved = ckpt.load_state(start.resume)
        state.load_state_dict(saved)
    elif start.carried_optimizer is not None:
        distributed.load_optimizer(model, optimizer, carried_state(optimizer, *start.carried_optimizer))
    return state, wrapped, saved


def build_callbacks(
    job: Job,
    outputs: Outputs,
    start: Start,
    parallel: Parallel,
    state: TrainState,
    wrapped: nn.Module,
    dtype: torch.dtype,
    autocast: AbstractContextManager[Any],
    saved: dict[str, Any],
) -> Callbacks:
    train = job.settings.train
    metrics = (  # rank 0 writes
        MetricsFile(outputs.run_dir / "metrics.jsonl", start.resume, state.step, train.tensorboard)
        if parallel.main
        else None
    )
    quiet = outputs.quiet or not parallel.main
    progress = ProgressDisplay(outputs.console, train.steps, state.step, quiet=quiet, unit=job.objective.unit)
    log = StepLog(
        parallel, metrics, progress, job.flops_per_unit, parallel.peak_flops(dtype), train.steps, train.log_every,
        start_step=state.step,
    )  # fmt: skip
    guard = StepGuard(parallel, train.max_bad_steps, train.spike_factor, job.settings.optim.lr)
    components = {"log_window": log, "guard": guard}
    for name, part in components.items():
        part.load_state_dict(saved.get(name, {}))
    root = outputs.run_dir / "checkpoints"
    return Callbacks(
        log=log,
        evaluate=Evaluation(outputs.evaluate, parallel, wrapped, autocast, log),
        checkpoint=Checkpointing(
            parallel,
            root,
            outputs.config,
            train.keep_checkpoints,
            job.flops_per_unit,
            dtype,
            metrics,
            outputs.write_extras,
            components,
        ),
        stop=Stopping(parallel, train.max_minutes),
        guard=guard,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, settings: LoopSettings) -> float:
    """The schedule's learning rate at ``step``, times each parameter group's own scale."""
    lr = settings.optim.lr * lr_multiplier(step, settings.train.steps, settings.schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr


def train_step(
    job: Job,
    state: TrainState,
    wrapped: nn.Module,
    parallel: Parallel,
    autocast: AbstractContextManager[Any],
    callbacks: Callbacks,
) -> torch.Tensor:
    """One optimizer step over ``grad_accum`` micro-batches of the global batch (this rank's rows
    of each), unless the guard skips it; returns the gradient norm before clipping. A skipped step
    still moves the data cursor and the schedule on, and its compute counts."""
    train, objective = job.settings.train, job.objective
    logged = []
    for micro in range(train.grad_accum):
        raw = job.source.batch(state.samples_seen + micro * train.batch_size, train.batch_size)
        full = objective.make_batch(raw, step_generator(train.seed, state.step, micro))  # the global batch
        rows = parallel.rows(full)
        batch, weight = to_device(rows, parallel.device), parallel.weight(objective, full, rows)
        with parallel.accumulating(wrapped, sync=micro == train.grad_accum - 1), parallel.split_loss():
            if objective.chunk > 0:  # GradCache: the objective back-propagates itself
                with autocast:
                    loss, extra = wrapped(objective.backward_loss, batch, 1.0 / train.grad_accum)
            else:
                with autocast:
                    loss, extra = wrapped(objective.loss, batch)
                (loss * weight / train.grad_accum).backward()
        tokens = objective.tokens(full)  # all ranks'
        logged.append((loss.detach() * weight, extra, tokens))
        state.tokens_seen += tokens
        state.flops += job.flops_per_unit * tokens
    clip = job.settings.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip if clip > 0 else math.inf)
    if callbacks.guard.take(state.step, torch.stack([loss for loss, _, _ in logged]).sum(), grad_norm):
        state.optimizer.step()
        for loss, extra, tokens in logged:
            callbacks.log.add(loss, extra, tokens)
    else:
        callbacks.log.tokens += sum(tokens for _, _, tokens in logged)
    state.optimizer.zero_grad(set_to_none=True)
    state.samples_seen += train.batch_size * train.grad_accum
    state.step += 1
    return grad_norm
