"""What the loop does around its steps, one object per concern: log the training window,
guard against diverged steps, evaluate, checkpoint, and decide when to stop. The loop calls them; they never call it."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.config import TrainConfig
from headstart.errors import HeadstartError
from headstart.train.device import peak_memory
from headstart.train.distributed import Parallel
from headstart.train.log import MetricsFile, ProgressDisplay
from headstart.train.state import TrainState


@dataclass
class StepLog:
    """The training window between two log lines: loss, extra metrics and tokens, averaged over
    the ranks and written as one record (step, loss, lr, grad norm, tokens/s, MFU, ETA, peak memory)."""

    parallel: Parallel
    metrics: MetricsFile | None  # rank 0 writes
    progress: ProgressDisplay
    flops_per_unit: float
    peak: float  # FLOP/s of all ranks together: MFU's divisor
    total_steps: int
    every: int
    start: float = field(default_factory=time.perf_counter)
    start_step: int = 0
    tokens: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)
    extra: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, loss: torch.Tensor, extra: dict[str, torch.Tensor], tokens: int) -> None:
        self.losses.append(loss)
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(value)
        self.tokens += tokens

    def after_step(self, state: TrainState, lr: float, grad_norm: torch.Tensor, skipped: int = 0) -> None:
        """Write the window's record when a log step is due; ``skipped``: steps the guard has
        skipped so far (recorded once there are any)."""
        if state.step % self.every and state.step != self.total_steps:
            return
        now = time.perf_counter()
        taken = bool(self.parallel.any_rank(bool(self.losses))[0])  # a window of skipped steps only has no loss
        loss = self.parallel.mean(torch.stack(self.losses).float().mean()).item() if taken else None
        tokens_per_s = self.tokens / max(now - self.start, 1e-9)
        record = {
            "step": state.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm if math.isfinite(norm := float(self.parallel.whole(grad_norm))) else None,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.flops_per_unit / self.peak,
            "tokens": state.tokens_seen,
            "elapsed_s": state.elapsed_s,
            "eta_s": (self.total_steps - state.step) * (now - self.start) / max(1, state.step - self.start_step),
            "peak_memory_bytes": peak_memory(state.device),  # rank 0's
            **{k: self.parallel.mean(torch.stack(v).float().mean()).item() for k, v in self.extra.items()},
            **({"skipped_steps": skipped} if skipped else {}),
        }
        if self.metrics is not None:
            self.metrics.write(record)
        self.progress.update(record, self.total_steps)
        self.restart(state.step)

    def restart(self, step: int) -> None:
        self.start, self.start_step, self.tokens, self.losses, self.extra = time.perf_counter(), step, 0, [], {}

    def state_dict(self) -> dict[str, Any]:
        """The window's losses so far: a resumed run's first record averages the same steps as an
        uninterrupted run's (its throughput counts only what this process has timed)."""
        return {"losses": [x.detach().cpu() for x in self.losses],
                "extra": {k: [x.detach().cpu() for x in v] for k, v in self.extra.items()}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.parallel.device
        self.losses = [x.to(device) for x in state.get("losses", [])]
        self.extra = {k: [x.to(device) for x in v] for k, v in state.get("extra", {}).items()}

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation) out of the window's time: it is not training throughput."""
        self.start += seconds


