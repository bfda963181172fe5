"""Schedules as pure functions of budget progress ``p`` in [0, 1].

Because they only see progress, the same recipe works for a 1-hour, 24-hour, step or
token budget, and a resumed run picks up the exact same values.
"""

from __future__ import annotations

import math

from cramming.config.schema import TrainConfig


def lr_factor(progress: float, train: TrainConfig) -> float:
    """Multiplier of the peak learning rate at ``progress``."""
    p = min(max(progress, 0.0), 1.0)
    warmup, floor = train.warmup, train.min_lr_ratio
    if train.scheduler == "constant":
        return 1.0 if warmup == 0 or p >= warmup else p / warmup
    if warmup > 0 and p < warmup:
        return p / warmup
    if train.scheduler in ("triangle", "one-cycle"):
        # Hold the peak until the cooldown starts, then decay linearly to the floor at p = 1.
        decay_start = max(1.0 - train.cooldown, warmup)
        if p <= decay_start:
            return 1.0
        span = max(1.0 - decay_start, 1e-12)
        return floor + (1.0 - floor) * (1.0 - p) / span
    rest = (p - warmup) / max(1.0 - warmup, 1e-12)
    if train.scheduler == "linear":
        return floor + (1.0 - floor) * (1.0 - rest)
    if train.scheduler == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * rest))
    if train.scheduler == "inverse-sqrt":
        return 1.0 / math.sqrt(max(p / max(warmup, 1e-3), 1.0))
    raise ValueError(f"unknown scheduler {train.scheduler}")


def batch_size_at(progress: float, train: TrainConfig, microbatch_size: int) -> int:
    """Sequences per optimizer step: ramps linearly from one microbatch to ``batch_size``
    over the first ``batch_size_ramp`` of the budget, in whole microbatches (in whole
    groups of ``hybrid_denominator`` microbatches for the hybrid objective, so that every
    step mixes MNTP and CLM in the exact ratio)."""
    full = train.batch_size
    if train.batch_size_ramp <= 0 or progress >= train.batch_size_ramp:
        return full
    if train.objective == "hybrid" and full % (microbatch_size * train.hybrid_denominator) == 0:
        microbatch_size *= train.hybrid_denominator
    fraction = progress / train.batch_size_ramp
    size = microbatch_size + fraction * (full - microbatch_size)
    return max(microbatch_size, int(size // microbatch_size) * microbatch_size)


def mask_prob_at(progress: float, train: TrainConfig) -> float:
    """Masking rate: constant, or linear from ``mask_prob`` to ``mask_prob_end``."""
    if train.mask_prob_end is None:
        return train.mask_prob
    p = min(max(progress, 0.0), 1.0)
    return train.mask_prob + p * (train.mask_prob_end - train.mask_prob)
