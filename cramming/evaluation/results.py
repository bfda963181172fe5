"""Aggregate per-seed scores into the results JSON, the Markdown table and suite averages.

All reported numbers are percent (metric x 100; correlations too, as Cramming reports
MCC and Pearson). Headline = last epoch; best epoch is reported beside it.

Suite average as in Cramming: one entry per task, except MNLI which contributes its
matched and mismatched accuracy as two entries; MRPC / QQP enter with F1, STS-B with
Pearson, CoLA with MCC. SuperGLUE tasks with two metrics (CB, MultiRC, ReCoRD) enter with
their mean, as the SuperGLUE leaderboard does. Diagnostic sets are not averaged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cramming.evaluation.tasks import TASKS, Task

SUITE_NAMES = {"glue": "GLUE", "superglue": "SuperGLUE"}


@dataclass(frozen=True)
class AverageScheme:
    """Which tasks a suite average holds and, where it differs from the task's own, how each
    task enters it."""

    excluded: tuple[str, ...]
    entries: dict = field(default_factory=dict)  # task -> ((metric, ...), ...)
    note: str = ""


AVERAGE_SCHEMES = {
    # Cramming's GLUE average leaves WNLI out
    # (JonasGeiping/cramming, cramming/config/eval/GLUE_sane.yaml).
    "standard": AverageScheme(excluded=("wnli",)),
    # NTNG: SuperGLUE without ReCoRD, CB by F1 and MultiRC by F1a
    # (JeanKaddour/NoTrainNoGain, bert/cramming/config/eval/SuperGLUE.yaml metrics_to_average).
    "ntng": AverageScheme(excluded=("wnli", "record"),
                          entries={"cb": (("f1_macro",),), "multirc": (("f1a",),)},
                          note="NTNG: no ReCoRD, CB F1, MultiRC F1a"),
}


def summarize(values: Sequence[float]) -> dict:
    """mean / std (sample, ddof=1; 0 for one seed) / median / values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "median": None, "values": []}
    return {"mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "median": float(np.median(array)), "values": [float(v) for v in array]}


def to_percent(metrics: dict) -> dict:
    return {k: 100.0 * v for k, v in metrics.items()}


def average_entries(task: Task, metrics: dict, scheme: str = "standard") -> list[float]:
    """This task's entries of the suite average (each entry the mean of its metrics)."""
    groups = AVERAGE_SCHEMES[scheme].entries.get(task.name, task.average)
    return [float(np.mean([metrics[m] for m in group])) for group in groups]


def task_score(task: Task, metrics: dict) -> float:
    """One number per task (mean of its average entries, or of all its metrics)."""
    entries = average_entries(task, metrics) or [metrics[m] for m in task.metrics if m in metrics]
    return float(np.mean(entries)) if entries else float("nan")


def best_epoch(task: Task, history: list[dict]) -> dict:
    """The epoch record with the highest task score (first one on ties)."""
    return max(history, key=lambda record: task_score(task, record))


def summarize_task(task: Task, per_seed: dict[int, dict]) -> dict:
    """Mean / std / median over seeds of each metric, for last and best epoch."""
    out = {}
    for which in ("last", "best"):
        out[which] = {metric: summarize([per_seed[s][which][metric] for s in per_seed])
                      for metric in task.metrics if all(metric in per_seed[s][which]
                                                        for s in per_seed)}
        out[which]["score"] = summarize([task_score(task, per_seed[s][which]) for s in per_seed])
    return out


def suite_averages(tasks: Iterable[Task], task_results: dict, seeds: Sequence[int],
                   scheme: str = "standard") -> dict:
    """Per suite: the average per seed, then mean / std / median across seeds."""
    averages = {}
    rule = AVERAGE_SCHEMES[scheme]
    for suite, label in SUITE_NAMES.items():
        members = [t for t in tasks if t.suite == suite and t.average
                   and t.name not in rule.excluded]
        if not members:
            continue
        done = [t for t in members if task_results.get(t.name, {}).get("status") == "ok"]
        # "Missing" is against the whole published suite, not just the requested tasks.
        full = [name for name, t in TASKS.items() if t.suite == suite and t.average
                and name not in rule.excluded]
        entry = {"tasks": [t.name for t in done],
                 "missing": [n for n in full if n not in {d.name for d in done}],
                 "subsampled": [t.name for t in done if any(
                     split != "train" for split in task_results[t.name].get("subsampled", {}))]}
        entry["scheme"] = scheme
        entry["label"] = average_label(label, entry, rule.note)
        for which in ("last", "best"):
            per_seed = []
            for seed in seeds:
                entries = [e for t in done for e in average_entries(
                    t, task_results[t.name]["seeds"][str(seed)][which], scheme)]
                if entries:
                    per_seed.append(float(np.mean(entries)))
            entry[which] = summarize(per_seed)
        averages[label] = entry
    return averages


def average_label(suite: str, entry: dict, note: str = "") -> str:
    """``GLUE average``, or what it is not: ``GLUE partial average (mnli; missing ...)``."""
    notes = [note] if note else []
    if entry["missing"]:
        notes.append(f"{', '.join(entry['tasks']) or 'no task'} only; missing "
                     f"{', '.join(entry['missing'])}")
    if entry.get("subsampled"):
        notes.append(f"subsampled dev: {', '.join(entry['subsampled'])}")
    kind = "partial average" if entry["missing"] else "average"
    return f"{suite} {kind}" + (f" ({'; '.join(notes)})" if notes else "")


def _subsample_note(task: dict) -> str:
    cut = task.get("subsampled") or {}
    return "".join(f" ({split} subsampled: {c['used']} of {c['of']})" for split, c in cut.items())


def _fmt(summary: dict | None) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    if len(summary["values"]) > 1:
        return f"{summary['mean']:.2f} ± {summary['std']:.2f} (med {summary['median']:.2f})"
    return f"{summary['mean']:.2f}"


def markdown_table(results: dict) -> str:
    """Per task and metric: last-epoch (headline) and best-epoch scores; then averages."""
    seeds = results["seeds"]
    lines = [f"## Fine-tuning results: {results['name']} ({results['preset']}, "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {seeds})", "",
             "| task | metric | last epoch (headline) | best epoch |", "|---|---|---|---|"]
    for name, task in results["tasks"].items():
        if task["status"] != "ok":
            lines.append(f"| {name} | {task['status']} | {task['reason']} | |")
            continue
        for metric, last in task["last"].items():
            if metric == "score":
                continue
            lines.append(f"| {name}{_subsample_note(task)} | {metric} | {_fmt(last)} | "
                         f"{_fmt(task['best'][metric])} |")
    for suite, average in results["averages"].items():
        label = average.get("label") or f"{suite} average"
        lines.append(f"| **{label}** | {len(average['tasks'])} tasks | "
                     f"**{_fmt(average['last'])}** | {_fmt(average['best'])} |")
    lines.append("")
    lines.append("Scores in percent. Headline: last epoch. ± is the std over fine-tuning seeds.")
    return "\n".join(lines) + "\n"


def write_results(results: dict, folder: Path) -> tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(markdown_table(results))
    return json_path, md_path
