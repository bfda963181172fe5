"""Exponential moving average of the weights, as a training hook.

The average is part of the training state (so it is checkpointed and resumed exactly) and
is written next to the final model as its own model folder (``model-ema/``), which
``validate_bert.py model_path=<run>/model-ema`` and ``eval.py`` load like any model.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from cramming.backend.hooks import TrainingHook

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext


class EMAHook(TrainingHook):
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average is not dominated by the random initialisation early in short runs.
    """

    name = "ema"

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] | None = None

    def _initialise(self, model: nn.Module) -> None:
        self.shadow = {name: value.detach().float().clone()
                       for name, value in model.state_dict().items()
                       if value.is_floating_point()}

    def on_train_start(self, trainer: HookContext) -> None:
        """Start the average at the current weights unless a resume restored it."""
        if self.shadow is None:
            self._initialise(trainer.model)

    def current_decay(self) -> float:
        """Decay applied at the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s weights."""
        if self.shadow is None:
            self._initialise(model)
            return
        weight = 1.0 - self.current_decay()
        for name, value in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].lerp_(value.detach().float(), weight)
        self.updates += 1

    def after_step(self, trainer: HookContext, record: dict) -> None:
        """Update after each optimizer step."""
        self.update(trainer.model)

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` carrying the averaged weights."""
        averaged = copy.deepcopy(model)
        if self.shadow is not None:
            state = averaged.state_dict()
            with torch.no_grad():
                for name, value in self.shadow.items():
                    state[name].copy_(value.to(state[name].dtype))
        return averaged

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average written by :meth:`state_dict`."""
        self.updates = int(state["updates"])
        self.shadow = state["shadow"]
