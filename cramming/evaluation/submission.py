"""Test-set predictions in the GLUE / SuperGLUE leaderboard submission formats.

GLUE: ``<Task>.tsv`` with header ``index\\tprediction`` (labels as in the task files,
STS-B a score in [0, 5]); SuperGLUE: ``<Task>.jsonl`` with ``{"idx": ..., "label": ...}``
per line (MultiRC nested by passage and question). Zip a suite's folder to submit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cramming.evaluation.tasks import Task


def _label_text(task: Task, prediction: Any) -> Any:
    if task.kind == "regression":
        return round(min(max(float(prediction), 0.0), 5.0), 3)
    if task.kind == "record":
        return prediction
    label = task.labels[int(prediction)]
    if isinstance(label, bool):
        return "true" if label else "false"
    return label


def _multirc_records(examples: Sequence[dict], predictions: Sequence[Any]) -> list[dict]:
    passages: dict[Any, dict] = {}
    for example, prediction in zip(examples, predictions):
        passage_idx, question_idx, answer_idx = example["idx"]
        passage = passages.setdefault(passage_idx, {"idx": passage_idx, "questions": {}})
        question = passage["questions"].setdefault(question_idx,
                                                   {"idx": question_idx, "answers": []})
        question["answers"].append({"idx": answer_idx, "label": int(prediction)})
    return [{"idx": p["idx"], "passage": {"questions": list(p["questions"].values())}}
            for p in passages.values()]


def write_predictions(task: Task, suffix: str, examples: Sequence[dict],
                      predictions: Sequence[Any], folder: Path) -> Path:
    """Write one test split's predictions; returns the file written."""
    folder = Path(folder) / task.suite
    folder.mkdir(parents=True, exist_ok=True)
    if task.suite == "glue":
        path = folder / f"{task.submission}{suffix}.tsv"
        lines = ["index\tprediction"] + [f"{e['idx']}\t{_label_text(task, p)}"
                                         for e, p in zip(examples, predictions)]
        path.write_text("\n".join(lines) + "\n")
        return path
    path = folder / f"{task.submission}{suffix}.jsonl"
    if task.kind == "multirc":
        records = _multirc_records(examples, predictions)
    else:
        records = [{"idx": e["idx"], "label": _label_text(task, p)}
                   for e, p in zip(examples, predictions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
