"""Deterministic, seekable batches of token windows from a flat token array.

Training windows of seq_len + 1 tokens tile the array without overlap; each epoch takes them
in a fresh seeded permutation with a fresh seeded offset, so every token is seen once per
epoch. Sample i is a pure function of (seed, i): resuming at any step just computes where to
start — no batches are replayed, and seeking is O(windows) once per epoch.
"""

from __future__ import annotations

import numpy as np

from headstart.errors import HeadstartError


class WindowSampler:
    def __init__(self, tokens: np.ndarray, window: int, seed: int, name: str = "train split") -> None:
        if len(tokens) < 2 * window:
            raise HeadstartError(
                f"{name}: {len(tokens)} tokens, expected at least {2 * window} for windows of {window}"
            )
        self.tokens = tokens
        self.window = window
        self.seed = seed
        self.stride = window - 1  # consecutive windows share one token: the last target is the next input
        self.per_epoch = (len(tokens) - window) // self.stride
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)
        self._offset = 0

    def _start(self, index: int) -> int:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(self.stride))
            self._order = rng.permutation(self.per_epoch)
            self._epoch = epoch
        return self._offset + int(self._order[position]) * self.stride

    def batch(self, first: int, count: int) -> np.ndarray:
        """Samples first .. first+count-1 as an int64 array (count, window)."""
        out = np.empty((count, self.window), dtype=np.int64)
        for row in range(count):
            start = self._start(first + row)
            out[row] = self.tokens[start : start + self.window]
        return out


def eval_windows(tokens: np.ndarray, window: int, count: int) -> np.ndarray:
    """``count`` windows spread evenly over the array (all of it when count covers it): a fixed
    evaluation set, so successive evaluations are comparable."""
    if len(tokens) < window:  # a short text is scored whole
        if len(tokens) < 2:
            raise HeadstartError(f"validation split: {len(tokens)} tokens, expected at least 2")
        return np.asarray(tokens, dtype=np.int64)[None]
    stride = window - 1
    available = (len(tokens) - window) // stride + 1
    if count <= 0 or count >= available:
        starts = np.arange(available) * stride
    else:
        starts = np.linspace(0, (available - 1) * stride, count).astype(np.int64)
    return np.stack([np.asarray(tokens[s : s + window], dtype=np.int64) for s in starts])
