"""The transfer study's report: report.md with the figures and their spread, and PNG plots
(metric against labels, metric against fine-tuning step), all read from results.jsonl."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

from headstart.config import StudyConfig
from headstart.files import read_jsonl, write_markdown
from headstart.plots import plt, save_figure  # plots sets the display-free backend first
from headstart.train import checkpoint as ckpt
from headstart.transfer.efficiency import label_efficiency, steps_to_target
from headstart.transfer.forecast import MIN_BUDGETS, Forecast, backtest, forecast
from headstart.transfer.reference import REFERENCES, References, WordVectors
from headstart.transfer.results import read_results
from headstart.workflows.continued import LINEAGE, read_json


def scale(metric: str) -> float:
    """Fractions (accuracy, F1) are shown as percentages; BLEU is already on a 0–100 scale."""
    return 1.0 if metric == "bleu" else 100.0


def mean_and_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    quantile = float(student_t.ppf(0.975, len(values) - 1))  # two-sided 95%, exact for every seed count
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


def grouped(records: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """init → labels used → the cells (one per seed)."""
    table: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        table[record["init"]][record["budget"]].append(record)
    return table


def eval_curve(run_dir: Path, metric: str, split: str = "eval") -> tuple[list[int], list[float]]:
    """``metric`` at each evaluation of a fine-tune run, on the reported set (``eval``) or on
    the carved validation split (``val``: for tasks too costly to score in full along the way)."""
    key = f"{split}_{metric}"
    steps, values = [], []
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        if key in record:
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def plot_labels(table: dict[str, dict[int, list[dict[str, Any]]]], path: Path, metric: str, task: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=120)
    ax.set_title(f"{task}: {metric} against labels")
    for init, by_budget in table.items():
        budgets = sorted(by_budget)
        stats = [mean_and_interval([scale(metric) * c["value"] for c in by_budget[b]]) for b in budgets]
        means = [m for m, _ in stats]
        ax.plot(budgets, means, "o-", label=init, markersize=4)
        top = scale(metric)  # a metric's range ends at 100% (BLEU at 100): the interval is clipped to it
        low, high = [max(0.0, m - h) for m, h in stats], [min(top, m + h) for m, h in stats]
        ax.fill_between(budgets, low, high, alpha=0.18)
    ax.set_xscale("log")
    ax.set_xlabel("labelled examples (log scale)")
    ax.set_ylabel(f"{metric} — mean and 95% interval over seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_steps(table: dict[str, dict[int, list[dict[str, Any]]]], runs: Path, path: Path, metric: str) -> None:
    budgets = sorted({b for by_budget in table.values() for b in by_budget})
    runs_made = [
        c["run"] for by_budget in table.values() for cells in by_budget.values() for c in cells if c.get("run")
    ]
    split = "eval" if any(eval_curve(runs / r, metric)[0] for r in runs_made) else "val"
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), dpi=110, squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for init, by_budget in table.items():
            curves = [eval_curve(runs / c["run"], metric, split) for c in by_budget.get(budget, []) if c.get("run")]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            length = min(len(s) for s, _ in curves)
            steps = curves[0][0][:length]
            mean = [scale(metric) * statistics.fmean(v[i] for _, v in curves) for i in range(length)]
            ax.plot(steps, mean, label=init)
        ax.set_title(f"{budget:,} labels")
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} on the " + ("reported set" if split == "eval" else "validation split"))
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend()
    fig.tight_layout()
    save_figure(fig, path)


def header(budgets: list[int], unit: str = "") -> list[str]:
    return ["| init | " + " | ".join(f"{b:,}{unit}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]


SECONDARY_METRICS = {"macro_f1": "macro-F1", "auc": "ROC AUC"}  # shown beside the main metric when every cell has them


def metric_rows(table: dict[str, dict[int, list[dict[str, Any]]]], budgets: list[int], metric: str) -> list[str]:
    """One Markdown row per init: ``metric``'s mean ± 95% interval (n seeds) at each budget."""
    rows = []
    for init, by_budget in table.items():
        cells = []
        for budget in budgets:
            values = [scale(metric) * c[metric] for c in by_budget.get(budget, [])]
            if values:
                mean, half = mean_and_interval(values)
                spread = f" ± {half:.1f}" if len(values) > 1 else ""  # one seed has no interval
                cells.append(f"{mean:.1f}{spread} ({len(values)})")
            else:
                cells.append("—")
        rows.append(f"| {init} | " + " | ".join(cells) + " |")
    return rows


