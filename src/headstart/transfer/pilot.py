"""``headstart pilot``: the smallest study that answers "does pretraining pay on my task, and how
many labels will I need?" within a wall-time budget.

It runs the study's inits over a ladder of budgets growing ×4 from ``smallest`` up to half the
budget it forecasts (three budgets span 16×, the widest base three fits get), seed by seed:
every budget for seed 0, then for seed 1, and so on while another round fits in the time. Then
it fits each init's learning curve, forecasts it at ``forecast_at`` labels with a 95% interval,
and says whether the pretrained init beats scratch there: "pays", "does not pay", or "unclear"
where the intervals overlap.

What the pilot leaves to the full study: the plain-supervised duplicate of scratch (the second
label efficiency) and the sweep candidates kept to small budgets (a few-shot readout that
would not run at every budget of the ladder, so that each curve is one recipe's).
"""

from __future__ import annotations

import itertools
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

GROWTH = 4  # between the ladder's budgets
MIN_SEEDS = 2  # per budget: with one, the residuals that make the interval are the fit's own


def ladder(smallest: int, forecast_at: int, train_size: int) -> list[int]:
    """Budgets ×``GROWTH`` from ``smallest``, none above half of ``forecast_at`` (the forecast
    reaches past what was measured, as a pilot's must) nor half of the training examples."""
    if smallest < 1:
        raise HeadstartError(f"--smallest {smallest}: expected a label count of at least 1")
    top = min(forecast_at, train_size) // 2
    budgets = list(itertools.takewhile(lambda b: b <= top, (smallest * GROWTH**level for level in itertools.count())))
    if len(budgets) < MIN_BUDGETS:
        raise HeadstartError(
            f"--smallest {smallest}: budgets ×{GROWTH} up to {top:,} (half of --forecast-at {forecast_at:,} and of "
            f"the {train_size:,} examples) are fewer than {MIN_BUDGETS}; expected a smaller --smallest or a larger "
            "--forecast-at"
        )
    return budgets


def pilot_study(config: StudyConfig, budgets: list[int]) -> StudyConfig:
    """The study narrowed to what the pilot's answer needs (see the module's docstring)."""
    inits = {name: source for name, source in config.inits.items() if name != config.supervised}
    init_settings = {name: settings for name, settings in config.init_settings.items() if name in inits}
    sweep = {name: overrides for name, overrides in config.sweep.items()
             if config.sweep_max_budget.get(name, max(budgets)) >= max(budgets)}  # fmt: skip
    if not sweep:
        raise HeadstartError(
            f"sweep: every candidate is kept to budgets under {max(budgets):,} (sweep_max_budget); expected one "
            "that runs at every budget of the pilot"
        )
    caps = {name: cap for name, cap in config.sweep_max_budget.items() if name in sweep}
    run = replace(config.run, name=f"{config.run.name}-pilot")  # its own directory: the full study's sweep differs
    return replace(config, inits=inits, init_settings=init_settings, supervised="", sweep=sweep,
                   sweep_max_budget=caps, budgets=budgets, run=run)  # fmt: skip


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
    pilot = pilot_study(config, ladder(smallest, forecast_at, count_train(base.task)))
    console.print(f"pilot: budgets {', '.join(f'{b:,}' for b in pilot.budgets)}, inits {', '.join(pilot.inits)}, "
                  f"sweep {', '.join(pilot.sweep)}; up to {pilot.seeds} seeds, one round at a time, in {minutes:g} "
                  "minutes", highlight=False)  # fmt: skip
    run_dir = run_study(pilot, console=console, deadline=deadline)
    records = read_results(run_dir / "results.jsonl")
    table = grouped(records)
    metric = records[0]["metric"] if records else "accuracy"
    fits = fitted_curves(table, metric)
    shown = scale(metric)
    measured = sorted({r["budget"] for r in records})
    seeds = len({r["seed"] for r in records})
    lines = [f"# Pilot: {run_dir.name}", "",
             f"{len(records)} cells in {minutes:g} minutes; budgets measured: {', '.join(f'{b:,}' for b in measured)}, "
             f"{seeds} seed{'s' * (seeds != 1)} each. "
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
    scratch = next((n for n, s in pilot.inits.items() if s == "scratch" and n in fits), None)
    pretrained = [n for n, s in pilot.inits.items() if s not in ("scratch", *REFERENCES) and n in fits]
    verdicts = [
        f"`{init}` against `{scratch}` at {forecast_at:,} labels: pretraining "
        f"**{verdict(fits[init], fits[scratch], forecast_at)}**; "
        + matching(fits[init].labels_for(fits[scratch].value_at(forecast_at)[0])[0])
        for init in pretrained
        if scratch is not None
    ]
    if seeds < MIN_SEEDS:
        verdicts = [f"no verdict: one seed round fit in {minutes:g} minutes, and an interval needs {MIN_SEEDS} seeds "
                    "or more at each budget; give the pilot more minutes"]  # fmt: skip
    elif not verdicts:
        verdicts = [f"no verdict: it needs a checkpoint init and a scratch init, each measured at {MIN_BUDGETS} "
                    "budgets or more"]  # fmt: skip
    lines += ["", *(f"- {v}." for v in verdicts)]
    for line in verdicts:
        console.print(f"pilot: {line.replace('**', '')}", highlight=False)
    return write_markdown(run_dir / "pilot.md", lines)
