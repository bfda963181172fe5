"""Helpers shared by the batch-selection and Hessian hooks: extra data, scoring, row picking."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from cramming.backend.clock import Work, active_layers
from cramming.objectives import Microbatch

if TYPE_CHECKING:
    from cramming.backend.engine import Trainer

# Mask seeds of extra microbatches live far away from the engine's microbatch indices.
_STREAM_STRIDE = 1 << 40


class ExtraBatches:
    """Draws further microbatches from the trainer's own (resumable) data stream.

    Rows come from the trainer's sampler, so every row is still seen once per epoch; masks
    use a separate, counted index stream so they are reproducible after a resume.
    """

    def __init__(self, stream: int):
        self.stream, self.count = stream, 0

    def draw(self, trainer: Trainer, size: int, progress: float) -> Microbatch:
        rows = trainer.train_data.batch(trainer.sampler.take(size))
        batch = trainer.objective.microbatch(rows, progress,
                                             self.stream * _STREAM_STRIDE + self.count)
        self.count += 1
        return batch

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


def take_rows(batch: Microbatch, index: torch.Tensor) -> Microbatch:
    """The rows ``index`` of ``batch`` (per-row tensors in ``model_kwargs`` too)."""
    rows = batch.input_ids.shape[0]

    def pick(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
            return value[index]
        return value

    return dataclasses.replace(
        batch, input_ids=batch.input_ids[index], labels=batch.labels[index],
        example_ids=batch.example_ids[index],
        model_kwargs={k: pick(v) for k, v in batch.model_kwargs.items()})


def concat(batches: list[Microbatch]) -> Microbatch:
    """Stack microbatches of the same kind row-wise."""
    first = batches[0]
    if len(batches) == 1:
        return first
    kwargs = {}
    for key, value in first.model_kwargs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            kwargs[key] = torch.cat([b.model_kwargs[key] for b in batches])
        else:
            kwargs[key] = value
    return dataclasses.replace(
        first, input_ids=torch.cat([b.input_ids for b in batches]),
        labels=torch.cat([b.labels for b in batches]),
        example_ids=torch.cat([b.example_ids for b in batches]), model_kwargs=kwargs)


@torch.no_grad()
def score(trainer: Trainer, batch: Microbatch) -> torch.Tensor:
    """Per-example training loss of ``batch`` (forward only), charged as a scoring pass."""
    device = trainer.runtime.device
    with trainer.runtime.autocast():
        outputs = trainer.model(batch.input_ids.to(device), labels=batch.labels.to(device),
                                return_per_example_loss=True, **batch.model_kwargs)
    trainer.clock.charge_microbatch(Work(sequences=batch.input_ids.shape[0],
                                         tokens=batch.input_ids.numel(), kind="forward",
                                         active_layers=active_layers(trainer.model)))
    return outputs["per_example_loss"].float().cpu()
