"""The derived figures of a transfer study: label efficiency and steps to a target.

Label efficiency at budget n: how many labels scratch needs to match what the pretrained
init reaches with n, read off scratch's curve (mean metric against labels, linear in
log-labels between measured budgets), as a multiplier of n. When scratch never gets there
within the budgets measured, the multiplier is a lower bound ("≥"); when scratch already
does better at its smallest budget, an upper bound ("≤").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Efficiency:
    labels_needed: float  # by scratch, to match; the largest budget measured when it is a bound
    multiplier: float  # labels_needed / budget
    lower_bound: bool  # scratch never reached the value: the true multiplier is at least this
    upper_bound: bool = False  # scratch beats the value at its smallest budget: at most this

    def __str__(self) -> str:
        return f"{'≥ ' if self.lower_bound else '≤ ' if self.upper_bound else ''}{self.multiplier:.1f}×"


def labels_to_match(budgets: Sequence[float], scratch: Sequence[float], target: float) -> tuple[float, bool]:
    """Labels at which scratch's curve first reaches ``target``; (largest budget, True) if never."""
    points = sorted(zip(budgets, scratch, strict=True))
    if target <= points[0][1]:
        return points[0][0], False
    for (n0, v0), (n1, v1) in itertools.pairwise(points):
        if v0 < target <= v1:
            fraction = (target - v0) / (v1 - v0)
            return math.exp(math.log(n0) + fraction * (math.log(n1) - math.log(n0))), False
    return points[-1][0], True


def label_efficiency(budget: float, value: float, budgets: Sequence[float], scratch: Sequence[float]) -> Efficiency:
    """The multiplier of labels scratch needs to match ``value`` reached with ``budget`` labels."""
    needed, bound = labels_to_match(budgets, scratch, value)
    below = value < min(zip(budgets, scratch, strict=True))[1]  # under scratch's smallest-budget mean
    return Efficiency(needed, needed / budget, bound, upper_bound=below)


def steps_to_target(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """The first evaluated step whose metric reaches ``target`` (None if none does)."""
    return next((s for s, v in zip(steps, values, strict=True) if v >= target), None)
