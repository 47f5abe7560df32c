"""``headstart pilot``: the smallest study that answers "does pretraining pay on my task, and how
many labels will I need?" within a wall-time budget.

It runs the study's inits over a ladder of budgets doubling from ``smallest``, with few seeds,
smallest budgets first, and stops before a budget whose cells would not finish in time (judged
by the cells already timed). Then it fits each init's learning curve, forecasts it at a budget
not measured (``forecast_at``) with a 95% interval, and says whether the pretrained init beats
scratch there: "pays", "does not pay", or "unclear" where the intervals overlap.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from headstart.config import FinetuneConfig, StudyConfig, load_config
from headstart.errors import HeadstartError
from headstart.files import write_markdown
from headstart.transfer.forecast import MIN_BUDGETS, Forecast
from headstart.transfer.reference import REFERENCES
from headstart.transfer.report import fitted_curves, grouped, labels_shown, scale
from headstart.transfer.results import read_results
from headstart.transfer.study import count_train, run_study

PILOT_SEEDS = 3
MAX_LEVELS = 7


def ladder(smallest: int, train_size: int) -> list[int]:
    """Budgets doubling from ``smallest``, at most ``MAX_LEVELS`` of them, each leaving at
    least half of the training examples unlabelled."""
    if smallest < 1:
        raise HeadstartError(f"--smallest {smallest}: expected a label count of at least 1")
    budgets = [smallest * 2**level for level in range(MAX_LEVELS)]
    budgets = [b for b in budgets if b <= train_size // 2]
    if len(budgets) < MIN_BUDGETS:
        raise HeadstartError(
            f"--smallest {smallest}: a task of {train_size:,} examples leaves fewer than {MIN_BUDGETS} budgets "
            f"(doubling, up to half the examples); expected a smaller --smallest"
        )
    return budgets


def verdict(pretrained: Forecast, scratch: Forecast, labels: int) -> str:
    """Whether the pretrained init's forecast at ``labels`` is above scratch's, by their intervals."""
    _, low, high = pretrained.value_at(labels)
    _, scratch_low, scratch_high = scratch.value_at(labels)
    if low > scratch_high:
        return "pays"
    if high < scratch_low:
        return "does not pay"
    return "unclear: the intervals overlap (more seeds or budgets would tell)"


def matching(labels: float) -> str:
    """How many labels the pretrained curve needs to reach scratch's forecast."""
    if math.isinf(labels):
        return "its fitted curve never reaches scratch's forecast"
    return f"its fitted curve reaches scratch's forecast with about {labels_shown(labels)} labels"


def run_pilot(
    config: StudyConfig, minutes: float, forecast_at: int, smallest: int = 50, console: Console | None = None
) -> Path:
    """Run the pilot study in ``minutes`` and write ``pilot.md`` beside its report; returns it."""
    console = console or Console(stderr=True)
    if minutes <= 0:
        raise HeadstartError(f"--minutes {minutes}: expected a positive wall-time budget")
    if forecast_at < 1:
        raise HeadstartError(f"--forecast-at {forecast_at}: expected a label count of at least 1")
    deadline = time.monotonic() + 60 * minutes
    base = load_config(FinetuneConfig, config.finetune, config.settings)
    budgets = ladder(smallest, count_train(base.task))
    pilot = replace(config, budgets=budgets, seeds=min(config.seeds, PILOT_SEEDS))
    console.print(f"pilot: budgets {', '.join(f'{b:,}' for b in budgets)} (smallest first), {pilot.seeds} seeds, "
                  f"{minutes:g} minutes", highlight=False)  # fmt: skip
    run_dir = run_study(pilot, console=console, deadline=deadline)
    records = read_results(run_dir / "results.jsonl")
    table = grouped(records)
    metric = records[0]["metric"] if records else "accuracy"
    fits = fitted_curves(table, metric)
    shown = scale(metric)
    measured = sorted({r["budget"] for r in records})
    lines = [f"# Pilot: {run_dir.name}", "",
             f"{len(records)} cells in {minutes:g} minutes; budgets measured: {', '.join(f'{b:,}' for b in measured)}. "
             f"Forecast at {forecast_at:,} labels from each init's fitted learning curve, with its 95% interval; "
             "the curves, backtests and pay-off are in [report.md](report.md).", "",
             f"| init | {metric} at {forecast_at:,} labels (forecast) | largest measured |",
             "|---|---|---|"]  # fmt: skip
    for init, fit in fits.items():
        value, low, high = fit.value_at(forecast_at)
        largest = max(table[init])
        mean = sum(c["value"] for c in table[init][largest]) / len(table[init][largest])
        lines.append(f"| {init} | {shown * value:.1f} ({shown * low:.1f}–{shown * high:.1f}) | "
                     f"{shown * mean:.1f} at {largest:,} |")  # fmt: skip
    scratch = next((n for n, s in config.inits.items() if s == "scratch" and n in fits), None)
    pretrained = [n for n, s in config.inits.items() if s not in ("scratch", *REFERENCES) and n in fits]
    verdicts = [
        f"`{init}` against `{scratch}` at {forecast_at:,} labels: pretraining "
        f"**{verdict(fits[init], fits[scratch], forecast_at)}**; "
        + matching(fits[init].labels_for(fits[scratch].value_at(forecast_at)[0])[0])
        for init in pretrained
        if scratch is not None
    ]
    if not verdicts:
        verdicts = [f"no verdict: it needs a checkpoint init and a scratch init, each measured at {MIN_BUDGETS} "
                    "budgets or more"]  # fmt: skip
    lines += ["", *(f"- {v}." for v in verdicts)]
    for line in verdicts:
        console.print(f"pilot: {line.replace('**', '')}", highlight=False)
    return write_markdown(run_dir / "pilot.md", lines)
