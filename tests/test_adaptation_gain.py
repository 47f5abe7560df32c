"""The forecast of continued pretraining's gain: the meta-regression on hand-made pairs, the
verdict's thresholds, no extrapolation, the shipped pairs judged before they were measured, and
one-line errors for a damaged pairs file."""

import numpy as np
import pytest
import yaml

from headstart.errors import HeadstartError
from headstart.transfer.adaptation_gain import (
    MEASURED,
    TAU_PRIOR_SCALE,
    GainModel,
    MeasuredPair,
    leave_one_out,
    read_pairs,
)
from tests.test_cli import assert_one_line_error, headstart


def pair(overlap, gain, standard_error=0.5, name="p"):
    return MeasuredPair(name, "DAPT", "task F1", 500, overlap, gain, standard_error, 5)


def test_gains_on_a_line_are_recovered_and_the_scatter_pulled_below_its_prior():
    pairs = [pair(x, 10.0 - 20.0 * x) for x in (0.3, 0.4, 0.5, 0.6)]
    model = GainModel.fit(pairs)
    assert model.coefficients[0] == pytest.approx([10.0, -20.0])  # any τ: points on a line weigh to the line
    forecast = model.forecast(0.45)
    assert forecast.gain == pytest.approx(1.0)
    # at least as wide as the coefficients' uncertainty alone (τ = 0): weighted least squares by hand
    design = np.array([[1.0, x] for x in (0.3, 0.4, 0.5, 0.6)])
    covariance = np.linalg.inv(design.T @ design / 0.25)
    spread = 1.959964 * np.sqrt(np.array([1.0, 0.45]) @ covariance @ np.array([1.0, 0.45]))
    assert forecast.low < 1.0 - spread and forecast.high > 1.0 + spread
    assert model.between_pairs < TAU_PRIOR_SCALE**2  # the prior's mean of τ²: gains on a line pull it down


def test_scatter_beyond_the_standard_errors_widens_the_interval():
    tight = [pair(x, 10.0 - 20.0 * x) for x in (0.3, 0.4, 0.5, 0.6)]
    scattered = [pair(p.overlap, p.gain + d) for p, d in zip(tight, (3, -3, 3, -3), strict=True)]
    model = GainModel.fit(scattered)
    assert model.between_pairs > 10 * GainModel.fit(tight).between_pairs
    width = lambda m: m.forecast(0.45).high - m.forecast(0.45).low  # noqa: E731
    assert width(model) > 3 * width(GainModel.fit(tight))


def test_verdicts_and_no_extrapolation():
    model = GainModel.fit([pair(x, 10.0 - 20.0 * x, 0.1) for x in np.linspace(0.3, 0.5, 9)])
    assert model.forecast(0.3).verdict == "continue"  # +4 ± small
    assert model.forecast(0.5).verdict == "not worth it"  # 0 ± small, under the 1 point worth a run
    assert model.forecast(0.45).verdict == "unclear"  # +1 ± small: the interval spans the 1-point bar
    assert model.forecast(0.45, worthwhile=0.5).verdict == "continue"  # +1 clears a half-point bar
    far = model.forecast(0.95)
    assert far.clamped_to == 0.5 and far.gain == pytest.approx(0.0, abs=1e-9)  # not −9: no line past the data
    assert model.forecast(0.0).gain == pytest.approx(4.0)


def test_too_few_pairs_or_one_overlap_cannot_be_fitted():
    with pytest.raises(HeadstartError, match="at least 3"):
        GainModel.fit([pair(0.3, 1.0), pair(0.4, 2.0)])
    with pytest.raises(HeadstartError, match="two or more overlaps"):
        GainModel.fit([pair(0.3, 1.0), pair(0.3, 2.0), pair(0.3, 3.0)])
    assert leave_one_out([pair(0.3, 1.0), pair(0.4, 2.0), pair(0.5, 3.0)]) == [None, None, None]


def test_shipped_pairs_each_judged_from_the_others_contradict_no_measurement():
    pairs = read_pairs(MEASURED)
    assert len(pairs) >= 5
    for measured, forecast in zip(pairs, leave_one_out(pairs), strict=True):
        assert forecast is not None
        low, high = measured.gain - 1.96 * measured.standard_error, measured.gain + 1.96 * measured.standard_error
        if forecast.verdict == "continue":
            assert low > 0, measured.name  # it said continue: the measured gain is clearly positive
        if forecast.verdict == "not worth it":
            assert high < forecast.worthwhile, measured.name
    by_name = {p.name: f for p, f in zip(pairs, leave_one_out(pairs), strict=True)}
    # the pair that measured a loss: τ at zero (the method of moments) forecast it "continue" from the others
    assert by_name["WikiText-2 → SST-2 sentences, continued"].verdict == "unclear"


def test_a_damaged_pairs_file_is_one_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("alpha beta gamma\n" * 20)
    good = yaml.safe_load(MEASURED.read_text())[0]
    cases = {
        "not-a-list.yaml": "a: 1\n",
        "missing-field.yaml": yaml.safe_dump([{k: v for k, v in good.items() if k != "gain"}]),
        "not-a-number.yaml": yaml.safe_dump([{**good, "gain": "big"}]),
        "bad-overlap.yaml": yaml.safe_dump([{**good, "overlap": 1.5}]),
        "broken.yaml": "- name: [unclosed\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert_one_line_error(headstart("mismatch", str(corpus), str(corpus), "--pairs", str(path)), str(path))
    assert_one_line_error(headstart("mismatch", str(corpus), str(corpus), "--worthwhile", "0"), "--worthwhile")


def test_your_own_pairs_join_the_measured_ones(tmp_path):
    from headstart import api

    corpus = tmp_path / "c.txt"
    corpus.write_text("alpha beta gamma delta\n" * 20)
    mine = tmp_path / "mine.yaml"
    own = {"name": "mine", "adaptation": "TAPT", "task": "F1", "budget": 500, "overlap": 0.9, "gain": 0.1,
           "standard_error": 0.2, "seeds": 5}  # fmt: skip
    mine.write_text(yaml.safe_dump([own]))
    result = api.mismatch(str(corpus), str(corpus), pairs=mine)
    assert len(result.pairs) == len(read_pairs(MEASURED)) + 1
    alone = api.mismatch(str(corpus), str(corpus)).forecast
    assert result.forecast is not None and alone is not None and result.forecast.pairs == alone.pairs + 1
    assert result.forecast.gain != alone.gain  # yours moved the line
