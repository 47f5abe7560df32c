import json
import math
from dataclasses import replace

import numpy as np
import pytest

from headstart.config import CostConfig, StudyConfig
from headstart.transfer.forecast import LogLinear, PowerLaw, backtest, fit_power_law, forecast
from headstart.transfer.report import RouteCost, break_even, write_report

TRUTH = PowerLaw(asymptote=0.9, scale=1.2, exponent=0.5)
BUDGETS = [50, 100, 200, 500, 1000, 2000]


def noisy_points(seed: int, noise: float, seeds: int = 5) -> dict[int, list[float]]:
    rng = np.random.default_rng(seed)
    return {b: [TRUTH(b) + float(rng.normal(0, noise)) for _ in range(seeds)] for b in BUDGETS}


def test_the_fit_recovers_a_synthetic_power_law():
    labels = [b for b in BUDGETS for _ in range(3)]
    fit = fit_power_law(labels, [TRUTH(b) for b in labels])
    assert fit.asymptote == pytest.approx(0.9, abs=1e-4)
    assert fit.scale == pytest.approx(1.2, rel=1e-3) and fit.exponent == pytest.approx(0.5, rel=1e-3)
    assert fit.labels_for(0.85) == pytest.approx((1.2 / 0.05) ** 2, rel=1e-3)  # 576 labels
    assert math.isinf(fit.labels_for(0.95))  # above the asymptote: never


def test_the_asymptote_stays_within_the_metrics_range():
    labels = [10, 20, 40, 80]
    fit = fit_power_law(labels, [0.90, 0.95, 0.98, 0.995], ceiling=1.0)
    assert 0.995 <= fit.asymptote <= 1.0


def test_the_bootstrap_interval_covers_the_truth_in_most_repetitions():
    covered = 0
    for repetition in range(20):
        predicted, low, high = forecast(noisy_points(repetition, 0.01), seed=repetition).value_at(5000)
        covered += low <= TRUTH(5000) <= high
        assert low <= predicted <= high
    assert covered >= 16  # a 95% interval: at least 80% of 20 repetitions


def test_the_labels_needed_interval_covers_the_truth():
    needed, low, high = forecast(noisy_points(0, 0.005)).labels_for(0.85)
    assert low <= TRUTH.labels_for(0.85) <= high and low <= needed <= high


def test_backtest_predicts_the_largest_budget_from_the_others():
    result = backtest(noisy_points(1, 0.005))
    assert result is not None and result.budget == 2000
    assert result.inside and abs(result.error) < 0.02
    assert backtest({100: [0.5], 200: [0.6], 400: [0.7]}) is None  # two budgets would be left: no fit


def test_an_unsaturated_curve_keeps_the_log_linear_limit_inside_its_interval():
    """Points rising by the same step per ×4 labels (no saturation yet, as scratch on CoNLL-2003):
    the power law's asymptote sits at the metric's top and bends the curve; the interval at the
    next budget still covers the straight line in log-labels, which it misses when the bound bends
    every resample alike."""
    rng = np.random.default_rng(0)
    line = LogLinear(intercept=-0.45, slope=0.095, ceiling=1.0)  # 0.17 at 100 labels, +0.13 per ×4
    points = {b: [line(b) + float(rng.normal(0, 0.01)) for _ in range(3)] for b in (100, 400, 1600)}
    result = forecast(points)
    assert result.curve.asymptote == pytest.approx(1.0)  # at the bound: unsaturated
    _, low, high = result.value_at(6400)
    assert low <= line(6400) <= high
    assert any(isinstance(fit, LogLinear) for fit in result.fits)
    saturated = forecast(noisy_points(0, 0.01))
    assert saturated.curve.asymptote < 1.0 and not any(isinstance(fit, LogLinear) for fit in saturated.fits)


def test_too_few_budgets_are_refused():
    with pytest.raises(ValueError, match="at least 3 distinct budgets"):
        fit_power_law([100, 100, 500], [0.5, 0.6, 0.7])