def write_report(run_dir: Path, config: StudyConfig, architecture: str, references: References) -> Path:
    records = read_results(run_dir / "results.jsonl")
    table = grouped(records)
    order = [*config.inits, *table]  # the study's order of inits, then any no longer listed
    table = {name: table[name] for name in dict.fromkeys(order) if name in table}
    metric = records[0]["metric"] if records else "accuracy"
    budgets = sorted({b for by_budget in table.values() for b in by_budget})
    task = records[0]["task"] if records else "?"
    plot_labels(table, run_dir / "metric_vs_labels.png", metric, task)
    plot_steps(table, run_dir / "runs", run_dir / "metric_vs_step.png", metric)
    scratch = next((name for name, source in config.inits.items() if source == "scratch"), None)

    lines = [f"# Transfer study: {run_dir.name}", ""]
    lines += [f"Task: `{task}`, metric: {metric} on the reported set (mean ± 95% interval over seeds, "
              "n seeds in brackets). Every value is in `results.jsonl`.", "", *header(budgets, " labels")]  # fmt: skip
    lines += metric_rows(table, budgets, metric)
    lines += ["", "![metric against labels](metric_vs_labels.png)", ""]
    for other, title in SECONDARY_METRICS.items():
        if other != metric and records and all(other in r for r in records):
            lines += [f"The same cells' {title}:", "", *header(budgets, " labels")]
            lines += [*metric_rows(table, budgets, other), ""]

    if scratch and scratch in table:
        scratch_budgets, scratch_means = mean_curve(table[scratch])
        lines += ["## Label efficiency", "",
                  "Labels a baseline needs to match each init, read off the baseline's curve (linear in log-labels); "
                  "≥ when the baseline never gets there within the budgets measured.", "",
                  f"Against `{scratch}`: the same architecture from random init, given the same fine-tuning sweep "
                  "as every init — what pretraining buys.", "", *header(budgets)]  # fmt: skip
        lines += efficiency_rows(table, budgets, scratch)
        supervised = config.supervised
        if supervised and supervised in table and supervised != scratch:
            lines += ["", f"Against `{supervised}`: plain supervised fine-tuning from random init, on the labels "
                      "alone — what headstart buys a user in all (pretraining and every fine-tuning mode).", "",
                      *header(budgets), *efficiency_rows(table, budgets, supervised)]  # fmt: skip
        elif supervised == scratch:
            lines += ["", f"`{scratch}` is also the study's plain supervised baseline (`supervised: {scratch}`), so "
                      "the table above is both label efficiencies: what pretraining buys, and what headstart buys "
                      "a user in all."]  # fmt: skip
        else:
            lines += ["", "The study names no plain supervised baseline (`supervised:` an init from scratch "
                      "fine-tuned on the labels alone), so the table above is the only label efficiency."]  # fmt: skip
        target = config.target or scratch_means[-1]
        why = "set in the study" if config.target else f"what {scratch} reaches with {scratch_budgets[-1]:,} labels"
        lines += ["", "## Steps to target", ""]
        lines += steps_to_target_rows(table, config, budgets, run_dir / "runs", metric, target, why)
        lines += ["", "![metric against fine-tuning step](metric_vs_step.png)", ""]

    fits = fitted_curves(table, metric)
    lines += forecast_section(table, config, metric, scratch, fits)
    lines += payoff_section(table, config, scratch, fits, references)
    lines += compute_section(table, config, references)
    lines += ["## What each init was given and chose", "",
              "Sweep (the same for every fine-tuned init): " + "; ".join(f"`{n}`: {' '.join(o) or 'recipe defaults'}"
              for n, o in config.sweep.items()) + f". Base recipe `{config.finetune}`. "
              f"Each cell kept the candidate with the best {metric} on the validation split carved from its own "
              "budget; references fit a logistic regression whose L2 strength is chosen the same way.", "",
              "| init | source | chosen (cells) |", "|---|---|---|"]  # fmt: skip
    for init, by_budget in table.items():
        chosen: dict[str, int] = defaultdict(int)
        for cells in by_budget.values():
            for c in cells:
                chosen[c["chosen"].split(" l2=")[0]] += 1
        source = config.inits[init]
        shown = f"`{source}`" if source not in ("scratch", *REFERENCES) else source
        if source == "scratch":
            shown = f"random init, the architecture of `{architecture}`"
        lines.append(f"| {init} | {shown} | " + ", ".join(f"{k} ×{v}" for k, v in sorted(chosen.items())) + " |")
    return write_markdown(run_dir / "report.md", lines)


