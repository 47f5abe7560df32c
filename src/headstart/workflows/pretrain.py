"""Self-supervised pretraining, text and images alike: data + model + objective, through the
one loop. What differs by modality lives in ``pretrain_data.py``; what differs by objective, in
``objectives/registry.py``."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from headstart.config import PretrainConfig, build, merge, save_yaml, to_dict
from headstart.errors import HeadstartError
from headstart.files import read_jsonl
from headstart.models import backbone_of
from headstart.objectives.registry import build_model, build_objective
from headstart.train.checkpoint import Opened, open_checkpoint
from headstart.train.device import pick_compile
from headstart.train.distributed import builds_on_meta, launched
from headstart.train.loop import Job, LoopResult, Outputs, Start, train_loop
from headstart.train.run_dir import open_run
from headstart.workflows.continued import carried_optimizer, forgetting, lineage_of, write_lineage
from headstart.workflows.pretrain_data import open_data

CALIBRATION_STEPS = 12  # a timed probe's steps: the first half warms up (and compiles), the second is timed


def load_continued(model: nn.Module, trained: nn.Module) -> str:
    """Copy a continued checkpoint's weights: all of them when the two networks have the same
    shapes (the same objective), else the backbone's. Returns which."""
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    if shapes == {name: tensor.shape for name, tensor in trained.state_dict().items()}:
        model.load_state_dict(trained.state_dict())
        return "whole model"
    backbone_of(model).load_state_dict(backbone_of(trained).state_dict())
    return "backbone"


def pretrain(
    config: PretrainConfig,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    minutes: float | None = None,
) -> LoopResult:
    """Run (or resume) one pretraining run; returns where it ended and its last evaluation.

    ``minutes`` sets ``train.steps`` to what fits that wall time here, the skip-gram warm start
    included, so the schedule completes within it."""
    console = console or Console(stderr=True)
    if minutes and resume:
        raise HeadstartError("--minutes with --resume: a resumed run keeps its step count")
    per_step = seconds_per_step(config) if minutes else 0.0
    data = open_data(config)
    opened: Opened | None = open_checkpoint(config.init) if config.init else None
    if opened is not None:
        config = data.adopt(config, opened)
    config = data.resolve(config)
    with open_run(config, resume, console) as (run_dir, resume_from):
        on_meta = builds_on_meta(config.train, config.model, config.objective.name, continued=opened is not None)
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = build_model(config)
        objective = build_objective(config, data.tokenizer)
        console.print(data.describe(config, model), highlight=False)
        prior = (0.0, 0.0)
        if opened is not None:
            console.print(f"continuing {opened.folder}: its {load_continued(model, opened.model)}", highlight=False)
        elif resume_from is None:
            *prior, note = data.warm_start(model, config)
            if note:
                console.print(note, highlight=False)
        if minutes:
            config = fit_minutes(config, minutes * 60 - prior[1], per_step, model, objective.name)
            compiled = " compiled" if config.train.compile is True else ""
            console.print(f"{config.train.steps:,}{compiled} steps fit the {minutes:g} minutes here", highlight=False)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, run_dir / "config.yaml")
        lineage = lineage_of(opened.folder) if opened is not None else []

        def write_extras(folder: Path) -> None:
            data.write_extras(folder)
            if lineage:
                write_lineage(lineage, folder)

        job = Job(model, objective, data.source(config), config, data.flops_per_unit(config, model, objective))
        outputs = Outputs(
            run_dir, to_dict(config), data.evaluator(config, objective, opened), write_extras, console, quiet
        )
        carried = carried_optimizer(opened.folder, config.init_optimizer) if opened is not None else None
        result = train_loop(job, outputs, Start(resume_from, *prior, carried, eval_at_start=opened is not None))
        if opened is not None and (change := forgetting(run_dir / "metrics.jsonl")):
            where = opened.config.data.shards or opened.config.data.images
            console.print(f"forgetting: validation loss on {where} {change[0]:.4f} → {change[1]:.4f}", highlight=False)
        return result


def calibrate(config: PretrainConfig, steps: int = CALIBRATION_STEPS) -> dict[str, Any]:
    """The loop's own log record (``tokens_per_s``, ``mfu``) over the second half of a short run
    of ``config`` here, the first half being warm-up; its directory is removed afterwards. The
    skip-gram warm start and the final evaluation are not what is being timed."""
    probe = build(
        PretrainConfig,
        merge(
            to_dict(config),
            {
                "train": {
                    "steps": steps,
                    "eval_every": 0,
                    "checkpoint_every": 0,
                    "log_every": steps // 2,
                    "eval_batches": 1,
                },
                "embeddings": {"init": "random"},
                "run": {"name": (config.run.name or "run") + "-calibrate"},
            },
        ),
    )
    run_dir = Path(probe.run.out_dir) / probe.run.name
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        pretrain(probe, console=Console(quiet=True), quiet=True)
        records = read_jsonl(run_dir / "metrics.jsonl")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return [r for r in records if "tokens_per_s" in r][-1]


def seconds_per_step(config: PretrainConfig) -> float:
    """Wall seconds of one training step of ``config`` here, from a short timed run."""
    if launched():  # every rank would time itself and plan its own schedule
        raise HeadstartError("--minutes times one process; under torchrun set train.steps instead")
    tokens_per_s = calibrate(config)["tokens_per_s"]
    train = config.train
    tokens_per_sample = 1 if config.data.images else train.seq_len  # an image counts as one
    return train.batch_size * train.grad_accum * tokens_per_sample / tokens_per_s


def fit_minutes(
    config: PretrainConfig, seconds: float, per_step: float, model: nn.Module, objective: str
) -> PretrainConfig:
    """``config`` with the steps that fit ``seconds``. Where the run will compile (``train.compile``
    true, or auto and long enough), a compiled step is timed as well and the steps planned at its
    speed, the time compiling takes (once for that probe, once for the run) counted in the budget:
    planned at the eager speed, a compiled run would end minutes early. Such a run is then
    compiled whatever its new step count, as it was planned."""
    steps = steps_within(config, seconds, per_step)
    if not pick_compile(config.train.compile, model, objective, steps, processes=1):
        return replace(config, train=replace(config.train, steps=steps))
    started = time.perf_counter()
    compiled = replace(config, train=replace(config.train, compile=True))
    compiled_step = seconds_per_step(compiled)
    compiling = max(0.0, time.perf_counter() - started - CALIBRATION_STEPS * compiled_step)
    steps = steps_within(config, seconds - compiling - (time.perf_counter() - started), compiled_step)
    return replace(compiled, train=replace(compiled.train, steps=steps))


def steps_within(config: PretrainConfig, seconds: float, per_step: float) -> int:
    """How many steps of ``config`` fit ``seconds`` (at least 10), its evaluations included and
    5% to spare, so a time budget still gets a complete schedule."""
    train = config.train
    steps = int(seconds / per_step)
    evaluations = steps // train.eval_every if train.eval_every else 0
    eval_seconds = evaluations * train.eval_batches * per_step / 3  # forward only
    return max(10, int((seconds - eval_seconds) / per_step * 0.95))
