"""Compare every pretraining run in a folder: budget, MLM loss and downstream averages.

    python -m cramming.report outputs/            # prints a Markdown table
    python -m cramming.report outputs/ --png loss_vs_budget.png --out report.md

Run folders are ``<root>/<name>/pretrain/<date>_<time>/`` (config.yaml, summary.json,
metrics.jsonl, validation.jsonl) and their evaluations ``<root>/<name>/eval/*/results.json``.
Everything is read defensively: a half-written or foreign folder gives "-" cells, not a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunRow:
    name: str
    folder: Path
    method: str = "-"
    budget_kind: str = "-"
    budget: float | None = None
    seed: Any = "-"
    steps: Any = None
    final_loss: float | None = None
    val_loss: float | None = None
    downstream: dict[str, str] = field(default_factory=dict)  # suite -> "mean ± std (n seeds)"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict:
    try:
        import yaml

        value = yaml.safe_load(path.read_text())
        return value if isinstance(value, dict) else {}
    except Exception:  # noqa: BLE001 - unreadable or invalid YAML: treat as absent
        return {}


def _last_jsonl(path: Path, key: str) -> dict | None:
    """The last well-formed line of a JSONL file that has ``key`` (skips a torn last line)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get(key), (int, float)):
            return record
    return None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _downstream(name_dir: Path) -> dict[str, str]:
    """Newest eval result per suite average: ``mean ± std`` over fine-tuning seeds."""
    found: dict[str, str] = {}
    for results_file in sorted((name_dir / "eval").glob("*/results.json")):
        results = _read_json(results_file)
        for suite, average in (results.get("averages") or {}).items():
            last = (average or {}).get("last") or {}
            if last.get("mean") is None:
                continue
            seeds = len(last.get("values") or [])
            note = " (partial)" if average.get("missing") else ""
            found[suite] = f"{last['mean']:.2f} ± {last.get('std') or 0:.2f} (n={seeds}){note}"
    return found


def read_run(folder: Path) -> RunRow:
    """One pretraining run folder -> a table row (missing pieces stay None / "-")."""
    name = folder.parent.parent.name
    row = RunRow(name=name, folder=folder)
    config = _read_yaml(folder / "config.yaml") or _read_yaml(folder / "model" / "config.yaml")
    summary = _read_json(folder / "summary.json")
    arch = (config.get("arch") or {}).get("name") if isinstance(config.get("arch"), dict) else None
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    arch = arch or summary.get("arch")
    train_name = train.get("name") or summary.get("train")
    if arch or train_name:
        row.method = f"{arch or '?'} / {train_name or '?'}"
    row.budget_kind = str(config.get("budget_kind") or summary.get("budget_kind") or "-")
    row.budget = _float(config.get("budget", summary.get("budget")))
    row.seed = config.get("seed", summary.get("seed", "-"))
    last = _last_jsonl(folder / "metrics.jsonl", "loss")
    row.final_loss = _float(last.get("loss")) if last else _float(summary.get("final_loss"))
    row.steps = (last or {}).get("step", summary.get("steps"))
    validation = _last_jsonl(folder / "validation.jsonl", "loss")
    row.val_loss = _float(validation.get("loss")) if validation else _float(summary.get("val_loss"))
    row.downstream = _downstream(folder.parent.parent)
    return row


def find_runs(root: Path) -> list[RunRow]:
    """Every ``<name>/pretrain/<stamp>/`` folder under ``root`` (or ``root`` itself)."""
    root = Path(root)
    folders = sorted(p for p in root.glob("*/pretrain/*") if p.is_dir() and not
                     p.name.startswith("."))
    if not folders and root.parent.name == "pretrain":
        folders = [root]
    return [read_run(folder) for folder in folders]


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def markdown(rows: list[RunRow]) -> str:
    suites = sorted({suite for row in rows for suite in row.downstream})
    header = ["run", "method (arch / train)", "budget", "seed", "steps", "final MLM loss",
              "val loss", *[f"{s} avg (last epoch)" for s in suites]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        budget = f"{_cell(row.budget, 2)} {row.budget_kind}" if row.budget is not None else "-"
        cells = [f"{row.name} ({row.folder.name})", row.method, budget, _cell(row.seed),
                 _cell(row.steps), _cell(row.final_loss), _cell(row.val_loss),
                 *[row.downstream.get(s, "-") for s in suites]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[RunRow], path: Path) -> Path | None:
    """Validation (else final training) MLM loss against budget, one line per method."""
    points = [(r.budget_kind, r.method, r.budget, r.val_loss if r.val_loss is not None
               else r.final_loss) for r in rows]
    points = [p for p in points if p[2] is not None and p[3] is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({p[0] for p in points})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for method in sorted({p[1] for p in points if p[0] == kind}):
            series = sorted((p[2], p[3]) for p in points if p[0] == kind and p[1] == method)
            ax.plot([s[0] for s in series], [s[1] for s in series], marker="o", label=method)
        ax.set_xlabel(f"budget ({kind})")
        ax.set_ylabel("validation MLM loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("MLM loss against budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="outputs", help="folder with the runs")
    parser.add_argument("--png", default=None, help="plot file (default <root>/report.png)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 1
    rows = find_runs(root)
    if not rows:
        print(f"No pretraining runs (<name>/pretrain/<date>_<time>/) under {root}.")
        return 0
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    png = plot(rows, Path(args.png) if args.png else root / "report.png")
    if png:
        print(f"Plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