def mean_curve(by_budget: dict[int, list[dict[str, Any]]]) -> tuple[list[int], list[float]]:
    """An init's budgets, ascending, and its mean value over seeds at each: the curve label
    efficiency is read off."""
    budgets = sorted(by_budget)
    return budgets, [statistics.fmean(c["value"] for c in by_budget[b]) for b in budgets]


def efficiency_rows(table: dict[str, dict[int, list[dict[str, Any]]]], budgets: list[int], baseline: str) -> list[str]:
    """Per init and budget: how many labels ``baseline`` needs to match the init's mean, as a multiple."""
    baseline_budgets, baseline_means = mean_curve(table[baseline])
    rows = []
    for init, by_budget in table.items():
        if init == baseline:
            continue
        cells = []
        for budget in budgets:
            if budget not in by_budget:
                cells.append("—")
                continue
            value = statistics.fmean(c["value"] for c in by_budget[budget])
            cells.append(str(label_efficiency(budget, value, baseline_budgets, baseline_means)))
        rows.append(f"| {init} | " + " | ".join(cells) + " |")
    return rows


def steps_to_target_rows(
    table: dict[str, dict[int, list[dict[str, Any]]]],
    config: StudyConfig,
    budgets: list[int],
    runs: Path,
    metric: str,
    target: float,
    why: str,
) -> list[str]:
    """Per init and budget, the median fine-tuning step at which the reported metric first reached
    ``target``; said to be unmeasured when the task keeps no curve of the reported set."""
    curves = {
        (init, budget): [eval_curve(runs / c["run"], metric) for c in cells if c.get("run")]
        for init, by_budget in table.items()
        if config.inits[init] not in REFERENCES
        for budget, cells in by_budget.items()
    }
    if not any(steps for cell in curves.values() for steps, _ in cell):
        return [f"Not measured: this task does not score the reported set while it fine-tunes (it is scored once, "
                f"with the weights of the best validation step), so there is no curve to read the step at which "
                f"{metric} reached {scale(metric) * target:.1f} off.", ""]  # fmt: skip
    lines = [f"Fine-tuning steps until the reported {metric} first reaches {scale(metric) * target:.1f} ({why}); "
             "median over seeds (seeds there / seeds), — when none is.", "", *header(budgets)]  # fmt: skip
    for init in table:
        if config.inits[init] in REFERENCES:
            continue
        cells = []
        for budget in budgets:
            reached = [steps_to_target(steps, values, target) for steps, values in curves.get((init, budget), [])]
            hits = sorted(s for s in reached if s is not None)
            cells.append(f"{statistics.median(hits):.0f} ({len(hits)}/{len(reached)})" if hits else "—")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    return lines


def top_of(metric: str) -> float:
    """The metric's top: 1 for fractions, 100 for BLEU."""
    return 100.0 if metric == "bleu" else 1.0


