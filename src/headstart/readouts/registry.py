"""Every way a fine-tuning cell turns a backbone and a label budget into a score, one entry
each, chosen by name (``readout=…``) and swept by studies like any other setting. Adding a mode
is its function plus one ``register`` call; ``finetune`` only looks it up."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from headstart.errors import HeadstartError
from headstart.readouts.context import Finetuning, Outcome

ALL_KINDS = ("classify", "tag", "translate", "image")


@dataclass(frozen=True)
class ReadoutEntry:
    """``run`` reads out one cell; ``task_kinds``: the task kinds it applies to; ``frozen``: it
    trains no weights through the loop, so optimisation settings (lr, steps) do not change it."""

    name: str
    run: Callable[[Finetuning], Outcome]
    task_kinds: tuple[str, ...] = ALL_KINDS
    frozen: bool = False


READOUTS: dict[str, ReadoutEntry] = {}


def register(entry: ReadoutEntry) -> ReadoutEntry:
    READOUTS[entry.name] = entry
    return entry


def readout_entry(name: str, task_kind: str) -> ReadoutEntry:
    """The entry called ``name``, checked against the task it will read."""
    if name not in READOUTS:
        close = difflib.get_close_matches(name, READOUTS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise HeadstartError(f"readout={name}: expected one of {', '.join(READOUTS)}{hint}")
    entry = READOUTS[name]
    if task_kind not in entry.task_kinds:
        raise HeadstartError(
            f"readout={name}: reads task.kind {' or '.join(entry.task_kinds)}, not task.kind={task_kind}"
        )
    return entry
