import math

import pytest

from headstart.transfer.efficiency import label_efficiency, labels_to_match, steps_to_target

BUDGETS = [100, 1000, 10000]
SCRATCH = [0.60, 0.70, 0.80]


def test_interpolates_linearly_in_log_labels():
    # 0.75 is halfway between 0.70 (1,000) and 0.80 (10,000): 10^3.5 labels
    needed, bound = labels_to_match(BUDGETS, SCRATCH, 0.75)
    assert needed == pytest.approx(10**3.5) and not bound
    efficiency = label_efficiency(100, 0.75, BUDGETS, SCRATCH)
    assert efficiency.multiplier == pytest.approx(10**3.5 / 100)
    assert str(efficiency) == f"{10**3.5 / 100:.1f}×"


def test_exact_points_and_values_below_the_curve():
    assert labels_to_match(BUDGETS, SCRATCH, 0.70) == (pytest.approx(1000), False)
    assert labels_to_match(BUDGETS, SCRATCH, 0.50) == (100, False)  # scratch already better: at most 1×
    assert label_efficiency(1000, 0.70, BUDGETS, SCRATCH).multiplier == pytest.approx(1.0)
    assert str(label_efficiency(100, 0.50, BUDGETS, SCRATCH)) == "≤ 1.0×"


def test_never_reached_is_a_lower_bound():
    efficiency = label_efficiency(100, 0.85, BUDGETS, SCRATCH)
    assert efficiency.lower_bound and efficiency.multiplier == pytest.approx(100.0)
    assert str(efficiency) == "≥ 100.0×"


def test_unsorted_input_and_steps_to_target():
    needed, _ = labels_to_match([10000, 100, 1000], [0.80, 0.60, 0.70], 0.65)
    assert needed == pytest.approx(math.sqrt(100 * 1000))
    assert steps_to_target([50, 100, 150], [0.5, 0.71, 0.9], 0.7) == 100
    assert steps_to_target([50, 100], [0.5, 0.6], 0.7) is None
