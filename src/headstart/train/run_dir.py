"""A pretraining run's directory: refuse to overwrite one, resume one only with its own config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from headstart.config import PretrainConfig, to_dict
from headstart.errors import HeadstartError
from headstart.train import checkpoint as ckpt
from headstart.train import distributed
from headstart.train.device import pick_device

# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {
    ("train", "max_minutes"),
    ("train", "eval_every"),
    ("train", "log_every"),
    ("train", "parallel"),  # a checkpoint resumes on any number of processes
}


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    for section, values in current.items():
        settings = values.items() if isinstance(values, dict) else [("", values)]  # a top-level field, e.g. init
        for key, value in settings:
            if (section, key) in RESUMABLE_CHANGES:
                continue
            before = saved.get(section, {}).get(key) if isinstance(values, dict) else saved.get(section, "")
            if before != value and (section, key) == ("train", "steps"):
                raise HeadstartError(
                    f"resume from {where}: train.steps was {before}, now {value}; the learning-rate schedule spans "
                    "train.steps, so another count would bend it mid-run. Resume with the same train.steps, or train "
                    f"on from this checkpoint as a new run: init={where} init_optimizer=carry run.name=NEW"
                )
            if before != value:
                name = f"{section}.{key}" if key else section
                raise HeadstartError(
                    f"resume from {where}: {name} was {before!r}, now {value!r}; "
                    "a resumed run must keep its config (start a new run.name instead)"
                )


def open_run(config: PretrainConfig, resume: bool, console: Console) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (checked against the config), with
    threads and the seed set and, under torchrun, the process group started: what every
    pretraining run does before building its model."""
    distributed.start(config.train, pick_device(config.train.device))
    run_dir = Path(config.run.out_dir) / config.run.name
    existing = ckpt.list_checkpoints(run_dir / "checkpoints")
    resume_from = None
    if existing and not resume:
        raise HeadstartError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue it or set run.name"
        )
    if resume and existing:
        resume_from = existing[-1]
        ckpt.verify(resume_from)
        check_resume_compatible(ckpt.read_config(resume_from), to_dict(config), resume_from)
        console.print(f"resuming {run_dir} from {resume_from.name}", highlight=False)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    return run_dir, resume_from
