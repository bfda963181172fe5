"""Run logging: ``metrics.jsonl``, optional wandb, and the loss-curve PNG."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from cramming.config.schema import WandbConfig

log = logging.getLogger(__name__)


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSON-lines file (a torn last line from a crash is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def replace_text(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically: write a temporary sibling, fsync, rename."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if path.exists():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))  # mkstemp makes it 0600
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power loss
    finally:
        os.close(folder)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


class MetricsLogger:
    """Appends one JSON record per logged step; mirrors to wandb when enabled."""

    def __init__(self, run_dir: Path, wandb_cfg: WandbConfig, run_name: str, config: dict):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        if wandb_cfg.enabled and wandb_cfg.mode != "disabled":
            import wandb

            self._wandb = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity,
                                     name=run_name, mode=wandb_cfg.mode, tags=wandb_cfg.tags,
                                     config=config, dir=str(run_dir))

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resume starts from)
        and a torn last line; atomic, so a kill at any moment leaves the old or new file."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a killed rewrite
            leftover.unlink(missing_ok=True)
        if not self.path.is_file():
            return
        text = self.path.read_text()
        kept = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        if "".join(kept) != text:
            replace_text(self.path, "".join(kept))

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)
        if self._wandb is not None:
            self._wandb.log(record, step=record.get("step"))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def plot_loss_curve(metrics_file: Path, output: Path) -> Path | None:
    """Training loss against budget progress, saved as PNG."""
    records = [r for r in read_jsonl(metrics_file) if "loss" in r and "progress" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * r["progress"] for r in records], [r["loss"] for r in records], lw=1.2)
    ax.set_xlabel("budget spent (%)")
    ax.set_ylabel("training MLM loss")
    ax.set_title(metrics_file.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
