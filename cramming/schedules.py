"""Schedules as pure functions of budget progress ``p`` in [0, 1].

Because they only see progress, the same recipe works for a 1-hour, 24-hour, step or
token budget, and a resumed run picks up the exact same values.
"""

from __future__ import annotations

import math

from cramming.config.schema import TrainConfig


def _decay(progress: float, train: TrainConfig) -> float:
    """The piece after the peak: from 1 at ``warmup`` towards ``min_lr_ratio`` at ``p = 1``."""
    warmup, floor = train.warmup, train.min_lr_ratio
    if train.scheduler == "constant":
        return 1.0
    if train.scheduler == "inverse-sqrt":
        return max(floor, math.sqrt(max(warmup, 1e-3) / max(progress, warmup, 1e-3)))
    rest = (progress - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    if train.scheduler == "linear":
        return floor + (1.0 - floor) * (1.0 - rest)
    if train.scheduler == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * rest))
    raise ValueError(f"unknown scheduler {train.scheduler}")


def lr_factor(progress: float, train: TrainConfig) -> float:
    """Multiplier of the peak learning rate at budget progress ``progress`` in [0, 1].

    Three pieces: linear from ``lr_start`` to 1 over ``[0, warmup)`` (the peak sits at
    ``warmup``); the ``scheduler`` shape from 1 towards ``min_lr_ratio`` over ``[warmup, 1]``;
    over the last ``cooldown`` of the budget, linear from the value that shape reaches at
    100% down to ``lr_end``. The originals are special cases (tested against their curves):
    Cramming's budget-triangle2 is ``lr_start=0.25 warmup=0.75``, NTNG's
    budget-one-cycle ``warmup=0.5``, GPT-BERT's cosine ``warmup=cooldown=0.016
    min_lr_ratio=0.1`` (its cosine runs to 100% and its cooldown starts at the floor).
    """
    p = min(max(progress, 0.0), 1.0)
    if p < train.warmup:
        return train.lr_start + (1.0 - train.lr_start) * p / train.warmup
    if train.cooldown > 0 and p >= 1.0 - train.cooldown:
        top = _decay(1.0, train)
        return train.lr_end + (top - train.lr_end) * (1.0 - p) / train.cooldown
    return _decay(p, train)


def batch_size_at(progress: float, train: TrainConfig, microbatch_size: int) -> int:
    """Sequences per optimizer step: ``max(batch_size_start x batch_size, one microbatch)``
    plus ``(1 - batch_size_start) x batch_size`` times the ramp's progress (complete after
    ``batch_size_ramp`` of the budget), at most ``batch_size``, in whole microbatches (in whole
    groups of ``hybrid_denominator`` microbatches for the hybrid objective, so that every
    step mixes MNTP and CLM in the exact ratio)."""
    full = train.batch_size
    if train.batch_size_ramp <= 0 or progress >= train.batch_size_ramp:
        return full
    if train.objective == "hybrid" and full % (microbatch_size * train.hybrid_denominator) == 0:
        microbatch_size *= train.hybrid_denominator
    # One microbatch plus the ramped share, as Cramming's engine does (JonasGeiping/cramming,
    # cramming/backend/torch_default.py _update_batch_size); with batch_size_start GPT-BERT's
    # linear ramp from batch/4 (ltgoslo/gpt-bert, pretraining/train_multi_gpu.py).
    fraction = max(progress, 0.0) / train.batch_size_ramp
    start = max(float(microbatch_size), train.batch_size_start * full)
    size = min(start + fraction * (1.0 - train.batch_size_start) * full, full)
    return max(microbatch_size, int(size // microbatch_size) * microbatch_size)


def mask_prob_at(progress: float, train: TrainConfig) -> float:
    """Masking rate: constant, or linear from ``mask_prob`` to ``mask_prob_end``."""
    if train.mask_prob_end is None:
        return train.mask_prob
    p = min(max(progress, 0.0), 1.0)
    return train.mask_prob + p * (train.mask_prob_end - train.mask_prob)
