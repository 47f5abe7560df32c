"""The gain continued (domain-adaptive) pretraining predicts for a new target, from the gains
measured where it was tried (``adaptations.yaml`` and a user's own pairs).

The model is a random-effects meta-regression: each measured pair's gain against its top-10k
vocabulary overlap (the measure Gururangan et al. 2020 found to track DAPT's gain), a straight
line weighted by each pair's standard error plus τ², the variance of the true gains around the
line (one adaptation recipe buys more than another at the same overlap). With a handful of pairs
τ cannot be read off the data: the method of moments puts it at zero whenever they happen to lie
near a line, and then forecast a new pair too confidently (it said "continue" for a pair that
measured −1.9 points; benchmarks/RESULTS.md). So τ is integrated out under a half-normal prior
of scale ``TAU_PRIOR_SCALE`` (weakly informative, as Röver et al. 2021 advise for meta-analyses
of few studies), the line given τ by weighted least squares with its likelihood integrated over
the coefficients (REML), and the forecast is the mixture over τ. Outside the measured overlaps it
does not extrapolate: the gain is taken to fall no further than at the nearest measured end.

The verdict compares the 95% prediction interval with the smallest gain worth a run:
"continue" when even its low end clears it, "not worth it" when even its high end does not,
otherwise "unclear — run the pilot"."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from scipy.optimize import brentq
from scipy.stats import norm

from headstart.errors import HeadstartError

MEASURED = Path(__file__).with_name("adaptations.yaml")
WORTHWHILE_GAIN = 1.0  # points of the task's metric: less is not worth a continued pretraining run
MIN_PAIRS = 3  # a line and the scatter about it need at least three gains
# τ's prior: half-normal, in points of the task's metric; about the per-seed spread of a 500-label fine-tune
TAU_PRIOR_SCALE = 2.0
TAU_GRID = np.linspace(0.0, 8 * TAU_PRIOR_SCALE, 401)

Verdict = Literal["continue", "not worth it", "unclear"]


@dataclass(frozen=True)
class MeasuredPair:
    """One target where continued pretraining was measured against the general checkpoint."""

    name: str
    adaptation: str
    task: str
    budget: int
    overlap: float  # top-10k vocabulary overlap, general corpus → adaptation corpus
    gain: float  # adapted − general, points of the task's metric at ``budget`` labels
    standard_error: float  # of ``gain``
    seeds: int


def read_pairs(path: str | Path) -> list[MeasuredPair]:
    """The measured pairs in a YAML list; a damaged entry is one clear error naming it."""
    where = Path(path)
    try:
        entries = yaml.safe_load(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise HeadstartError(f"--pairs {where}: expected a readable YAML list of measured pairs ({reason})") from None
    if not isinstance(entries, list) or not entries:
        raise HeadstartError(f"--pairs {where}: expected a non-empty YAML list of measured pairs")
    names = [f.name for f in fields(MeasuredPair)]
    pairs = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or sorted(entry) != sorted(names):
            raise HeadstartError(f"--pairs {where}: entry {number} must have exactly the fields {', '.join(names)}")
        try:
            numbers = {key: float(entry[key]) for key in ("overlap", "gain", "standard_error")}
            pair = MeasuredPair(**{**entry, **numbers, "budget": int(entry["budget"]), "seeds": int(entry["seeds"])})
        except (TypeError, ValueError):
            raise HeadstartError(f"--pairs {where}: entry {number} has a non-numeric measure") from None
        if not 0.0 <= pair.overlap <= 1.0 or not pair.standard_error > 0 or not math.isfinite(pair.gain):
            raise HeadstartError(
                f"--pairs {where}: entry {number} needs overlap in [0, 1], a positive standard_error and a finite gain"
            )
        pairs.append(pair)
    return pairs


@dataclass(frozen=True)
class GainForecast:
    """Continued pretraining's predicted gain at one overlap, with its 95% prediction interval."""

    overlap: float
    gain: float
    low: float
    high: float
    pairs: int
    clamped_to: float | None  # the measured end used in place of ``overlap``, outside the range
    worthwhile: float

    @property
    def verdict(self) -> Verdict:
        if self.low >= self.worthwhile:
            return "continue"
        if self.high < self.worthwhile:
            return "not worth it"
        return "unclear"


