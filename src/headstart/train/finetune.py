"""Supervised fine-tuning through the one loop: a pretrained checkpoint (or the same
architecture from random init) + a task head, on a label budget, with early stopping on a
validation split carved from that budget — never on the set it reports."""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from tokenizers import Tokenizer
from torch import nn

from headstart.config import FinetuneConfig, PretrainConfig, TrainConfig, build, save_yaml, to_dict
from headstart.data.examples import ExampleBatches
from headstart.data.labelled import stratified_budget
from headstart.data.tokenizers import load_tokenizer
from headstart.errors import HeadstartError, Interrupted
from headstart.models import TextBackbone
from headstart.models.build import backbone_of, build_model
from headstart.models.heads import head_logits
from headstart.tasks import Task, make_task
from headstart.train import checkpoint as ckpt
from headstart.train.distributed import launched
from headstart.train.flops import counted_flops, forward_flops_per_token
from headstart.train.frozen_features import knn_votes
from headstart.train.label_propagation import NeighbourGraph, neighbour_graph, propagate_labels
from headstart.train.loop import Job, LoopResult, Outputs, train_loop
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


def load_backbone(config: FinetuneConfig) -> tuple[nn.Module, Tokenizer | None]:
    """The pretrained backbone, or the same architecture freshly initialised from the seed; and
    the checkpoint's tokenizer (None for an image checkpoint)."""
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
    if pretrained.data.images:
        return backbone_of(trained), None
    return backbone_of(trained), load_tokenizer(folder / "tokenizer.json")


