"""Hook points through which training methods plug into the one engine.

A method (layer dropping, stacking, selective backprop, RHO-Loss, extra cost charging)
subclasses :class:`TrainingHook` and overrides only what it needs; the loop body itself
holds no method logic. Hooks run in the order given and see the trainer only through
:class:`HookContext`; each has a unique ``name`` under which its state is checkpointed.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from cramming.objectives.base import Microbatch


class HookContext(Protocol):
    """What a hook may use of the trainer."""

    step: int  # optimizer steps taken
    progress: float  # budget progress at this step's start, the same on every rank
    model: nn.Module
    runtime: Any  # device and autocast (cramming.backend.runtime.Runtime)
    clock: Any  # the budget clock: progress(), charge_microbatch(work), ...
    context: Any  # the processes (cramming.backend.distributed.DistributedContext)

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    def draw_microbatch(self, size: int, progress: float, stream: str) -> Microbatch:
        """This rank's share of the next microbatch of the named data stream (its own row
        order, masks and checkpointed position; built by the data pipeline)."""
        ...


class TrainingHook:
    """No-op base class; every method has a safe default.

    ``name`` keys the hook's checkpointed state (and its data streams): unique per run.
    """

    name: str = "hook"

    def on_train_start(self, trainer: HookContext) -> None:
        """Called once, after a resume has been applied."""

    def before_step(self, trainer: HookContext) -> None:
        """Called before each optimizer step's microbatches (e.g. depth schedules)."""

    def lr_scale(self, trainer: HookContext, progress: float) -> float:
        """Factor on the scheduled learning rate of this step (e.g. re-warmup after growth)."""
        return 1.0

    def select_batch(self, trainer: HookContext, batch: Microbatch) -> Microbatch:
        """Return the (possibly reduced) microbatch to train on (batch selection)."""
        return batch

    def after_step(self, trainer: HookContext, record: dict) -> None:
        """Called after each optimizer step with the step's metrics record."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
