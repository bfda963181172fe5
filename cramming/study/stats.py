"""Differences to the baseline with confidence intervals, and a plain verdict.

The experimental unit is the pretraining seed: a cell's score is first averaged over its
fine-tuning seeds. Cells of the two methods that share a pretraining seed are paired
(paired t-interval on the per-seed differences, df = n - 1); without n >= 2 shared seeds the
interval is Welch's (unequal variances, Welch-Satterthwaite df).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

PAIRED = "paired t-interval over pretraining seeds"
WELCH = "Welch t-interval over pretraining seeds"


@dataclass
class Difference:
    """``method - baseline``: its mean and confidence interval (None when undefined)."""

    mean: float
    low: float | None
    high: float | None
    n_method: int
    n_baseline: int
    n_pairs: int
    test: str | None
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def difference(method: dict[int, float], baseline: dict[int, float],
               confidence: float = 0.95) -> Difference | None:
    """Interval of ``mean(method) - mean(baseline)``; each dict maps pretraining seed -> score.

    None when either side has no score.
    """
    if not method or not baseline:
        return None
    shared = sorted(set(method) & set(baseline))
    a = np.array([method[s] for s in sorted(method)], dtype=float)
    b = np.array([baseline[s] for s in sorted(baseline)], dtype=float)
    quantile = 0.5 + confidence / 2
    if len(shared) >= 2:
        d = np.array([method[s] - baseline[s] for s in shared], dtype=float)
        mean, half = float(d.mean()), float(
            stats.t.ppf(quantile, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        return Difference(mean, mean - half, mean + half, len(a), len(b), len(shared),
                          PAIRED, confidence)
    mean = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, None, None, len(a), len(b), len(shared), None, confidence)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(mean, mean, mean, len(a), len(b), len(shared), WELCH, confidence)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(quantile, df) * se)
    return Difference(mean, mean - half, mean + half, len(a), len(b), len(shared), WELCH,
                      confidence)


def verdict(diff: Difference | None, higher_is_better: bool = True) -> str:
    """"better", "worse", "no significant difference", or why there is no verdict."""
    if diff is None:
        return "no scores"
    if diff.low is None or diff.high is None:
        return "too few seeds for an interval"
    if diff.low > 0 or diff.high < 0:
        return "better" if (diff.low > 0) == higher_is_better else "worse"
    return "no significant difference"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for no values; std None for one)."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)
