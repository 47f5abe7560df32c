"""Learning-curve forecasts: how many labels an init needs to reach a target, and what it
would reach with budgets that were not measured.

The metric against labels n is fitted as a saturating power law, value(n) = a − b·n^(−c)
(the learning-curve literature's form: Hestness et al. 2017; Viering & Loog 2022), by least
squares on every seed's point. The interval comes from a bootstrap of the fit's residuals.
Where the fitted asymptote sits at the metric's top, the points have not shown saturation and
the curve's bend comes from the bound, not from them (both CoNLL-2003 curves did this, and the
bootstrap, bound too, gave scratch an interval that missed its next budget): each resample then
also fits the unsaturated limit, value = α + β·ln n (c → 0, capped at the top), and the interval
spans both forms. The forecast is checked where it can be: fitted again without the largest
budget, it predicts that budget, and the error is reported beside its interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_BUDGETS = 3  # three parameters: fewer distinct budgets cannot pin the curve
BOOTSTRAP = 200
MAX_EXPONENT = 2.0


@dataclass(frozen=True)
class PowerLaw:
    """value(n) = asymptote − scale · n^(−exponent)."""

    asymptote: float
    scale: float
    exponent: float

    def __call__(self, labels: float) -> float:
        return self.asymptote - self.scale * labels ** (-self.exponent)

    def labels_for(self, target: float) -> float:
        """Labels at which the curve reaches ``target``: infinite at or above its asymptote."""
        if target >= self.asymptote:
            return math.inf
        if self.scale <= 0:
            return 1.0
        log_labels = (math.log(self.scale) - math.log(self.asymptote - target)) / self.exponent
        return math.inf if log_labels > 700 else math.exp(log_labels)  # a flat curve: beyond any count


@dataclass(frozen=True)
class LogLinear:
    """value(n) = intercept + slope · ln n, no higher than ``ceiling``: a power law's c → 0 limit."""

    intercept: float
    slope: float
    ceiling: float

    def __call__(self, labels: float) -> float:
        return min(self.ceiling, self.intercept + self.slope * math.log(labels))

    def labels_for(self, target: float) -> float:
        """Labels at which the line reaches ``target``: infinite above the ceiling or on a flat line."""
        if target > self.ceiling:
            return math.inf
        if self.slope <= 0:
            return 1.0 if target <= self.intercept else math.inf
        log_labels = (target - self.intercept) / self.slope
        return math.inf if log_labels > 700 else math.exp(max(0.0, log_labels))


def fit_log_linear(labels: np.ndarray, values: np.ndarray, ceiling: float) -> LogLinear:
    slope, intercept = np.polyfit(np.log(labels), values, 1)
    return LogLinear(float(intercept), float(slope), ceiling)


def _curve(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * n ** (-c)


def fit_power_law(labels: Sequence[float], values: Sequence[float], ceiling: float = 1.0) -> PowerLaw:
    """Least-squares fit on (labels, value) points, one per seed and budget; the asymptote stays
    at or below ``ceiling`` (a metric's top) and at or above the best value measured."""
    n, y = np.asarray(labels, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(np.unique(n)) < MIN_BUDGETS:
        raise ValueError(f"a power law needs at least {MIN_BUDGETS} distinct budgets, got {len(np.unique(n))}")
    top, bottom = float(y.max()), float(y.min())
    low = min(top, ceiling)  # the asymptote is not below what was measured
    a0 = min(ceiling, max(low, top + 0.1 * (top - bottom) + 1e-3))
    b0 = max(a0 - bottom, 1e-3) * math.sqrt(float(n.min()))  # so that the start passes near the smallest budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        (a, b, c), _ = curve_fit(
            _curve, n, y, p0=[a0, b0, 0.5], bounds=([low, 0.0, 1e-3], [ceiling + 1e-9, np.inf, MAX_EXPONENT]),
            maxfev=20000,
        )  # fmt: skip
    return PowerLaw(min(float(a), ceiling), float(b), float(c))


@dataclass(frozen=True)
class Forecast:
    """A fitted curve and bootstrap intervals (2.5th–97.5th percentiles) of what it predicts."""

    curve: PowerLaw
    fits: tuple[PowerLaw | LogLinear, ...]  # one per bootstrap resample, two when the fit is unsaturated

    def value_at(self, labels: float) -> tuple[float, float, float]:
        """Predicted value at ``labels``: the fit's, and its 95% interval."""
        samples = np.array([fit(labels) for fit in self.fits])
        return self.curve(labels), float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))

    def labels_for(self, target: float) -> tuple[float, float, float]:
        """Labels needed to reach ``target``: the fit's, and its 95% interval (inf: never)."""
        samples = np.array([fit.labels_for(target) for fit in self.fits])  # inf where a resample never gets there
        low, high = np.percentile(samples, 2.5, method="lower"), np.percentile(samples, 97.5, method="higher")
        return self.curve.labels_for(target), float(low), float(high)


def forecast(by_budget: dict[int, Sequence[float]], ceiling: float = 1.0, seed: int = 0) -> Forecast:
    """Fit ``by_budget`` (budget → the seeds' values) and bootstrap it by residuals: each
    resample adds the fit's residuals, drawn with replacement over every seed and budget and
    widened for the three fitted parameters, to the fitted values, and refits (both forms when
    the asymptote sits at ``ceiling``: the module docstring)."""
    budgets = sorted(by_budget)
    labels = np.array([b for b in budgets for _ in by_budget[b]], dtype=np.float64)
    values = np.array([v for b in budgets for v in by_budget[b]], dtype=np.float64)
    curve = fit_power_law(labels, values, ceiling)
    unsaturated = curve.asymptote >= ceiling * (1 - 1e-6)
    fitted = np.array([curve(n) for n in labels])
    residuals = (values - fitted) * math.sqrt(len(values) / max(1, len(values) - 3))
    rng = np.random.default_rng(seed)
    fits: list[PowerLaw | LogLinear] = []
    for _ in range(BOOTSTRAP):
        resample = fitted + rng.choice(residuals, len(residuals))
        fits.append(fit_power_law(labels, resample, ceiling))
        if unsaturated:
            fits.append(fit_log_linear(labels, resample, ceiling))
    return Forecast(curve, tuple(fits))


@dataclass(frozen=True)
class Backtest:
    """The forecast for the largest budget from the smaller ones, against what was measured."""

    budget: int
    predicted: float
    low: float
    high: float
    measured: float

    @property
    def error(self) -> float:
        return self.predicted - self.measured

    @property
    def inside(self) -> bool:
        return self.low <= self.measured <= self.high


def backtest(by_budget: dict[int, Sequence[float]], ceiling: float = 1.0, seed: int = 0) -> Backtest | None:
    """Fit without the largest budget and predict it; None when too few budgets would remain."""
    budgets = sorted(by_budget)
    if len(budgets) < MIN_BUDGETS + 1:
        return None
    held = budgets[-1]
    predicted, low, high = forecast({b: by_budget[b] for b in budgets[:-1]}, ceiling, seed).value_at(held)
    return Backtest(held, predicted, low, high, float(np.mean(by_budget[held])))
