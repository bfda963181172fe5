"""Instance outputs -> per-example predictions -> the task's official metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cramming.evaluation import metrics as M
from cramming.evaluation.encoding import Instance
from cramming.evaluation.tasks import Task


def example_predictions(task: Task, examples: Sequence[dict], instances: Sequence[Instance],
                        outputs: np.ndarray) -> list[Any]:
    """One prediction per example: class id, float (STS-B) or entity text (ReCoRD)."""
    if task.kind != "record":
        return [o.item() if hasattr(o, "item") else o for o in outputs]
    best: dict[int, tuple[float, str]] = {}
    for instance, score in zip(instances, outputs.tolist()):
        if instance.example not in best or score > best[instance.example][0]:
            best[instance.example] = (score, instance.candidate)
    return [best[i][1] if i in best else "" for i in range(len(examples))]


def _metric(task: Task, name: str, examples: Sequence[dict], predictions: Sequence[Any],
            labels: Sequence[Any]) -> float:
    if name == "accuracy":
        return M.accuracy(predictions, labels)
    if name == "f1":
        return M.f1_binary(predictions, labels)
    if name == "f1_macro":
        return M.f1_macro(predictions, labels, num_classes=len(task.labels))
    if name == "mcc":
        return M.matthews_corrcoef(predictions, labels)
    if name == "pearson":
        return M.pearson(predictions, labels)
    if name == "spearman":
        return M.spearman(predictions, labels)
    if name == "gender_parity":
        # The official AX-g file gives every row its own pair_id; the minimal pairs are rows
        # (2k, 2k+1), as the SuperGLUE baseline pairs them
        # (nyu-mll/jiant, src/metrics/winogender_metrics.py).
        return M.gender_parity(predictions, [e.get("row", i) // 2 for i, e in enumerate(examples)])
    raise KeyError(f"unknown metric {name}")


def compute_metrics(task: Task, examples: Sequence[dict], predictions: Sequence[Any],
                    suffix: str = "") -> dict[str, float]:
    """The task's metrics on one labelled split.

    With a ``suffix`` (MNLI's ``_m`` / ``_mm``) only the metrics named with it are computed.
    """
    wanted = [m for m in task.metrics if m.endswith(suffix)] if suffix else list(task.metrics)
    labels = [e["label"] for e in examples]
    grouped: dict[str, float] = {}
    if task.kind == "multirc":
        grouped = M.multirc_scores(predictions, labels, [e["group"] for e in examples])
    elif task.kind == "record":
        grouped = M.record_scores(list(predictions), [e["answers"] for e in examples])
    values = {}
    for name in wanted:
        base = name[: len(name) - len(suffix)] if suffix else name
        values[name] = grouped[base] if base in grouped else _metric(
            task, base, examples, predictions, labels)
    return values
