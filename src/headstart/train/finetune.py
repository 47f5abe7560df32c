"""Supervised fine-tuning through the one loop: a pretrained checkpoint (or the same
architecture from random init) + a task head, on a label budget, with early stopping on a
validation split carved from that budget — never on the set it reports."""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from tokenizers import Tokenizer

from headstart.config import FinetuneConfig, PretrainConfig, TrainConfig, build, save_yaml, to_dict
from headstart.data.labelled import stratified_budget
from headstart.data.tokenizers import load_tokenizer, tokenizer_info
from headstart.errors import HeadstartError, Interrupted
from headstart.models.transformer import Transformer
from headstart.tasks import make_task
from headstart.tasks.base import ExampleBatches
from headstart.train import checkpoint as ckpt
from headstart.train.flops import forward_flops_per_token
from headstart.train.loop import train_loop
from headstart.train.pretrain import backbone_of, build_model
from headstart.train.probe import fit_logistic


@dataclass
class FinetuneResult:
    metrics: dict[str, float]  # on the reported set, with the weights of the best validation step
    metric: str  # the task's primary metric (what best_val is)
    best_step: int
    best_val: float
    steps: int
    flops: float
    run_dir: Path


def load_backbone(config: FinetuneConfig) -> tuple[Transformer, Tokenizer]:
    """The pretrained backbone, or the same architecture freshly initialised from the seed."""
    source = config.architecture if config.init == "scratch" else config.init
    if not source:
        raise HeadstartError("architecture: init=scratch needs a checkpoint whose shape and tokenizer to copy")
    folder = ckpt.resolve_checkpoint(source)
    ckpt.verify(folder)
    pretrained = build(PretrainConfig, ckpt.read_config(folder), "checkpoint config")
    torch.manual_seed(config.train.seed)
    pretrained = replace(pretrained, model=replace(pretrained.model, dropout=0.0))
    trained = build_model(pretrained)
    if config.init != "scratch":
        ckpt.load_weights(folder, trained)
    return backbone_of(trained), load_tokenizer(folder / "tokenizer.json")


def steps_for_epochs(train: TrainConfig, min_epochs: float, examples: int) -> TrainConfig:
    """``train`` with enough steps for ``min_epochs`` passes over ``examples``; evaluations are
    spaced out by the same factor, so a long run is not dominated by them."""
    needed = math.ceil(min_epochs * examples / (train.batch_size * train.grad_accum))
    if needed <= train.steps:
        return train
    every = math.ceil(train.eval_every * needed / train.steps) if train.eval_every else 0
    return replace(train, steps=needed, eval_every=every)


def layer_scale(depth: int, decay: float):
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


