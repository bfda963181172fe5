"""The study report: per method and budget, downstream scores, held-out loss, tokens, budget
and wall clock, the difference to the baseline with a confidence interval and a verdict;
loss curves against the budget clock and against wall clock, and scores against budget.

    python -m cramming.study.report outputs/<study>        # rewrites report.{md,json} + PNGs

Reads only what the runs wrote (``study.json``, each cell's ``summary.json``,
``metrics.jsonl`` and fine-tuning ``results.json``); cells not finished yet show as missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cramming.backend.metrics import read_jsonl
from cramming.report import read_json
from cramming.study.stats import difference, mean_std, verdict

MANIFEST = "study.json"
UNITS = {"hours": "hours", "steps": "steps", "tokens": "tokens", "rst": "RST hours"}


@dataclass
class CellResult:
    """What one pretraining cell produced."""

    key: str
    method: str
    budget: float
    seed: int
    run_folder: Path | None = None
    summary: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # validation records during pretraining
    scores: dict[int, float] = field(default_factory=dict)  # fine-tuning seed -> average
    tasks: dict[str, dict[int, float]] = field(default_factory=dict)  # task -> seed -> score

    @property
    def score(self) -> float | None:
        """The cell's score: its average over fine-tuning seeds."""
        return mean_std(list(self.scores.values()))[0]


def finetune_scores(results: dict) -> tuple[float | None, dict[str, float]]:
    """(average, per-task score) of one fine-tuning results.json (last epoch, one seed).

    The average is over the tasks its suites average (diagnostics and excluded tasks out).
    """
    averaged = {t for entry in results.get("averages", {}).values()
                for t in entry.get("tasks", [])}
    tasks = {}
    for name, entry in results.get("tasks", {}).items():
        score = ((entry.get("last") or {}).get("score") or {}).get("mean")
        if entry.get("status") == "ok" and name in averaged and score is not None:
            tasks[name] = float(score)
    return (sum(tasks.values()) / len(tasks) if tasks else None), tasks


def collect(folder: Path) -> tuple[dict, list[CellResult]]:
    """The manifest and every cell's results."""
    manifest = read_json(folder / MANIFEST)
    if not manifest:
        raise FileNotFoundError(f"{folder / MANIFEST} is missing or unreadable: not a study "
                                f"folder (run python -m cramming.study name=... first).")
    base = Path(manifest["base_dir"])
    tag, seeds = manifest["finetune"]["tag"], manifest["finetune"]["seeds"]
    cells = []
    for entry in manifest["cells"]:
        cell = CellResult(entry["key"], entry["method"], float(entry["budget"]), entry["seed"])
        runs = sorted((base / entry["run_name"] / "pretrain").glob("*/summary.json"))
        if runs:
            cell.run_folder = runs[-1].parent
            cell.summary = read_json(runs[-1])
            cell.curve = [r for r in read_jsonl(cell.run_folder / "metrics.jsonl")
                          if isinstance(r, dict) and "val_loss" in r]
        for seed in seeds:
            results = read_json(base / entry["run_name"] / "eval" / f"{tag}-seed{seed}"
                                 / "results.json")
            average, tasks = finetune_scores(results)
            if average is not None:
                cell.scores[seed] = average
                for task, score in tasks.items():
                    cell.tasks.setdefault(task, {})[seed] = score
        cells.append(cell)
    return manifest, cells


