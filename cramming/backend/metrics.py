"""Run logging: ``metrics.jsonl``, optional wandb, and the loss-curve PNG."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

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


def sum_across_ranks(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """Element-wise sum of ``values`` over all ranks (a copy; ``values`` itself on 1 rank)."""
    if world_size <= 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class StepStatistics:
    """Per-kind loss and accuracy and the real mask rate of one step, over all ranks.

    Every microbatch counts once: ``loss_<kind>`` is the mean microbatch loss of that kind
    and ``accuracy_<kind>`` its mean accuracy (predicted = target, over its targets), across
    every rank's microbatches; with equal microbatch counts per rank that is the average
    over the ranks training that kind, which is how GPT-BERT logs ``mlm_loss`` /
    ``clm_loss`` (ltgoslo/gpt-bert, pretraining/train_multi_gpu.py). ``mask_rate`` is the
    mean selected fraction of maskable tokens over the masked microbatches (GPT-BERT's
    ``real_mask_p``). One all-reduce per step; values stay on the device.
    """

    def __init__(self, kinds: tuple[str, ...], device: torch.device):
        self.kinds = kinds
        # per kind: loss sum, microbatches, accuracy sum, microbatches with an accuracy;
        # last row: mask-rate sum, masked microbatches
        self.values = torch.zeros(len(kinds) + 1, 4, dtype=torch.float32, device=device)

    def add(self, kind: str, loss: torch.Tensor, outputs: dict,
            mask_rate: float | None) -> None:
        """Count one microbatch of ``kind`` (``outputs``: the model's, ``loss`` unweighted)."""
        row = self.kinds.index(kind)
        self.values[row, 0] += loss.detach().float()
        self.values[row, 1] += 1
        correct, predicted = outputs.get("num_correct"), outputs.get("num_predictions")
        if correct is not None and predicted is not None:
            self.values[row, 2] += correct.float() / predicted.clamp(min=1).float()
            self.values[row, 3] += 1
        if mask_rate is not None:
            self.values[-1, 0] += mask_rate
            self.values[-1, 1] += 1

    def record(self, world_size: int) -> dict[str, torch.Tensor]:
        """``accuracy``, ``mask_rate`` (masked kinds) and, with several kinds,
        ``loss_<kind>`` / ``accuracy_<kind>``, reduced over ``world_size`` ranks."""
        total = sum_across_ranks(self.values, world_size)
        kinds = total[:-1]
        record = {"accuracy": kinds[:, 2].sum() / kinds[:, 3].sum().clamp(min=1)}
        if "mlm" in self.kinds:
            record["mask_rate"] = total[-1, 0] / total[-1, 1].clamp(min=1)
        if len(self.kinds) > 1:
            for row, kind in enumerate(self.kinds):
                record[f"loss_{kind}"] = kinds[row, 0] / kinds[row, 1].clamp(min=1)
                record[f"accuracy_{kind}"] = kinds[row, 2] / kinds[row, 3].clamp(min=1)
        return record


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