def seed_values(table: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, dict[int, list[float]]]:
    return {init: {budget: [c["value"] for c in cells] for budget, cells in by_budget.items()}
            for init, by_budget in table.items()}  # fmt: skip


def fitted_curves(table: dict[str, dict[int, list[dict[str, Any]]]], metric: str) -> dict[str, Forecast]:
    """A learning curve per init with enough budgets; an init whose fit fails is left out."""
    fits = {}
    for init, by_budget in seed_values(table).items():
        if len(by_budget) >= MIN_BUDGETS:
            try:
                fits[init] = forecast(by_budget, top_of(metric))
            except RuntimeError:  # least squares found no curve: the report says it was not fitted
                continue
    return fits


def forecast_target(table: dict[str, dict[int, list[dict[str, Any]]]], config: StudyConfig) -> tuple[float, str]:
    """The study's ``target``, or the best mean any init measured; and why it is the target."""
    if config.target:
        return config.target, "set in the study"
    best = max(statistics.fmean(v) for by_budget in seed_values(table).values() for v in by_budget.values())
    return best, "the best mean measured"


def labels_shown(labels: float) -> str:
    return "never" if math.isinf(labels) else f"{labels:,.0f}"


def forecast_section(
    table: dict[str, dict[int, list[dict[str, Any]]]],
    config: StudyConfig,
    metric: str,
    scratch: str | None,
    fits: dict[str, Forecast],
) -> list[str]:
    """Per init with enough budgets: the fitted learning curve, the labels it needs to reach the
    target, the label efficiency it implies beyond the measured budgets, and the backtest."""
    shown, ceiling = scale(metric), top_of(metric)
    values = seed_values(table)
    lines = ["## Forecast", ""]
    if not fits:
        return [*lines, f"Not fitted: a learning curve needs at least {MIN_BUDGETS} budgets per init.", ""]
    target, why = forecast_target(table, config)
    largest = max(b for by_budget in values.values() for b in by_budget)
    lines += [f"Each init's {metric} against labels n, fitted as a − b·n^(−c) on every seed's point; 95% intervals "
              "from a bootstrap of the fit's residuals. The backtest fits again without the largest budget and "
              "predicts it.", "",
              f"| init | fitted curve | labels to reach {shown * target:.1f} ({why}) | at {10 * largest:,} labels "
              "| backtest: predicted (interval) → measured |", "|---|---|---|---|---|"]  # fmt: skip
    for init, fit in fits.items():
        curve = fit.curve
        needed, low, high = fit.labels_for(target)
        value, vlow, vhigh = fit.value_at(10 * largest)
        check = backtest(values[init], ceiling)
        tested = "— (needs 4 budgets)" if check is None else (
            f"{shown * check.predicted:.1f} ({shown * check.low:.1f}–{shown * check.high:.1f}) → "
            f"{shown * check.measured:.1f} at {check.budget:,}: error {shown * check.error:+.1f}, "
            + ("inside" if check.inside else "outside") + " the interval"
        )  # fmt: skip
        lines.append(
            f"| {init} | {shown * curve.asymptote:.1f} − {shown * curve.scale:.3g}·n^(−{curve.exponent:.2f}) | "
            f"{labels_shown(needed)} ({labels_shown(low)}–{labels_shown(high)}) | "
            f"{shown * value:.1f} ({shown * vlow:.1f}–{shown * vhigh:.1f}) | {tested} |"
        )
    if scratch in fits:
        grid = sorted({*(b for by_budget in values.values() for b in by_budget), 2 * largest, 10 * largest})
        lines += ["", f"Label efficiency against `{scratch}` read off the fitted curves, measured budgets and beyond "
                  f"({2 * largest:,} and {10 * largest:,}): labels `{scratch}`'s curve needs to reach what the init's "
                  "curve reaches, as a multiple.", "", *header(grid)]  # fmt: skip
        for init, fit in fits.items():
            if init == scratch:
                continue
            cells = []
            for budget in grid:
                needed = fits[scratch].curve.labels_for(fit.curve(budget))
                cells.append("never" if math.isinf(needed) else f"{needed / budget:.1f}×")
            lines.append(f"| {init} | " + " | ".join(cells) + " |")
    skipped = [init for init in table if init not in fits]
    if skipped:
        lines += ["", "Not fitted (fewer than 3 budgets, or no curve found): " + ", ".join(f"`{i}`" for i in skipped)]
    return [*lines, ""]