def write_results(folder, curves: dict[str, PowerLaw], budgets: list[int]) -> None:
    rng = np.random.default_rng(0)
    lines = [
        json.dumps({"init": init, "budget": budget, "seed": seed, "metric": "accuracy", "task": "toy",
                    "value": (value := curve(budget) + float(rng.normal(0, 0.003))), "accuracy": value,
                    "sweep_flops": 1.0, "chosen": "lr", "run": ""})
        for init, curve in curves.items() for budget in budgets for seed in range(5)
    ]  # fmt: skip
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_the_report_forecasts_labels_to_target_backtests_and_reads_efficiency_off_the_curves(tmp_path):
    scratch = PowerLaw(0.9, 2.0, 0.5)
    pretrained = PowerLaw(0.9, 0.6, 0.5)  # scratch needs (2.0 / 0.6)² ≈ 11× the labels for the same value
    write_results(tmp_path, {"pretrained": pretrained, "scratch": scratch}, [100, 300, 1000, 3000])
    inits = {"scratch": "scratch", "pretrained": "scratch"}  # the first from scratch is the baseline
    config = StudyConfig(inits=inits, budgets=[100, 300, 1000, 3000])
    report = write_report(tmp_path, config, "", references=None).read_text()
    section = report[report.index("## Forecast") : report.index("## Pay-off")]
    assert "labels to reach" in section and "30,000 labels" in section
    pretrained_row = next(line for line in section.splitlines() if line.startswith("| pretrained | 9"))
    backtested = pretrained_row.split("at 3,000: error ")[1]  # the 3,000-label cells, forecast from the other three
    assert abs(float(backtested.split(",")[0])) < 1.0 and "the interval" in backtested
    assert "| scratch | 9" in section and "| pretrained | 9" in section
    efficiency = [line for line in section.splitlines() if line.startswith("| pretrained | ")][-1]
    ratios = [cell.strip() for cell in efficiency.split("|")[2:-1]]
    assert len(ratios) == 6 and all(8.0 < float(r.rstrip("×")) < 14.0 for r in ratios[:2])  # ≈ 11× where measured
    write_results(tmp_path, {"pretrained": pretrained, "scratch": scratch}, [100, 1000])
    fewer = write_report(tmp_path, replace(config, budgets=[100, 1000]), "", references=None).read_text()
    assert "Not fitted: a learning curve needs at least 3 budgets per init." in fewer


def test_break_even_label_price_on_a_hand_computed_case():
    scratch = RouteCost(labels=4000, flops=1e12, money=0.5)
    pretrained = RouteCost(labels=1000, flops=4e15, money=30.5)  # 30 more in compute, 3,000 labels fewer
    assert break_even(pretrained, scratch, priced=True) == "pays above 0.01 per label (saves 3,000 labels)"
    assert break_even(pretrained, scratch, priced=False) == "1.33e+12 extra FLOPs per label saved (3,000 labels saved)"
    never = RouteCost(labels=math.inf, flops=0.0, money=0.0)
    assert break_even(pretrained, never, priced=True).startswith("pays at any label price")
    assert break_even(never, scratch, priced=True) == "never reaches the target on its fitted curve"
    more = RouteCost(labels=5000, flops=1e15, money=9.0)
    assert break_even(more, scratch, priced=True) == "never: it needs 1,000 more labels than scratch"


def test_the_report_prices_the_routes_to_the_target(tmp_path):
    write_results(tmp_path, {"scratch": PowerLaw(0.9, 2.0, 0.5), "semi": PowerLaw(0.9, 0.6, 0.5)}, [100, 300, 1000])
    config = StudyConfig(inits={"scratch": "scratch", "semi": "scratch"}, budgets=[100, 300, 1000],
                         target=0.85, cost=CostConfig(label=2.0, cpu_hour=0.5))  # fmt: skip
    report = write_report(tmp_path, config, "", references=None).read_text()
    section = report[report.index("## Pay-off") : report.index("## Compute")]
    assert "labels at 2 each" in section and "0.5 per CPU-hour" in section
    row = next(line for line in section.splitlines() if line.startswith("| semi |"))
    labels = float(row.split("|")[2].replace(",", ""))
    assert 100 < labels < 250  # (0.6 / 0.05)² = 144 on the true curve
    assert float(row.split("|")[5].replace(",", "")) == pytest.approx(2.0 * labels, rel=0.01)  # no compute priced
    assert "- `semi`: pays at any label price: it saves" in section