def _fmt(mean: float | None, std: float | None = None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _pooled(cells: list[CellResult], pick) -> tuple[float | None, float | None, int]:
    values = [v for c in cells for v in pick(c)]
    mean, std = mean_std(values)
    return mean, std, len(values)


def summarize(manifest: dict, cells: list[CellResult]) -> list[dict]:
    """One row per (method, budget): means, stds, difference to the baseline, verdict."""
    confidence = manifest.get("confidence", 0.95)
    rows = []
    for budget in manifest["budgets"]:
        base_cells = [c for c in cells if c.method == manifest["baseline"]
                      and c.budget == float(budget)]
        base_scores = {c.seed: c.score for c in base_cells if c.score is not None}
        base_losses = {c.seed: c.summary["val_loss"] for c in base_cells
                       if isinstance(c.summary.get("val_loss"), (int, float))}
        for method in manifest["methods"]:
            group = [c for c in cells if c.method == method and c.budget == float(budget)]
            scores = {c.seed: c.score for c in group if c.score is not None}
            losses = {c.seed: c.summary["val_loss"] for c in group
                      if isinstance(c.summary.get("val_loss"), (int, float))}
            mean, std, n = _pooled(group, lambda c: list(c.scores.values()))
            tasks = sorted({t for c in group for t in c.tasks})
            row = {
                "method": method, "budget": float(budget),
                "cells": len(group), "pretrained": sum(bool(c.summary) for c in group),
                "score": {"mean": mean, "std": std, "n": n},
                "tasks": {t: dict(zip(("mean", "std", "n"), _pooled(
                    group, lambda c, t=t: list(c.tasks.get(t, {}).values())))) for t in tasks},
                "val_loss": dict(zip(("mean", "std"), mean_std(list(losses.values())))),
            }
            for key in ("tokens", "budget_spent", "train_seconds"):
                values = [c.summary[key] for c in group
                          if isinstance(c.summary.get(key), (int, float))]
                row[key] = mean_std(values)[0]
            if method != manifest["baseline"]:
                score_diff = difference(scores, base_scores, confidence)
                loss_diff = difference(losses, base_losses, confidence)
                row["vs_baseline"] = {
                    "score": score_diff.as_dict() if score_diff else None,
                    "verdict": verdict(score_diff),
                    "val_loss": loss_diff.as_dict() if loss_diff else None,
                    "val_loss_verdict": verdict(loss_diff, higher_is_better=False)}
            rows.append(row)
    return rows


def _interval(diff: dict | None) -> str:
    if not diff:
        return "-"
    mean = f"{diff['mean']:+.2f}"
    if diff["low"] is None:
        return f"{mean} (n={diff['n_method']} vs {diff['n_baseline']})"
    return f"{mean} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def markdown(manifest: dict, rows: list[dict]) -> str:
    """The report as Markdown."""
    unit = UNITS.get(manifest["budget_kind"], manifest["budget_kind"])
    ft = manifest["finetune"]
    confidence = round(100 * manifest.get("confidence", 0.95))
    tests = sorted({r["vs_baseline"]["score"]["test"] for r in rows
                    if r.get("vs_baseline", {}).get("score")
                    and r["vs_baseline"]["score"]["test"]})
    lines = [
        f"# Study {manifest['name']} (preset {manifest['preset']})", "",
        f"Methods {', '.join(manifest['methods'])} against `{manifest['baseline']}` at budgets "
        f"{', '.join(f'{b:g}' for b in manifest['budgets'])} ({unit}); pretraining seeds "
        f"{manifest['seeds']}, fine-tuning (`eval={ft['preset']}`"
        f"{' ' + ' '.join(ft['overrides']) if ft['overrides'] else ''}) seeds {ft['seeds']}.",
        "",
        f"Score: the average of the fine-tuned tasks' scores (last epoch), mean ± std over "
        f"pretraining x fine-tuning seeds. Δ: method - baseline at the same budget, with its "
        f"{confidence}% confidence interval ({'; '.join(tests) or 'no interval yet'}; each "
        f"pretraining seed's score is first averaged over its fine-tuning seeds). Verdicts "
        f"read the interval: above 0 better, below 0 worse, else no significant difference.",
        "",
        f"| method | budget ({unit}) | score | Δ score [{confidence}% CI] | verdict | "
        f"held-out MLM loss | Δ loss [{confidence}% CI], verdict | tokens | {unit} spent | "
        f"wall clock | cells |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = r.get("vs_baseline", {})
        lines.append(
            f"| {r['method']} | {r['budget']:g} | {_fmt(r['score']['mean'], r['score']['std'])} "
            f"| {_interval(vs.get('score')) if vs else 'baseline'} | {vs.get('verdict', '')} "
            f"| {_fmt(r['val_loss']['mean'], r['val_loss']['std'], 3)} "
            f"| {_interval(vs.get('val_loss')) + ' ' + vs['val_loss_verdict'] if vs else ''} "
            f"| {_fmt(r['tokens'], digits=0)} | {_fmt(r['budget_spent'], digits=3)} "
            f"| {_hours(r['train_seconds'])} | {r['pretrained']}/{r['cells']} |")
    tasks = sorted({t for r in rows for t in r["tasks"]})
    if tasks:
        lines += ["", "## Tasks (mean ± std over pretraining x fine-tuning seeds)", "",
                  f"| method | budget | {' | '.join(tasks)} |",
                  "|---|---|" + "---|" * len(tasks)]
        for r in rows:
            cells = [_fmt(r["tasks"][t]["mean"], r["tasks"][t]["std"]) if t in r["tasks"]
                     else "-" for t in tasks]
            lines.append(f"| {r['method']} | {r['budget']:g} | {' | '.join(cells)} |")
    lines += ["", "Plots: `loss_vs_budget.png` (held-out loss against the budget clock), "
              "`loss_vs_wall_clock.png`, `score_vs_budget.png`.", ""]
    return "\n".join(lines)


def _curves(cells: list[CellResult], x_key: str, scale: float = 1.0):
    """Per (method, budget): mean x, mean and std of the loss at each validation point."""
    import numpy as np

    grouped: dict[tuple[str, float], list[list[dict]]] = {}
    for cell in cells:
        if cell.curve:
            grouped.setdefault((cell.method, cell.budget), []).append(cell.curve)
    out = {}
    for key, curves in grouped.items():
        length = min(len(c) for c in curves)
        xs = np.array([[c[i].get(x_key, np.nan) for i in range(length)] for c in curves]) * scale
        ys = np.array([[c[i]["val_loss"] for i in range(length)] for c in curves])
        out[key] = (xs.mean(0), ys.mean(0), ys.std(0))
    return out


def plot(manifest: dict, cells: list[CellResult], rows: list[dict], folder: Path) -> list[Path]:
    """The three PNGs: loss against the budget clock and wall clock (seed bands), score
    against budget (std error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = UNITS.get(manifest["budget_kind"], manifest["budget_kind"])
    colors = {m: f"C{i}" for i, m in enumerate(manifest["methods"])}
    written = []
    for x_key, scale, label, name in (
            ("budget_spent", 1.0, f"budget spent ({unit})", "loss_vs_budget.png"),
            ("train_seconds", 1 / 60, "training wall clock (minutes)", "loss_vs_wall_clock.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for (method, budget), (x, mean, std) in sorted(_curves(cells, x_key, scale).items()):
            ax.plot(x, mean, color=colors[method], marker=".",
                    label=f"{method} @ {budget:g}")
            ax.fill_between(x, mean - std, mean + std, color=colors[method], alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out MLM loss")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        written.append(folder / name)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method in manifest["methods"]:
        points = [(r["budget"], r["score"]["mean"], r["score"]["std"] or 0.0) for r in rows
                  if r["method"] == method and r["score"]["mean"] is not None]
        if points:
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, color=colors[method], marker="o", capsize=3,
                        label=method)
    ax.set_xlabel(f"budget ({unit})")
    ax.set_ylabel(f"fine-tuned score (eval={manifest['finetune']['preset']})")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "score_vs_budget.png", dpi=120)
    plt.close(fig)
    written.append(folder / "score_vs_budget.png")
    return written


def write_report(folder: str | Path) -> Path:
    """Write report.md, report.json and the plots into the study folder; returns report.md."""
    folder = Path(folder)
    manifest, cells = collect(folder)
    rows = summarize(manifest, cells)
    plots = plot(manifest, cells, rows, folder)
    (folder / "report.json").write_text(json.dumps({
        "study": {k: v for k, v in manifest.items() if k not in ("cells", "il_cells")},
        "rows": rows,
        "cells": [{"key": c.key, "method": c.method, "budget": c.budget, "seed": c.seed,
                   "run_folder": str(c.run_folder) if c.run_folder else None,
                   "scores": c.scores, "tasks": c.tasks,
                   **{k: c.summary.get(k) for k in ("val_loss", "tokens", "budget_spent",
                                                    "train_seconds", "steps")}}
                  for c in cells],
        "plots": [p.name for p in plots]}, indent=2))
    (folder / "report.md").write_text(markdown(manifest, rows))
    return folder / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rewrite a study's report from its runs.")
    parser.add_argument("folder", help="the study folder, <base_dir>/<name>")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.folder)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(path.read_text())


if __name__ == "__main__":
    main()
