"""Learning-rate multipliers: linear warmup, then cosine, warmup-stable-decay, or constant."""

from __future__ import annotations

import math

from headstart.config import ScheduleConfig


def lr_multiplier(step: int, total: int, config: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.kind == "constant":
        return 1.0
    if config.kind == "cosine":
        span = max(1, total - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: hold the peak, then decay linearly to the floor over the last decay_fraction of the run
    decay_steps = max(1, round(total * config.decay_fraction))
    decay_start = total - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return 1.0 - (1 - floor) * progress
