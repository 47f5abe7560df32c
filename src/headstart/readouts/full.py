"""Full fine-tuning through the one loop, with early stopping on the held-out part of the budget;
``head_init=probe`` starts the head from a fitted logistic probe first (LP-FT)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch import nn

from headstart.config import FinetuneConfig, TrainConfig, to_dict
from headstart.data.examples import ExampleBatches
from headstart.errors import Interrupted
from headstart.objectives.base import Objective
from headstart.readouts.context import Finetuning, Outcome
from headstart.readouts.probe import fit_logistic
from headstart.readouts.registry import ReadoutEntry, register
from headstart.train.loop import Job, LoopResult, Outputs, SampleSource, train_loop


def steps_for_epochs(train: TrainConfig, min_epochs: float, examples: int) -> TrainConfig:
    """``train`` with enough steps for ``min_epochs`` passes over ``examples``; evaluations are
    spaced out by the same factor, so a long run is not dominated by them."""
    needed = math.ceil(min_epochs * examples / (train.batch_size * train.grad_accum))
    if needed <= train.steps:
        return train
    every = math.ceil(train.eval_every * needed / train.steps) if train.eval_every else 0
    return replace(train, steps=needed, eval_every=every)


def layer_scale(depth: int, decay: float) -> Callable[[str], float]:
    """lr scale by parameter name: the head 1, block l decay^(depth − l), the embedding decay^(depth + 1)."""

    def scale(name: str) -> float:
        if not name.startswith("backbone."):
            return 1.0
        parts = name.split(".")
        if parts[1] == "blocks":
            return decay ** (depth - int(parts[2]))
        if parts[1] == "norm":
            return 1.0
        return decay ** (depth + 1)

    return scale


def probe_head(ft: Finetuning, model: nn.Module | None = None) -> float:
    """Replace the head of ``model`` (the cell's, by default) by a logistic probe fitted on frozen
    features of the budget; returns its FLOPs."""
    model = ft.model if model is None else model
    (x, y), (vx, vy) = ft.task.features(model, ft.fit_set), ft.task.features(model, ft.held_set)
    probe = fit_logistic(x, y, vx, vy, model.head.out_features)
    model.head = probe.as_linear().to(next(model.parameters()).device)
    return ft.features_flops(ft.fit_set, ft.held_set)


def fit_with_early_stopping(
    ft: Finetuning,
    model: nn.Module,
    train_set: Any,
    config: FinetuneConfig,
    name: str = "",
    objective: Objective | None = None,
    source: SampleSource | None = None,
    probe_each_eval: bool = False,
) -> tuple[LoopResult, dict[str, Any]]:
    """Train ``model`` on ``train_set`` through the one loop, scoring the held-out split at every
    evaluation; returns the loop's result and the best evaluation (score, weights, step: the
    earliest that reached it; ``last_score``: the final evaluation's). ``name``: a sub-directory
    of the run for this fit; ``objective`` and ``source``: in place of the task's loss and
    ``train_set``'s batches; ``probe_each_eval``: each evaluation first refits the head as a
    logistic probe (for losses that never train it). The result's FLOPs include those probes'."""
    task = ft.task
    best: dict[str, Any] = {"score": -1.0, "state": copy.deepcopy(model.state_dict()), "step": 0}
    every, steps = config.train.eval_every, config.train.steps
    step_of_eval = iter([*range(every, steps, every), steps] if every else [steps])  # when the loop evaluates
    probe_flops = [0.0]

    def evaluate(m: nn.Module) -> dict[str, float]:
        step = next(step_of_eval, steps)
        if probe_each_eval:
            probe_flops[0] += probe_head(ft, model)
        scores = task.score(model, ft.held_set)
        best["last_score"] = scores[task.metric]
        if scores[task.metric] > float(best["score"]):
            best.update(score=scores[task.metric], state=copy.deepcopy(model.state_dict()), step=step)
        # The reported set's score along the way, for curves only; the choice above never sees it.
        reported = task.score(model, ft.eval_set) if task.track_eval else {}
        return {**{f"val_{k}": v for k, v in scores.items()}, **{f"eval_{k}": v for k, v in reported.items()}}

    lr_scale = layer_scale(len(model.backbone.blocks), config.layer_decay) if config.layer_decay != 1.0 else None
    source = source or ExampleBatches(task.size(train_set), task.collate(train_set), config.train.seed)
    job = Job(model, objective or task.objective, source, config, 3 * ft.forward_flops, lr_scale)
    run_dir = ft.run_dir / name if name else ft.run_dir
    result = train_loop(job, Outputs(run_dir, to_dict(config), evaluate, console=ft.console, quiet=ft.quiet))
    if result.interrupted:  # a fine-tune is short: nothing half-trained is reported, a rerun starts over
        raise Interrupted(f"fine-tune {run_dir} interrupted at step {result.step}; rerun it to start over")
    return replace(result, flops=result.flops + probe_flops[0]), best


def finetuned(
    ft: Finetuning,
    model: nn.Module,
    train_set: Any,
    config: FinetuneConfig,
    name: str = "",
    keep_last: bool = False,
    **fit: Any,
) -> Outcome:
    """Fit with early stopping (``fit``: its ``objective`` and ``source``), then score the
    reported set once with the best weights. ``keep_last``: the final weights instead, and the
    final validation score (for training whose unlabelled loss goes on improving the model
    after a few held-out examples stop telling steps apart)."""
    result, best = fit_with_early_stopping(ft, model, train_set, config, name, **fit)
    if keep_last:
        metrics = ft.task.score(model, ft.eval_set, final=True)
        return Outcome(metrics, float(best["last_score"]), result.flops, result.step, result.step)
    model.load_state_dict(best["state"])
    metrics = ft.task.score(model, ft.eval_set, final=True)
    return Outcome(metrics, float(best["score"]), result.flops, int(best["step"]), result.step)


def full_finetune(ft: Finetuning) -> Outcome:
    flops = probe_head(ft) if ft.config.head_init == "probe" else 0.0
    outcome = finetuned(ft, ft.model, ft.fit_set, ft.config)
    return replace(outcome, flops=outcome.flops + flops)


register(ReadoutEntry("finetune", full_finetune))
