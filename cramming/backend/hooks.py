"""Hook points through which training methods plug into the one engine.

A method (layer dropping, stacking, selective backprop, RHO-Loss, extra cost charging)
subclasses :class:`TrainingHook` and overrides only what it needs; the loop body itself
holds no method logic. Hooks run in the order given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cramming.objectives.base import Microbatch

if TYPE_CHECKING:
    from cramming.backend.engine import Trainer


class TrainingHook:
    """No-op base class; every method has a safe default."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once, after a resume has been applied."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each optimizer step's microbatches (e.g. depth schedules)."""

    def lr_scale(self, trainer: Trainer, progress: float) -> float:
        """Factor on the scheduled learning rate of this step (e.g. re-warmup after growth)."""
        return 1.0

    def select_batch(self, trainer: Trainer, batch: Microbatch) -> Microbatch:
        """Return the (possibly reduced) microbatch to train on (batch selection)."""
        return batch

    def after_step(self, trainer: Trainer, record: dict) -> None:
        """Called after each optimizer step with the step's metrics record."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
