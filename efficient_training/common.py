"""Helpers shared by the batch-selection and Hessian hooks: extra data, scoring, row picking.

On several processes a selection hook works on *global* microbatches, the rows of all ranks
in rank order (what one process with an N times larger microbatch has): :func:`gather_rows`
builds one from each rank's share, :func:`score_globally` scores it with each rank scoring
only its own share, and :func:`rank_share` hands each rank its part of a selected one.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from cramming.clock import Work, active_layers
from cramming.objectives import Microbatch

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext

class ExtraBatches:
    """A hook's own data stream: microbatches beyond the training ones (candidates, Hessian
    batches), drawn through the trainer's pipeline under the hook's name.

    The stream has its own row order and masks, and the trainer checkpoints its position,
    so the training rows are never shifted and every draw is exact after a resume.
    """

    def __init__(self, stream: str):
        self.stream = stream

    def draw(self, trainer: HookContext, size: int, progress: float) -> Microbatch:
        return trainer.draw_microbatch(size, progress, self.stream)


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


class RowPool:
    """Rows waiting to be trained on (selected by a hook), handed out a microbatch at a time.

    Its content is part of the hook's checkpointed state (plain tensors and values).
    """

    def __init__(self) -> None:
        self.batches: list[Microbatch] = []

    def __len__(self) -> int:
        return sum(batch.input_ids.shape[0] for batch in self.batches)

    def add(self, batch: Microbatch) -> None:
        """Append ``batch``'s rows (an empty batch is ignored)."""
        if batch.input_ids.shape[0]:
            self.batches.append(batch)

    def drain(self) -> list[Microbatch]:
        """Every batch held, oldest first; the pool is empty afterwards."""
        batches, self.batches = self.batches, []
        return batches

    def take(self, size: int) -> Microbatch:
        """The oldest ``size`` rows (the pool must hold at least that many)."""
        pooled = concat(self.drain())
        rest = pooled.input_ids.shape[0] - size
        if rest:
            self.batches = [take_rows(pooled, torch.arange(size, size + rest))]
        return take_rows(pooled, torch.arange(size))

    def state_dict(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(batch) for batch in self.batches]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.batches = [Microbatch(**batch) for batch in state]


@torch.no_grad()
def score(trainer: HookContext, batch: Microbatch) -> torch.Tensor:
    """Per-example training loss of ``batch`` (forward only), charged as a scoring pass."""
    device = trainer.runtime.device
    with trainer.runtime.autocast():
        outputs = trainer.model(batch.input_ids.to(device), labels=batch.labels.to(device),
                                return_per_example_loss=True, **batch.model_kwargs)
    trainer.clock.charge_microbatch(Work(sequences=batch.input_ids.shape[0],
                                         tokens=batch.input_ids.numel(), kind="forward",
                                         active_layers=active_layers(trainer.model),
                                         replicas=trainer.context.world_size))
    return outputs["per_example_loss"].float().cpu()


def gather_rows(trainer: HookContext, share: Microbatch) -> Microbatch:
    """The global microbatch whose rank ``r`` part is rank ``r``'s ``share`` (every rank)."""
    if not trainer.context.enabled:
        return share
    return concat(trainer.context.all_gather_objects(share))


def rank_share(trainer: HookContext, batch: Microbatch) -> Microbatch:
    """This rank's equal part of the global microbatch ``batch``."""
    world, rank = trainer.context.world_size, trainer.context.rank
    if world == 1:
        return batch
    rows = batch.input_ids.shape[0] // world
    return take_rows(batch, torch.arange(rank * rows, (rank + 1) * rows))


def score_globally(trainer: HookContext, batch: Microbatch) -> torch.Tensor:
    """Per-example losses of the global microbatch ``batch`` on every rank; each rank
    scores (and is charged for) only its own share."""
    losses = score(trainer, rank_share(trainer, batch))
    if not trainer.context.enabled:
        return losses
    return torch.cat(trainer.context.all_gather_objects(losses))
