"""Supervised fine-tuning of one cell: a pretrained checkpoint (or the same architecture from
random init) + a task head, on a label budget, with a validation split carved from that budget
to choose steps and settings — never the set it reports. How the cell reads the backbone out
(full fine-tuning, a probe, kNN, label propagation, self-training, …) is the ``readout`` entry
it names (``headstart.readouts``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from headstart.config import FinetuneConfig, save_yaml
from headstart.data.labelled import split_validation, stratified_budget
from headstart.errors import HeadstartError
from headstart.files import write_text_atomic
from headstart.models import TextBackbone
from headstart.readouts import readout_entry
from headstart.readouts.context import Finetuning, Outcome, load_backbone
from headstart.readouts.full import steps_for_epochs
from headstart.tasks import make_task
from headstart.train.distributed import launched
from headstart.train.flops import counted_flops, forward_flops_per_token


@dataclass
class FinetuneResult:
    metrics: dict[str, float]  # on the reported set, with the weights of the best validation step
    metric: str  # the task's primary metric (what best_val is)
    best_step: int
    best_val: float
    steps: int
    flops: float
    run_dir: Path


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


def prepare_cell(config: FinetuneConfig, console: Console, quiet: bool) -> Finetuning:
    """Read the task, draw the budget and its validation split, build the model, clear the run directory."""
    readout_entry(config.readout, config.task.kind)
    backbone, tokenizer = load_backbone(config)
    task = make_task(config.task, tokenizer)
    task.read()
    chosen = stratified_budget(task.strata, config.budget, config.train.seed)
    fit, held = split_validation(task.strata, chosen, config.val_fraction, config.train.seed, config.val_max)
    fit_set, held_set, eval_set = task.encode("train", fit), task.encode("train", held), task.encode("eval")
    config = replace(config, train=steps_for_epochs(config.train, config.min_epochs, task.size(fit_set)))
    model = task.build_model(backbone, config.pooling)
    name = config.run.name or f"finetune-{Path(config.init).name}-{config.budget}-{config.train.seed}"
    run_dir = Path(config.run.out_dir) / name
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a fine-tune is short: rerun, not resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    example = task.objective.make_batch(task.collate(fit_set)([0]), torch.Generator().manual_seed(0))["input"]
    forward_flops = forward_flops_per_unit(backbone, config.task.max_len, example)
    return Finetuning(config, task, model, fit_set, held_set, eval_set, chosen, forward_flops, run_dir, console, quiet)


def finetune(config: FinetuneConfig, console: Console | None = None, quiet: bool = False) -> FinetuneResult:
    """Fine-tune one cell with its ``readout``; writes ``result.json`` and returns the result."""
    if launched() or config.train.parallel in ("ddp", "fsdp", "tp"):  # its best weights are kept whole, in memory
        raise HeadstartError("train.parallel: fine-tuning runs in one process; start it without torchrun")
    if not config.task.train or not (config.task.eval or config.task.kind == "image"):
        raise HeadstartError("task.train and task.eval: expected labelled data (JSONL records, or images)")
    cell = prepare_cell(config, console or Console(stderr=True), quiet)
    outcome = readout_entry(config.readout, config.task.kind).run(cell)
    return write_result(cell, outcome)


def write_result(cell: Finetuning, outcome: Outcome) -> FinetuneResult:
    config, metric = cell.config, cell.task.metric
    summary = {
        "init": config.init,
        "budget": len(cell.chosen),
        "seed": config.train.seed,
        "metric": metric,
        "best_step": outcome.best_step,
        "best_val": outcome.best_val,
        "steps": outcome.steps,
        "flops": outcome.flops,
        **outcome.metrics,
    }
    write_text_atomic(cell.run_dir / "result.json", json.dumps(summary, indent=1))
    return FinetuneResult(
        outcome.metrics, metric, outcome.best_step, outcome.best_val, outcome.steps, outcome.flops, cell.run_dir
    )