@dataclass(frozen=True)
class GainModel:
    """gain ≈ intercept + slope · overlap, fitted on measured pairs for each τ of ``TAU_GRID``,
    with τ's posterior weights (see the module docstring)."""

    weights: np.ndarray  # posterior probability of each τ
    coefficients: np.ndarray  # (τ, 2): intercept and slope given τ
    covariances: np.ndarray  # (τ, 2, 2): their covariance given τ
    overlap_range: tuple[float, float]
    pairs: int

    @classmethod
    def fit(cls, pairs: list[MeasuredPair]) -> GainModel:
        overlaps = np.array([p.overlap for p in pairs])
        if len(pairs) < MIN_PAIRS or np.ptp(overlaps) == 0:
            raise HeadstartError(
                f"measured pairs: {len(pairs)} given; a forecast needs at least 3, at two or more overlaps"
            )
        gains = np.array([p.gain for p in pairs])
        variances = np.array([p.standard_error**2 for p in pairs])
        design = np.stack([np.ones_like(overlaps), overlaps], axis=1)
        fits = [_weighted_line(design, gains, 1.0 / (variances + tau**2)) for tau in TAU_GRID]
        log_posterior = np.array([
            _restricted_log_likelihood(design, gains, variances + tau**2, *fit) - 0.5 * (tau / TAU_PRIOR_SCALE) ** 2
            for tau, fit in zip(TAU_GRID, fits, strict=True)
        ])  # fmt: skip
        weights = np.exp(log_posterior - log_posterior.max())
        span = (float(overlaps.min()), float(overlaps.max()))
        return cls(weights / weights.sum(), np.array([f[0] for f in fits]), np.array([f[1] for f in fits]), span,
                   len(pairs))  # fmt: skip

    @property
    def between_pairs(self) -> float:
        """τ²'s posterior mean: the variance of the true gains around the line."""
        return float(self.weights @ TAU_GRID**2)

    def forecast(self, overlap: float, worthwhile: float = WORTHWHILE_GAIN) -> GainForecast:
        low_end, high_end = self.overlap_range
        at = min(max(overlap, low_end), high_end)
        point = np.array([1.0, at])
        means = self.coefficients @ point
        spreads = np.sqrt(np.einsum("i,tij,j->t", point, self.covariances, point) + TAU_GRID**2)

        def quantile(q: float) -> float:
            return brentq(lambda g: float(self.weights @ norm.cdf((g - means) / spreads)) - q, -1e4, 1e4)

        clamped = at if at != overlap else None
        return GainForecast(
            overlap, float(self.weights @ means), quantile(0.025), quantile(0.975), self.pairs, clamped, worthwhile
        )


def _weighted_line(design: np.ndarray, values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares: the coefficients and their covariance (weights = 1 / variance)."""
    normal = design.T @ (weights[:, None] * design)
    covariance = np.linalg.inv(normal)
    return covariance @ design.T @ (weights * values), covariance


def _restricted_log_likelihood(
    design: np.ndarray, values: np.ndarray, variances: np.ndarray, coefficients: np.ndarray, covariance: np.ndarray
) -> float:
    """log p(values | τ) with the line's coefficients integrated out under a flat prior (REML)."""
    residuals = values - design @ coefficients
    fit = np.sum(residuals**2 / variances)
    return float(0.5 * np.linalg.slogdet(covariance)[1] - 0.5 * np.sum(np.log(variances)) - 0.5 * fit)


def leave_one_out(pairs: list[MeasuredPair], worthwhile: float = WORTHWHILE_GAIN) -> list[GainForecast | None]:
    """Each pair's forecast from the others (None where they are too few to fit): how the verdict
    would have fared before the pair was measured."""
    forecasts: list[GainForecast | None] = []
    for i, pair in enumerate(pairs):
        others = pairs[:i] + pairs[i + 1 :]
        fits = len(others) >= MIN_PAIRS and len({p.overlap for p in others}) > 1
        forecasts.append(GainModel.fit(others).forecast(pair.overlap, worthwhile) if fits else None)
    return forecasts
