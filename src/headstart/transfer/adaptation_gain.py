"""The gain continued (domain-adaptive) pretraining predicts for a new target, from the gains
measured where it was tried (``adaptations.yaml`` and a user's own pairs).

The model is a random-effects meta-regression: each measured pair's gain against its top-10k
vocabulary overlap (the measure Gururangan et al. 2020 found to track DAPT's gain), a straight
line weighted by each pair's standard error, with the scatter between pairs beyond those errors
(τ², method of moments) added to the prediction's variance. Outside the measured overlaps it
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

from headstart.errors import HeadstartError

MEASURED = Path(__file__).with_name("adaptations.yaml")
WORTHWHILE_GAIN = 1.0  # points of the task's metric: less is not worth a continued pretraining run
Z95 = 1.959964
MIN_PAIRS = 3  # a line and the scatter about it need at least three gains

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
    """gain ≈ intercept + slope · overlap, fitted on measured pairs (see the module docstring)."""

    coefficients: np.ndarray  # (intercept, slope)
    covariance: np.ndarray  # of the coefficients, 2 × 2
    between_pairs: float  # τ²: variance of the true gains around the line
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
        coefficients, covariance = _weighted_line(design, gains, 1.0 / variances)
        residuals = gains - design @ coefficients
        q = float(np.sum(residuals**2 / variances))
        weights = np.diag(1.0 / variances)
        hat = weights - weights @ design @ covariance @ design.T @ weights
        between = max(0.0, (q - (len(pairs) - 2)) / float(np.trace(hat)))
        coefficients, covariance = _weighted_line(design, gains, 1.0 / (variances + between))
        span = (float(overlaps.min()), float(overlaps.max()))
        return cls(coefficients, covariance, between, span, len(pairs))

    def forecast(self, overlap: float, worthwhile: float = WORTHWHILE_GAIN) -> GainForecast:
        low_end, high_end = self.overlap_range
        at = min(max(overlap, low_end), high_end)
        point = np.array([1.0, at])
        gain = float(point @ self.coefficients)
        spread = Z95 * math.sqrt(float(point @ self.covariance @ point) + self.between_pairs)
        clamped = at if at != overlap else None
        return GainForecast(overlap, gain, gain - spread, gain + spread, self.pairs, clamped, worthwhile)


def _weighted_line(design: np.ndarray, values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares: the coefficients and their covariance (weights = 1 / variance)."""
    normal = design.T @ (weights[:, None] * design)
    covariance = np.linalg.inv(normal)
    return covariance @ design.T @ (weights * values), covariance


def leave_one_out(pairs: list[MeasuredPair], worthwhile: float = WORTHWHILE_GAIN) -> list[GainForecast | None]:
    """Each pair's forecast from the others (None where they are too few to fit): how the verdict
    would have fared before the pair was measured."""
    forecasts: list[GainForecast | None] = []
    for i, pair in enumerate(pairs):
        others = pairs[:i] + pairs[i + 1 :]
        fits = len(others) >= MIN_PAIRS and len({p.overlap for p in others}) > 1
        forecasts.append(GainModel.fit(others).forecast(pair.overlap, worthwhile) if fits else None)
    return forecasts