def forward_flops_per_unit(backbone: nn.Module, max_len: int, example: torch.Tensor) -> float:
    """Forward FLOPs per token of a text backbone at ``max_len`` (analytic), or per image of an
    image backbone (counted by torch's flop counter on ``example``, a float batch of images)."""
    if isinstance(backbone, TextBackbone):
        if max_len > backbone.config.context:
            context = backbone.config.context
            raise HeadstartError(f"task.max_len={max_len}: longer than the model's context of {context}")
        return forward_flops_per_token(backbone.config, max_len, head_fraction=0.0)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        flops = counted_flops(lambda: backbone(example.to(next(backbone.parameters()).device)))
    backbone.train(was_training)
    return flops / len(example)


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
    if launched() or config.train.parallel in ("ddp", "fsdp"):  # its best weights are kept whole, in memory
        raise HeadstartError("train.parallel: fine-tuning runs in one process; start it without torchrun")
    if not config.task.train or not (config.task.eval or config.task.kind == "image"):
        raise HeadstartError("task.train and task.eval: expected labelled data (JSONL records, or images)")
    if config.freeze_backbone and config.readout != "logistic" and config.task.kind not in ("classify", "image"):
        raise HeadstartError(f"readout={config.readout}: reads classification tasks, not task.kind={config.task.kind}")
    if config.distill_steps > 0 and (config.freeze_backbone or config.task.kind not in ("classify", "image")):
        raise HeadstartError(
            f"distill_steps={config.distill_steps}: self-training fine-tunes a student on class probabilities; "
            f"expected a classification task without freeze_backbone (task.kind={config.task.kind})"
        )
    backbone, tokenizer = load_backbone(config)
    task = make_task(config.task, tokenizer)
    task.read()
    chosen = stratified_budget(task.strata, config.budget, config.train.seed)
    fit, held = split_validation(task.strata, chosen, config.val_fraction, config.train.seed, config.val_max)
    fit_set, held_set = task.encode("train", fit), task.encode("train", held)
    eval_set = task.encode("eval")
    config = replace(config, train=steps_for_epochs(config.train, config.min_epochs, task.size(fit_set)))

    model = task.build_model(backbone, config.pooling)
    name = config.run.name or f"finetune-{Path(config.init).name}-{config.budget}-{config.train.seed}"
    run_dir = Path(config.run.out_dir) / name
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a fine-tune is short: rerun, not resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    example = task.objective.make_batch(task.collate(fit_set)([0]), torch.Generator().manual_seed(0))["input"]
    forward_flops = forward_flops_per_unit(backbone, config.task.max_len, example)
    probe_flops = forward_flops * (task.units(fit_set) + task.units(held_set))

    if config.freeze_backbone and config.readout == "knn":  # no head: the budget's features vote
        n_classes = model.head.out_features
        (x, y), (vx, vy), (ex, ey) = (task.features(model, part) for part in (fit_set, held_set, eval_set))
        best_val = float((knn_votes(x, y, vx, n_classes).argmax(1) == vy).float().mean())
        metrics = task.metrics(knn_votes(torch.cat([x, vx]), torch.cat([y, vy]), ex, n_classes), ey.numpy())
        flops = probe_flops + forward_flops * task.units(eval_set)
        return _finish(config, task.metric, run_dir, len(chosen), metrics, 0, best_val, 0, flops)
    if config.freeze_backbone and config.readout == "propagate":  # the budget's labels spread over the pool
        pool_set = task.encode("train", unlabelled_rows(config, len(task.strata), chosen))
        message = f"propagating {len(chosen):,} labels over {task.size(pool_set):,} unlabelled examples"
        console.print(message, highlight=False)
        graph = PoolGraph.build(task, model, fit_set, held_set, pool_set)
        best_val = graph.held_accuracy()
        labels = graph.spread(with_held=True).argmax(1)
        labels[: graph.n_labelled] = graph.labels
        ex, ey = task.features(model, eval_set)
        metrics = task.metrics(knn_votes(graph.features, labels, ex, graph.n_classes), ey.numpy())
        flops = graph.flops(forward_flops) + forward_flops * task.units(eval_set)
        return _finish(config, task.metric, run_dir, len(chosen), metrics, 0, best_val, 0, flops)
    if config.freeze_backbone or config.head_init == "probe":
        (x, y), (vx, vy) = task.features(model, fit_set), task.features(model, held_set)
        probe = fit_logistic(x, y, vx, vy, model.head.out_features)
        model.head = probe.as_linear().to(next(backbone.parameters()).device)
    if config.freeze_backbone:  # the linear probe: the backbone never changes, the head is the convex fit
        best_val = task.score(model, held_set)[task.metric]
        metrics = task.score(model, eval_set, final=True)
        ckpt.write_checkpoint(run_dir / "checkpoints", 0, model, {"step": 0, "l2": probe.l2}, to_dict(config))
        return _finish(config, task.metric, run_dir, len(chosen), metrics, 0, best_val, 0, probe_flops)

    flops = probe_flops if config.head_init == "probe" else 0.0
    fit_config, fit_dir = config, run_dir
    if config.distill_steps > 0:  # self-training: a teacher labels the pool, a student learns it
        pool_set = task.encode("train", unlabelled_rows(config, len(task.strata), chosen))
        if config.distill_teacher == "propagate":
            graph = PoolGraph.build(task, model, fit_set, held_set, pool_set)
            pool_set.labels = graph.spread(with_held=False)[graph.n_labelled :].numpy()
            flops += graph.flops(forward_flops)
        else:
            result, best = fit_with_early_stopping(
                model, task, fit_set, held_set, eval_set, config, forward_flops, run_dir, console, quiet
            )
            model.load_state_dict(best["state"])  # type: ignore[arg-type]
            features, _ = task.features(model, pool_set)
            pool_set.labels = head_logits(model.head, features).softmax(-1).numpy()  # the teacher's; labels unread
            flops += result.flops + forward_flops * task.units(pool_set)
        one_hot = np.eye(pool_set.labels.shape[1], dtype=np.float32)[fit_set.labels]
        fit_set = concat_encoded(replace(fit_set, labels=one_hot), pool_set)
        model = task.build_model(load_backbone(config)[0], config.pooling)
        fit_config = replace(config, train=replace(config.train, steps=config.distill_steps))
        fit_dir = run_dir / "student"
        message = f"distilling into a student on {len(pool_set.labels):,} teacher-labelled examples"
        console.print(message, highlight=False)
    result, best = fit_with_early_stopping(
        model, task, fit_set, held_set, eval_set, fit_config, forward_flops, fit_dir, console, quiet
    )
    flops += result.flops
    model.load_state_dict(best["state"])  # type: ignore[arg-type]
    metrics = task.score(model, eval_set, final=True)
    return _finish(
        config, task.metric, run_dir, len(chosen), metrics, int(best["step"]), float(best["score"]), result.step, flops
    )


def unlabelled_rows(config: FinetuneConfig, n_train: int, chosen: np.ndarray) -> np.ndarray:
    """The training rows outside the budget that self-training and label propagation read
    (``config.unlabelled`` of them, drawn per seed, when it is positive)."""
    pool = np.setdiff1d(np.arange(n_train), chosen)
    if config.unlabelled > 0:
        pool = np.random.default_rng([config.train.seed, 2]).permutation(pool)[: config.unlabelled]
    return pool


