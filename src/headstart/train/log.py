"""Metrics to ``metrics.jsonl`` and a live progress line (step, loss, tokens/s, MFU, ETA)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from headstart.files import write_text_atomic


class MetricsFile:
    """Append-only JSON lines, mirrored as TensorBoard scalars beside them when ``tensorboard``
    is installed and asked for. On resume the file becomes the copy the checkpoint holds (written
    atomically): the records up to that checkpoint and nothing after, so the file of an
    interrupted-and-resumed run reads like that of an uninterrupted one, torn last line included;
    TensorBoard drops its events past that step the same way."""

    def __init__(self, path: Path, resume: Path | None = None, resume_step: int = 0, tensorboard: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = resume / "metrics.jsonl" if resume is not None else None
        if saved is not None and saved.is_file():
            write_text_atomic(path, saved.read_text(encoding="utf-8"))
        elif resume is None or not path.exists():
            path.write_text("", encoding="utf-8")
        self.board = TensorBoard(path.parent, resume_step + 1 if resume is not None else 0) if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.write(record)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class TensorBoard:
    """The metrics records as scalars (``train/loss``, ``val/val_loss``, …) in event files in the
    run directory: ``tensorboard --logdir runs`` shows every run, and every cell of a study, as
    its own run. Silent when ``tensorboard`` is not installed."""

    def __init__(self, folder: Path, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # an optional extra: pip install "headstart[tensorboard]"
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        group = "val" if record.get("split") == "val" else "train"
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{group}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """A rich progress bar on a terminal; plain log lines elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console, total: int, start: int, quiet: bool = False, unit: str = "tok") -> None:
        self.console = console
        self.unit = unit  # what the throughput counts: tokens, or images for image objectives
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),  # its ETA leaves evaluation time out
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, stats="")
            self.progress.start()

    def update(self, record: dict[str, Any], total: int) -> None:
        loss = f"{record['loss']:.4f}" if record["loss"] is not None else "— (steps skipped)"
        stats = (
            f"loss {loss}  {record['tokens_per_s']:,.0f} {self.unit}/s  "
            f"MFU {100 * record['mfu']:.1f}%  peak {record['peak_memory_bytes'] / 2**30:.2f} GiB  "
            f"ETA {format_duration(record['eta_s'])}"
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"], stats=stats)
        elif not self.quiet:
            self.console.print(f"step {record['step']}/{total}  {stats}", highlight=False)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