@dataclass(frozen=True)
class RouteCost:
    """What reaching the target costs one init: labels, and the compute before and after them."""

    labels: float  # forecast; inf: its curve never gets there
    flops: float  # pretraining (ancestors included) and one fine-tuning sweep
    money: float  # the compute priced by the study's cost.*_hour; 0 without prices


def route_cost(
    init: str, cells: list[dict[str, Any]], labels: float, config: StudyConfig, references: References
) -> RouteCost:
    source, cost = config.inits[init], config.cost
    price = {"cpu": cost.cpu_hour, "cuda": cost.gpu_hour}
    pre_flops, hours = 0.0, 0.0
    if source not in ("scratch", "skipgram", *REFERENCES):
        folder = ckpt.resolve_checkpoint(source)
        runs = [read_json(folder / "compute.json") or {}, *(read_json(folder / LINEAGE) or [])]
        pre_flops = pretraining_cost(source, references)[0]
        hours = sum((r.get("wall_seconds") or 0.0) / 3600 * price[device_kind(r.get("device"))] for r in runs)
    sweep_flops = statistics.fmean(c.get("sweep_flops", 0.0) for c in cells)
    tune_hours = statistics.fmean(
        c.get("sweep_seconds", 0.0) / 3600 * price[device_kind(c.get("device"))] for c in cells
    )
    return RouteCost(labels, pre_flops + sweep_flops, hours + tune_hours)


