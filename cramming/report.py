"""Compare every pretraining run in a folder: budget, MLM loss and downstream averages.

    python -m cramming.report outputs/            # prints a Markdown table
    python -m cramming.report outputs/ --png loss_vs_budget.png --out report.md

Run folders are ``<root>/<name>/pretrain/<date>_<time>/`` (config.yaml, summary.json,
metrics.jsonl, validation.jsonl). Evaluations (``<root>/*/eval/*/results.json``) belong to the
exact run folder their ``model_folder`` names, never to every run of a name. Each row shows
arch, train recipe, methods, optimizer, budget and seed; partial or subsampled averages say so.
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
    """One pretraining run folder and the evaluations made of exactly that folder."""

    name: str
    folder: Path
    arch: str = "-"
    recipe: str = "-"  # train preset (bert-o4, bert-o3, ...)
    method: str = "-"  # efficient-training methods switched on, "none" for plain training
    optimizer: str = "-"
    budget_kind: str = "-"
    budget: float | None = None
    seed: Any = "-"
    steps: Any = None
    final_loss: float | None = None
    val_loss: float | None = None
    # (suite, eval preset) -> "mean ± std (n=.., seeds [..])" plus what the average is not
    downstream: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def setting(self) -> tuple:
        """What makes two runs comparable on one plot line (all but the budget amount)."""
        return (self.arch, self.recipe, self.method, self.optimizer, str(self.seed))


def read_json(path: Path) -> dict:
    """A JSON object file, or {} when it is missing, torn or not an object."""
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


def run_key(path: str | Path) -> tuple[str, str] | None:
    """(run name, run stamp) of a path inside ``<name>/pretrain/<stamp>/``, else None.

    Works on relative and moved paths alike: eval results record the model folder as given.
    """
    parts = Path(str(path)).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "pretrain":
            return parts[i - 1], parts[i + 1]
    return None


def _method(config: dict) -> str:
    """The methods a run used, from its config (methods compose, so the name alone is not it)."""
    method = config.get("method")
    if not isinstance(method, dict):
        return "-"
    parts = [k for k in ("stacking", "layer_drop")
             if isinstance(method.get(k), dict) and method[k].get("enabled")]
    if method.get("selection") not in (None, "none"):
        parts.append(str(method["selection"]))
    if method.get("train_on_held_out"):
        parts.append("il_model")
    return "+".join(parts) or "none"


def _section(config: dict, key: str) -> dict:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _eval_cell(average: dict) -> str | None:
    last = (average or {}).get("last") or {}
    if last.get("mean") is None:
        return None
    seeds = last.get("values") or []
    cell = f"{last['mean']:.2f} ± {last.get('std') or 0:.2f} (n={len(seeds)})"
    label = average.get("label") or ""
    if average.get("missing") and not label:  # results written before labels existed
        label = f"partial: {', '.join(average.get('tasks') or [])} only"
    if " (" in label or label.startswith("partial"):
        cell += f" [{label}]"
    return cell


def find_evaluations(root: Path) -> dict[tuple[str, str], list[dict]]:
    """Eval results under ``root`` by the pretraining run they evaluated, oldest first.

    A result is tied to the run folder recorded in its ``model_folder``, never to a run name.
    """
    found: dict[tuple[str, str], list[dict]] = {}
    for results_file in sorted(Path(root).glob("*/eval/*/results.json")):
        results = read_json(results_file)
        key = run_key(results.get("model_folder") or "")
        if key is not None:
            found.setdefault(key, []).append(results)
    return found


def read_run(folder: Path, evaluations: dict[tuple[str, str], list[dict]] | None = None
             ) -> RunRow:
    """One pretraining run folder -> a table row (missing pieces stay None / "-")."""
    name = folder.parent.parent.name
    row = RunRow(name=name, folder=folder)
    config = _read_yaml(folder / "config.yaml") or _read_yaml(folder / "model" / "config.yaml")
    summary = read_json(folder / "summary.json")
    train = _section(config, "train")
    row.arch = str(_section(config, "arch").get("name") or summary.get("arch") or "-")
    row.recipe = str(train.get("name") or summary.get("train") or "-")
    row.method = _method(config)
    row.optimizer = str(_section(train, "optim").get("name") or "-")
    row.budget_kind = str(config.get("budget_kind") or summary.get("budget_kind") or "-")
    row.budget = _float(config.get("budget", summary.get("budget")))
    row.seed = config.get("seed", summary.get("seed", "-"))
    last = _last_jsonl(folder / "metrics.jsonl", "loss")
    row.final_loss = _float(last.get("loss")) if last else _float(summary.get("final_loss"))
    row.steps = (last or {}).get("step", summary.get("steps"))
    validation = _last_jsonl(folder / "validation.jsonl", "loss")
    row.val_loss = _float(validation.get("loss")) if validation else _float(summary.get("val_loss"))
    if evaluations is None:
        evaluations = find_evaluations(folder.parent.parent.parent)
    for results in evaluations.get((name, folder.name), []):  # newest per preset wins
        preset = str(results.get("preset") or "-")
        for suite, average in (results.get("averages") or {}).items():
            cell = _eval_cell(average)
            if cell:
                seeds = results.get("seeds") or []
                row.downstream[(suite, preset)] = f"{cell} seeds {seeds}"
    return row


def find_runs(root: Path) -> list[RunRow]:
    """Every ``<name>/pretrain/<stamp>/`` folder under ``root`` (or ``root`` itself)."""
    root = Path(root)
    folders = sorted(p for p in root.glob("*/pretrain/*") if p.is_dir() and not
                     p.name.startswith("."))
    if not folders and root.parent.name == "pretrain":
        folders = [root]
        root = root.parent.parent.parent
    evaluations = find_evaluations(root)
    return [read_run(folder, evaluations) for folder in folders]


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def markdown(rows: list[RunRow]) -> str:
    """One row per pretraining run folder; one column per (suite, eval preset)."""
    columns = sorted({key for row in rows for key in row.downstream})
    header = ["run (folder)", "arch", "recipe", "method", "optimizer", "budget", "seed",
              "steps", "final loss", "val loss",
              *[f"{suite} avg, {preset} (last epoch)" for suite, preset in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        budget = f"{_cell(row.budget, 2)} {row.budget_kind}" if row.budget is not None else "-"
        cells = [f"{row.name} ({row.folder.name})", row.arch, row.recipe, row.method,
                 row.optimizer, budget, _cell(row.seed), _cell(row.steps),
                 _cell(row.final_loss), _cell(row.val_loss),
                 *[row.downstream.get(key, "-") for key in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[RunRow], path: Path) -> Path | None:
    """Validation (else final training) loss against budget, one panel per budget kind and
    one line per setting (arch, recipe, method, optimizer, seed): runs differing in any of
    them never share a line."""
    points = [(r.budget_kind, r.setting, r.budget, r.val_loss if r.val_loss is not None
               else r.final_loss) for r in rows]
    points = [p for p in points if p[2] is not None and p[3] is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({p[0] for p in points})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for setting in sorted({p[1] for p in points if p[0] == kind}):
            series = sorted((p[2], p[3]) for p in points if p[0] == kind and p[1] == setting)
            arch, recipe, method, optimizer, seed = setting
            ax.plot([s[0] for s in series], [s[1] for s in series], marker="o",
                    label=f"{arch} / {recipe} / {method} / {optimizer} / seed {seed}")
        ax.set_xlabel(f"budget ({kind})")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Loss against budget")
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
    known = {(row.name, row.folder.name) for row in rows}
    orphans = [str(path) for path in sorted(root.glob("*/eval/*/results.json"))
               if run_key(read_json(path).get("model_folder") or "") not in known]
    if orphans:  # never guessed from the run name
        print(f"{len(orphans)} evaluation(s) not shown: their model_folder names no run folder "
              f"under {root}: {', '.join(orphans)}")
    if args.out:
        Path(args.out).write_text(table)
    png = plot(rows, Path(args.png) if args.png else root / "report.png")
    if png:
        print(f"Plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