@dataclass
class PoolGraph:
    """Frozen features of the budget's fit and held-out parts and of the unlabelled pool, in
    that order, with their kNN graph: what label propagation spreads the budget's labels over."""

    features: torch.Tensor  # (fit + held + pool, D)
    labels: torch.Tensor  # (fit + held,) the budget's labels
    n_fit: int
    graph: NeighbourGraph
    n_classes: int
    units: int  # what the features cost to compute, in the task's units (images, tokens)

    @classmethod
    def build(cls, task: Task, model: nn.Module, fit_set: Any, held_set: Any, pool_set: Any) -> PoolGraph:
        parts = (fit_set, held_set, pool_set)
        (x, y), (vx, vy), (px, _) = (task.features(model, part) for part in parts)
        features = torch.cat([x, vx, px])  # the pool's own labels are never read
        units = sum(task.units(part) for part in parts)
        return cls(features, torch.cat([y, vy]), len(x), neighbour_graph(features), model.head.out_features, units)

    @property
    def n_labelled(self) -> int:
        return len(self.labels)

    def held_accuracy(self) -> float:
        """How well the fit part's labels, spread, label the held-out part: the readout's validation score."""
        guess = self.spread(with_held=False)[self.n_fit : self.n_labelled].argmax(1)
        return float((guess == self.labels[self.n_fit :]).float().mean())

    def flops(self, forward_flops: float) -> float:
        """Embedding every node (``forward_flops`` per unit) and the neighbour search."""
        return forward_flops * self.units + self.graph.flops(self.features.size(1))

    def spread(self, with_held: bool) -> torch.Tensor:
        """Class probabilities of every node from the fit part's labels (and the held-out part's)."""
        known = self.n_labelled if with_held else self.n_fit
        return propagate_labels(self.graph, torch.arange(known), self.labels[:known], self.n_classes)


def fit_with_early_stopping(
    model: nn.Module,
    task: Task,
    train_set: Any,
    held_set: Any,
    eval_set: Any,
    config: FinetuneConfig,
    forward_flops: float,
    run_dir: Path,
    console: Console,
    quiet: bool,
) -> tuple[LoopResult, dict[str, Any]]:
    """Train through the one loop, scoring the held-out split at every evaluation; returns the
    loop's result and the best evaluation (score, weights, step: the earliest that reached it)."""
    best: dict[str, Any] = {"score": -1.0, "state": copy.deepcopy(model.state_dict()), "step": 0}
    every, steps = config.train.eval_every, config.train.steps
    step_of_eval = iter([*range(every, steps, every), steps] if every else [steps])  # when the loop evaluates

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        step = next(step_of_eval, steps)
        scores = task.score(model, held_set)
        if scores[task.metric] > float(best["score"]):
            best.update(score=scores[task.metric], state=copy.deepcopy(model.state_dict()), step=step)
        # The reported set's score along the way, for curves only; the choice above never sees it.
        reported = task.score(model, eval_set) if task.track_eval else {}
        return {**{f"val_{k}": v for k, v in scores.items()}, **{f"eval_{k}": v for k, v in reported.items()}}

    depth = len(model.backbone.blocks)
    lr_scale = layer_scale(depth, config.layer_decay) if config.layer_decay != 1.0 else None
    source = ExampleBatches(task.size(train_set), task.collate(train_set), config.train.seed)
    job = Job(model, task.objective, source, config, 3 * forward_flops, lr_scale)
    result = train_loop(job, Outputs(run_dir, to_dict(config), evaluate, console=console, quiet=quiet))
    if result.interrupted:  # a fine-tune is short: nothing half-trained is reported, a rerun starts over
        raise Interrupted(f"fine-tune {run_dir} interrupted at step {result.step}; rerun it to start over")
    return result, best


def concat_encoded(first: Any, second: Any) -> Any:
    """Two encoded sets of one task as one (each field: lists joined, arrays stacked)."""
    joined = {}
    for item in fields(first):
        a, b = getattr(first, item.name), getattr(second, item.name)
        joined[item.name] = a + b if isinstance(a, list) else np.concatenate([a, b])
    return type(first)(**joined)


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
