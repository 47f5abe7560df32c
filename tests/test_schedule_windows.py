import itertools
import time

import numpy as np
import pytest

from headstart.config import ScheduleConfig
from headstart.data.windows import WindowSampler, eval_windows
from headstart.errors import HeadstartError
from headstart.train.schedule import lr_multiplier


def test_cosine_warms_up_then_decays_to_floor():
    config = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    values = [lr_multiplier(s, 100, config) for s in range(100)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values[9:]))
    assert values[-1] == pytest.approx(0.1, abs=0.01)


def test_wsd_holds_then_decays_linearly():
    config = ScheduleConfig(kind="wsd", warmup_steps=5, decay_fraction=0.2, min_lr_ratio=0.0)
    values = [lr_multiplier(s, 100, config) for s in range(100)]
    assert values[5:80] == [1.0] * 75
    assert values[-1] == pytest.approx(0.0)
    assert values[90] == pytest.approx(0.45)


def test_sampler_covers_each_window_once_per_epoch_and_seeks_without_replay():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = WindowSampler(tokens, window=11, seed=3)
    epoch = sampler.batch(0, sampler.per_epoch)
    starts = sorted(epoch[:, 0].tolist())
    assert len(set(starts)) == sampler.per_epoch
    assert all(np.array_equal(row, np.arange(row[0], row[0] + 11)) for row in epoch)
    fresh = WindowSampler(tokens, window=11, seed=3)
    assert np.array_equal(fresh.batch(37, 5), epoch[37:42])  # any index, computed directly
    other_epoch = sampler.batch(sampler.per_epoch, sampler.per_epoch)
    assert not np.array_equal(other_epoch, epoch)


def test_eval_windows_fixed_and_too_short_fails():
    tokens = np.arange(100)
    windows = eval_windows(tokens, 11, 0)
    assert windows.shape == (9, 11)
    assert np.array_equal(eval_windows(tokens, 11, 3), eval_windows(tokens, 11, 3))
    assert eval_windows(np.arange(5), 11, 0).shape == (1, 5)
    with pytest.raises(HeadstartError, match="expected at least"):
        WindowSampler(np.arange(15), 10, 0)


def test_seeking_deep_into_a_large_corpus_is_immediate():
    tokens = np.zeros(200_000_000, dtype=np.uint16)  # 400 MB, zero pages: never touched but the windows read
    sampler = WindowSampler(tokens, window=257, seed=0)
    start = time.perf_counter()
    batch = sampler.batch(10**9, 8)  # sample one billion: epoch ~1,280, no replay of earlier batches
    assert batch.shape == (8, 257)
    assert time.perf_counter() - start < 1.0