def finetune(config: FinetuneConfig, console: Console | None = None, quiet: bool = False) -> FinetuneResult:
    console = console or Console(stderr=True)
    if not config.task.train or not config.task.eval:
        raise HeadstartError("task.train and task.eval: expected JSONL files of labelled records")
    task = make_task(config.task)
    backbone, tokenizer = load_backbone(config)
    if config.task.max_len > backbone.config.context:
        raise HeadstartError(
            f"task.max_len={config.task.max_len}: longer than the model's context of {backbone.config.context}"
        )
    task.read()
    chosen = stratified_budget(task.strata, config.budget, config.train.seed)
    fit, held = split_validation(task.strata, chosen, config.val_fraction, config.train.seed, config.val_max)
    pad_id = tokenizer_info(tokenizer).pad_id
    fit_set, held_set = task.encode(tokenizer, "train", fit), task.encode(tokenizer, "train", held)
    eval_set = task.encode(tokenizer, "eval")
    config = replace(config, train=steps_for_epochs(config.train, config.min_epochs, task.size(fit_set)))

    model = task.build_model(backbone, config.pooling)
    name = config.run.name or f"finetune-{Path(config.init).name}-{config.budget}-{config.train.seed}"
    run_dir = Path(config.run.out_dir) / name
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a fine-tune is short: rerun, not resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    forward_flops = forward_flops_per_token(backbone.config, config.task.max_len, head_fraction=0.0)
    probe_flops = forward_flops * sum(len(x) for x in (*fit_set.ids, *held_set.ids))

    if config.freeze_backbone or config.head_init == "probe":
        (x, y), (vx, vy) = task.features(model, fit_set, pad_id), task.features(model, held_set, pad_id)
        probe = fit_logistic(x, y, vx, vy, model.head.out_features)
        model.head = probe.as_linear().to(next(backbone.parameters()).device)
    if config.freeze_backbone:  # the linear probe: the backbone never changes, the head is the convex fit
        best_val = task.score(model, held_set, pad_id)[task.metric]
        metrics = task.score(model, eval_set, pad_id, final=True)
        ckpt.write_checkpoint(run_dir / "checkpoints", 0, model, {"step": 0, "l2": probe.l2}, to_dict(config))
        return _finish(config, task.metric, run_dir, len(chosen), metrics, 0, best_val, 0, probe_flops)

    best: dict[str, object] = {"score": -1.0, "state": None, "step": 0}
    every, steps = config.train.eval_every, config.train.steps
    step_of_eval = iter([*range(every, steps, every), steps] if every else [steps])  # when the loop evaluates

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        step = next(step_of_eval, steps)
        scores = task.score(model, held_set, pad_id)
        if scores[task.metric] > float(best["score"]):  # the first best: the earliest step that reached it
            best.update(score=scores[task.metric], state=copy.deepcopy(model.state_dict()), step=step)
        # The reported set's score along the way, for curves only; the choice above never sees it.
        reported = task.score(model, eval_set, pad_id) if task.track_eval else {}
        return {**{f"val_{k}": v for k, v in scores.items()}, **{f"eval_{k}": v for k, v in reported.items()}}

    result = train_loop(
        model,
        task.objective,
        ExampleBatches(task.size(fit_set), task.collate(fit_set, pad_id), config.train.seed),
        config.train,
        config.optim,
        config.schedule,
        run_dir,
        to_dict(config),
        3 * forward_flops,
        evaluate=evaluate,
        lr_scale=layer_scale(backbone.config.n_layer, config.layer_decay) if config.layer_decay != 1.0 else None,
        console=console,
        quiet=quiet,
    )
    if result.interrupted:  # a fine-tune is short: nothing half-trained is reported, a rerun starts over
        raise Interrupted(f"fine-tune {run_dir} interrupted at step {result.step}; rerun it to start over")
    model.load_state_dict(best["state"])  # type: ignore[arg-type]
    metrics = task.score(model, eval_set, pad_id, final=True)
    flops = result.flops + (probe_flops if config.head_init == "probe" else 0.0)
    return _finish(
        config, task.metric, run_dir, len(chosen), metrics, int(best["step"]), float(best["score"]), result.step, flops
    )


def _finish(
    config: FinetuneConfig,
    metric: str,
    run_dir: Path,
    budget: int,
    metrics: dict[str, float],
    best_step: int,
    best_val: float,
    steps: int,
    flops: float,
) -> FinetuneResult:
    summary = {
        "init": config.init,
        "budget": budget,
        "seed": config.train.seed,
        "metric": metric,
        "best_step": best_step,
        "best_val": best_val,
        "steps": steps,
        "flops": flops,
        **metrics,
    }
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return FinetuneResult(metrics, metric, best_step, best_val, steps, flops, run_dir)


def split_validation(
    strata: np.ndarray, chosen: np.ndarray, fraction: float, seed: int, most: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a stratified validation split from the budget (at least one example per class,
    at most ``most`` when it is positive)."""
    n_classes = len(np.unique(strata))
    size = max(n_classes, round(fraction * len(chosen)))
    size = min(size, max(most, n_classes)) if most > 0 else size
    if len(chosen) - size < n_classes:
        raise HeadstartError(
            f"budget {len(chosen)}: too small to hold out {size} validation examples and still train on every class"
        )
    held_local = stratified_budget(strata[chosen], size, seed + 7919)
    mask = np.zeros(len(chosen), dtype=bool)
    mask[held_local] = True
    return chosen[~mask], chosen[mask]