@dataclass
class StepGuard:
    """Whether a step's update is taken: not when its loss or gradient norm is NaN or inf, nor
    (``spike_factor`` > 0) when its loss exceeds that many times the median of the last 32 taken
    steps. Skipped steps are counted; ``max_bad`` in a row stop the run before anything diverged is
    written. Its counters and recent losses go into every checkpoint, so a resumed run decides
    exactly as an uninterrupted one."""

    parallel: Parallel
    max_bad: int
    spike_factor: float
    lr_hint: float  # the configured lr, named when the run stops
    skipped: int = 0
    in_a_row: int = 0
    recent: list[float] = field(default_factory=list)

    def take(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether step ``step`` (its summed micro-batch ``loss`` on this rank) updates the weights."""
        bad_here = not bool(torch.isfinite(loss).all() and torch.isfinite(self.parallel.whole(grad_norm)))
        bad = self.parallel.any_rank(bad_here)[0]
        value = float("nan")
        if not bad and self.spike_factor > 0:
            value = self.parallel.mean(loss.detach().float()).item()
            bad = len(self.recent) >= 8 and value > self.spike_factor * statistics.median(self.recent)
        if not bad:
            self.in_a_row = 0
            if self.spike_factor > 0:
                self.recent = [*self.recent, value][-32:]
            return True
        self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
        if self.in_a_row >= self.max_bad:
            what = "a NaN or inf loss or gradient" if bad_here or math.isnan(value) else "a loss spike"
            raise HeadstartError(
                f"training diverged at step {step + 1}: {self.in_a_row} steps in a row had {what} (each skipped, "
                f"{self.skipped} in all; nothing diverged was written); lower optim.lr (now {self.lr_hint:g}) or "
                "raise schedule.warmup_steps and start again, or train on from the last checkpoint as a new run: "
                "init=CHECKPOINT init_optimizer=carry run.name=NEW"
            )
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped, self.in_a_row = state.get("skipped", 0), state.get("in_a_row", 0)
        self.recent = list(state.get("recent", []))


@dataclass
class Evaluation:
    """Scores the model (``evaluate``: eval mode, no gradients, the run's precision) and logs it."""

    evaluate: Callable[[nn.Module], dict[str, float]] | None
    parallel: Parallel
    wrapped: nn.Module
    autocast: AbstractContextManager[Any]
    log: StepLog

    def __call__(self, state: TrainState) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        model, began = state.model, time.perf_counter()
        model.eval()
        with torch.no_grad(), self.autocast:
            result = self.parallel.evaluate(self.wrapped, model, self.evaluate)
        model.train()
        record = {"step": state.step, "split": "val", "tokens": state.tokens_seen, "elapsed_s": state.elapsed_s}
        if self.log.metrics is not None:
            self.log.metrics.write({**record, **result})
        self.log.progress.note(f"step {state.step}  " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
        self.log.exclude(time.perf_counter() - began)
        return result


@dataclass
class Checkpointing:
    """Writes the run's checkpoint: weights, optimizer and state through the parallelism
    strategy, plus the run's extras, its metrics so far and what the run has cost."""

    parallel: Parallel
    root: Path
    config: dict[str, Any]
    keep: int
    flops_per_unit: float
    precision: torch.dtype
    metrics: MetricsFile | None
    write_extras: Callable[[Path], None] | None = None
    #: loop parts with a state of their own (the log window, the step guard), saved under their names
    components: dict[str, Any] = field(default_factory=dict)

    def __call__(self, state: TrainState) -> Path:
        saved = {**state.state_dict(), **{name: part.state_dict() for name, part in self.components.items()}}
        compute = {
            "flops": state.flops,
            "flops_per_token": self.flops_per_unit,
            "tokens": state.tokens_seen,
            "steps": state.step,
            "wall_seconds": saved["elapsed_s"],
            "device": str(state.device),
            "precision": str(self.precision).removeprefix("torch."),
        }

        def extras(folder: Path) -> None:
            if self.write_extras is not None:
                self.write_extras(folder)
            if self.metrics is not None and self.metrics.path.exists():
                (folder / "metrics.jsonl").write_bytes(self.metrics.path.read_bytes())
            (folder / "compute.json").write_text(json.dumps(compute, indent=1), encoding="utf-8")

        return self.parallel.save(
            self.root, state.step, state.model, state.optimizer, saved, self.config, extras, self.keep
        )


@dataclass
class Stopping:
    """Stops between steps on SIGINT/SIGTERM (after a checkpoint) or past ``max_minutes``, on
    every rank at the same step."""

    parallel: Parallel
    max_minutes: float
    start: float = field(default_factory=time.perf_counter)
    signals: list[int] = field(default_factory=list)
    signalled: bool = False

    def __call__(self) -> bool:
        out_of_time = self.max_minutes > 0 and time.perf_counter() - self.start > 60 * self.max_minutes
        self.signalled, out_of_time = self.parallel.any_rank(bool(self.signals), out_of_time)
        return self.signalled or out_of_time

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a flag checked between steps, so the loop can checkpoint first."""

        def handler(signum: int, frame: object) -> None:
            self.signals.append(signum)

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


@dataclass
class Callbacks:
    """The five things the loop does besides stepping."""

    log: StepLog
    evaluate: Evaluation
    checkpoint: Checkpointing
    stop: Stopping
    guard: StepGuard

    def due(self, train: TrainConfig, step: int) -> tuple[bool, bool]:
        """Whether an evaluation and a checkpoint fall after ``step`` (the last step has both anyway)."""
        last = step >= train.steps
        evaluate = bool(train.eval_every) and step % train.eval_every == 0 and not last
        checkpoint = bool(train.checkpoint_every) and step % train.checkpoint_every == 0 and not last
        return evaluate, checkpoint
