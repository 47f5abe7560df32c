"""A pretraining run's directory: refuse to overwrite one, lock it while a run writes it, resume
one only with its own config and from its newest intact checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
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
    ("train", "tp"),  # and on any layout
    ("train", "max_bad_steps"),
    ("train", "tensorboard"),
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


class RunLock:
    """``run.lock`` in a run directory, holding the owner's pid and host: a second run writing the
    same directory is refused instead of interleaving checkpoints. A lock whose process is gone
    (killed) is stale and taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run.lock"
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(json.dumps(self.owner))
            return self
        raise HeadstartError(f"run directory {self.path.parent}: its lock {self.path} could not be taken")

    def _clear_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = -1, self.owner["host"]  # a lock torn by a kill in the middle of its write
        if host != self.owner["host"]:
            raise HeadstartError(
                f"run directory {self.path.parent} is in use by process {pid} on {host}; "
                f"if that run is gone, delete {self.path}"
            )
        if pid > 0 and alive(pid):
            raise HeadstartError(
                f"run directory {self.path.parent} is in use by process {pid}; wait for it to end, or set run.name"
            )
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text(encoding="utf-8")) == self.owner:
                self.path.unlink()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: a read-only or full directory fails before the
    first step, not at the first checkpoint (the OSError names the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write_check_{os.getpid()}"
    probe.write_bytes(b"headstart")
    probe.unlink()


def newest_intact(checkpoints: list[Path], console: Console) -> Path:
    """The newest checkpoint that verifies; each newer damaged one is named and skipped (not deleted)."""
    for folder in reversed(checkpoints):
        try:
            ckpt.verify(folder)
            return folder
        except HeadstartError as damage:
            console.print(f"[yellow]warning:[/] skipping {folder.name}: {damage}", highlight=False, soft_wrap=True)
    raise HeadstartError(f"resume: none of the {len(checkpoints)} checkpoints in {checkpoints[0].parent} is intact")


@contextlib.contextmanager
def open_run(config: PretrainConfig, resume: bool, console: Console) -> Iterator[tuple[Path, Path | None]]:
    """The run directory, locked while the block runs, and the checkpoint to resume from (the
    newest intact one, checked against the config), with threads and the seed set and, under
    torchrun, the process group started: what every pretraining run does before building its
    model. Half-written checkpoints that killed runs left are removed first."""
    parallel = distributed.start(config.train, pick_device(config.train.device))
    run_dir = Path(config.run.out_dir) / config.run.name
    root = run_dir / "checkpoints"
    existing = ckpt.list_checkpoints(root)
    if existing and not resume:
        raise HeadstartError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue it or set run.name"
        )
    if parallel.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if parallel.main else contextlib.nullcontext():
        if parallel.main:
            check_writable(root)
            if removed := ckpt.remove_stale_writes(root):
                console.print(
                    f"removed {removed} half-written checkpoint(s) that an interrupted run left", highlight=False
                )
        resume_from = None
        if resume and existing:
            resume_from = newest_intact(existing, console)
            check_resume_compatible(ckpt.read_config(resume_from), to_dict(config), resume_from)
            console.print(f"resuming {run_dir} from {resume_from.name}", highlight=False)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)
        yield run_dir, resume_from