def device_kind(device: str | None) -> str:
    """``cuda`` for any CUDA device (``cuda:0``), else ``cpu``: which hourly price applies."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def payoff_section(
    table: dict[str, dict[int, list[dict[str, Any]]]],
    config: StudyConfig,
    scratch: str | None,
    fits: dict[str, Forecast],
    references: References,
) -> list[str]:
    """Per init: what reaching the target costs in labels, FLOPs and (with prices) money; and
    the label price above which its route beats scratch's."""
    if not fits:
        return []
    target, why = forecast_target(table, config)
    cost, priced = config.cost, bool(config.cost.cpu_hour or config.cost.gpu_hour)
    routes = {
        init: route_cost(init, [c for cells in table[init].values() for c in cells], fit.labels_for(target)[0],
                         config, references)
        for init, fit in fits.items()
    }  # fmt: skip
    columns = ["init", "labels", "compute FLOPs", *(["compute cost"] if priced else []),
               *(["total cost"] if cost.label else [])]  # fmt: skip
    lines = ["## Pay-off", "",
             f"What reaching the target ({why}) costs each init: the forecast's labels, and its compute — "
             "pretraining (earlier runs included) and one fine-tuning sweep (the mean over its cells)"
             + (f", priced at {cost.cpu_hour:g} per CPU-hour and {cost.gpu_hour:g} per GPU-hour" if priced else "")
             + (f"; labels at {cost.label:g} each" if cost.label else "") + ".", "",
             "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]  # fmt: skip
    for init, route in routes.items():
        cells = [labels_shown(route.labels), f"{route.flops:.3g}"]
        if priced:
            cells.append(f"{route.money:,.2f}")
        if cost.label:
            cells.append("—" if math.isinf(route.labels) else f"{route.labels * cost.label + route.money:,.2f}")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    if scratch in routes:
        base = routes[scratch]
        lines += ["", f"Break-even against `{scratch}`: the label price above which an init's route to the target "
                  "costs less than scratch's (its extra compute over the labels it saves)" + ("" if priced else
                  "; without prices, the extra FLOPs per label saved") + ".", ""]  # fmt: skip
        for init, route in routes.items():
            if init == scratch:
                continue
            lines.append(f"- `{init}`: {break_even(route, base, priced)}")
    return [*lines, ""]


def break_even(route: RouteCost, scratch: RouteCost, priced: bool) -> str:
    if math.isinf(route.labels):
        return "never reaches the target on its fitted curve"
    if math.isinf(scratch.labels):
        return "pays at any label price: scratch's curve never reaches the target"
    saved = scratch.labels - route.labels
    if saved <= 0:
        return f"never: it needs {-saved:,.0f} more labels than scratch"
    extra = (route.money - scratch.money) if priced else (route.flops - scratch.flops)
    if extra <= 0:
        return f"pays at any label price: it saves {saved:,.0f} labels and costs no more compute"
    return (f"pays above {extra / saved:,.4g} per label (saves {saved:,.0f} labels)" if priced
            else f"{extra / saved:.3g} extra FLOPs per label saved ({saved:,.0f} labels saved)")  # fmt: skip


def compute_section(
    table: dict[str, dict[int, list[dict[str, Any]]]], config: StudyConfig, references: References
) -> list[str]:
    """Pretraining FLOPs (the checkpoint's compute.json, plus its ancestors' for a continued one),
    fine-tuning FLOPs, and the break-even: how many fine-tuning sweeps from scratch the
    pretraining compute would pay for (the init's own sweep where the study has no scratch init)."""
    sweeps = {
        init: [c["sweep_flops"] for cells in by_budget.values() for c in cells] for init, by_budget in table.items()
    }
    per_sweep = {init: statistics.fmean(values) if values else 0.0 for init, values in sweeps.items()}
    scratch = [per_sweep[init] for init in table if config.inits[init] == "scratch" and per_sweep[init]]
    divisor = "a scratch sweep" if scratch else "the init's own sweep"
    lines = ["## Compute", "",
             "| init | pretraining FLOPs | pretraining wall time | fine-tune FLOPs per sweep (mean) | "
             f"break-even (sweeps of {divisor}) |", "|---|---|---|---|---|"]  # fmt: skip
    for init in table:
        pre_flops, wall = pretraining_cost(config.inits[init], references)
        against = scratch[0] if scratch else per_sweep[init]
        break_even = f"{pre_flops / against:,.0f}" if pre_flops and against else "—"
        lines.append(f"| {init} | {pre_flops:.3g} | {wall} | {per_sweep[init]:.3g} | {break_even} |")
    lines += ["", f"Break-even: pretraining FLOPs over the FLOPs of {divisor} (its mean over the cells) — how "
              "many extra fine-tuning sweeps the same compute would buy; the label-efficiency table says what it "
              "buys instead. Fine-tuning FLOPs count the training steps (forward and backward) of every "
              "candidate in the sweep; the evaluations that pick each candidate's best step are not counted.",
              ""]  # fmt: skip
    return lines


def pretraining_cost(source: str, references: References) -> tuple[float, str]:
    """FLOPs an init's pretraining spent (its ancestors' included) and its wall time, as shown."""
    if source == "skipgram":
        vectors: WordVectors = references.vectors()
        return 0.0, f"{vectors.seconds:.0f} s ({vectors.pairs:,} word pairs)"
    if source in ("scratch", *REFERENCES):
        return 0.0, "—"
    folder = ckpt.resolve_checkpoint(source)
    compute = read_json(folder / "compute.json")
    if not compute:
        return 0.0, "—"
    ancestors = read_json(folder / LINEAGE) or []  # a continued checkpoint also cost its parents
    wall = f"{compute['wall_seconds'] / 60:.1f} min on {compute['device']}"
    if ancestors:
        wall += f" (+ {len(ancestors)} earlier run{'s' if len(ancestors) > 1 else ''})"
    return compute["flops"] + sum(entry.get("flops") or 0.0 for entry in ancestors), wall
