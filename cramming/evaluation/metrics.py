"""Official GLUE / SuperGLUE metrics, as fractions in [0, 1] (correlations in [-1, 1]).

Written out in NumPy so the definitions are visible: tests compare them with
scikit-learn / SciPy and with hand-computed values.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

import numpy as np


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Fraction of exact matches."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(predictions == labels))


def f1_binary(predictions: Sequence, labels: Sequence, positive: int = 1) -> float:
    """F1 of the positive class (MRPC, QQP, MultiRC F1a). 0 when there are no true positives."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    tp = float(np.sum((predictions == positive) & (labels == positive)))
    fp = float(np.sum((predictions == positive) & (labels != positive)))
    fn = float(np.sum((predictions != positive) & (labels == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(predictions: Sequence, labels: Sequence, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 (CB). Classes: ``range(num_classes)`` or those seen."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = range(num_classes) if num_classes else sorted(set(labels) | set(predictions))
    return float(np.mean([f1_binary(predictions, labels, positive=c) for c in classes]))


def matthews_corrcoef(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation (CoLA, AX-b); multi-class it is Gorodkin's R_K (GLUE AX's R3).

    Computed from the confusion matrix; 0 when a marginal is constant (undefined case).
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = sorted(set(labels.tolist()) | set(predictions.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for truth, guess in zip(labels.tolist(), predictions.tolist()):
        confusion[index[truth], index[guess]] += 1
    n = confusion.sum()
    correct = np.trace(confusion)
    true_totals, pred_totals = confusion.sum(axis=1), confusion.sum(axis=0)
    numerator = correct * n - float(true_totals @ pred_totals)
    denominator = np.sqrt(n**2 - float(pred_totals @ pred_totals)) * np.sqrt(
        n**2 - float(true_totals @ true_totals))
    return 0.0 if denominator == 0 else float(numerator / denominator)


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation (STS-B); 0 when either side is constant."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return 0.0 if denominator == 0 else float((x * y).sum() / denominator)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation (STS-B): Pearson of tie-averaged ranks."""
    x = _average_ranks(np.asarray(predictions, dtype=np.float64))
    y = _average_ranks(np.asarray(labels, dtype=np.float64))
    return pearson(x, y)


def multirc_scores(predictions: Sequence[int], labels: Sequence[int],
                   questions: Sequence[Hashable]) -> dict[str, float]:
    """MultiRC: ``em`` = fraction of questions with every answer option right;
    ``f1a`` = binary F1 over all answer options."""
    by_question: dict[Hashable, bool] = defaultdict(lambda: True)
    for guess, truth, question in zip(predictions, labels, questions):
        by_question[question] &= int(guess) == int(truth)
    em = float(np.mean(list(by_question.values()))) if by_question else float("nan")
    return {"em": em, "f1a": f1_binary(predictions, labels)}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, articles and extra whitespace."""
    text = text.lower()
    text = "".join(char for char in text if char not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-overlap F1 between two normalised strings."""
    guess, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(guess) & Counter(truth)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(guess), overlap / len(truth)
    return 2 * precision * recall / (precision + recall)


def record_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """ReCoRD: max over gold answers of exact match / token F1, averaged over queries."""
    if not predictions:
        return {"em": float("nan"), "f1": float("nan")}
    em = [max(float(normalize_answer(p) == normalize_answer(g)) for g in gold) if gold else 0.0
          for p, gold in zip(predictions, answers)]
    f1 = [max(token_f1(p, g) for g in gold) if gold else 0.0
          for p, gold in zip(predictions, answers)]
    return {"em": float(np.mean(em)), "f1": float(np.mean(f1))}


def gender_parity(predictions: Sequence, pairs: Sequence[Hashable]) -> float:
    """AX-g: fraction of minimal pairs (same ``pairs`` id) whose predictions all agree.

    Groups with a single member (a pair cut by subsampling) are left out: they cannot disagree.
    """
    groups: dict[Hashable, list] = defaultdict(list)
    for guess, pair in zip(predictions, pairs):
        groups[pair].append(guess if not isinstance(guess, np.generic) else guess.item())
    complete = [len(set(values)) == 1 for values in groups.values() if len(values) > 1]
    if not complete:
        return float("nan")
    return float(np.mean(complete))
