"""Progressive layer dropping (Zhang & He 2020, "Accelerating Training of Transformer-Based
Language Models with Progressive Layer Dropping").

The global keep probability decays with budget progress ``p``:
``theta(p) = theta_min + (1 - theta_min) * exp(-gamma * p)``; layer ``i`` of ``L`` (0-based)
is kept with ``1 - (i + 1) / L * (1 - theta(p))``, so deeper layers are dropped more often.
Each microbatch samples which layers run; kept layers' residual branches are scaled by
``1 / keep`` when ``rescale`` is on. In eval mode every layer runs.

The draws come from a generator seeded alike on every process and drawn once per forward
pass on each, so all ranks of a DDP run skip the same layers in every pass (its gradient
reduction needs that) and the run equals one process with an N times larger microbatch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from cramming.backend.hooks import TrainingHook
from cramming.config.schema import LayerDropConfig
from efficient_training.depth import install_active_layers

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext


def theta(progress: float, cfg: LayerDropConfig) -> float:
    """Global keep probability at budget ``progress``."""
    return cfg.theta_min + (1.0 - cfg.theta_min) * math.exp(-cfg.gamma * progress)


def keep_probabilities(progress: float, num_layers: int, cfg: LayerDropConfig) -> list[float]:
    """Per-layer keep probabilities: linear decay with depth down to ``theta(progress)``."""
    drop = 1.0 - theta(progress, cfg)
    return [1.0 - (i + 1) / num_layers * drop for i in range(num_layers)]


class LayerDropHook(TrainingHook):
    """Sets the keep probabilities of the running layers before each optimizer step."""

    name = "layer_drop"

    def __init__(self, cfg: LayerDropConfig, model: nn.Module, seed: int):
        self.cfg = cfg
        self.layers = install_active_layers(model)
        self.layers.rescale = cfg.rescale
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.layers.generator = self.generator
        self._active: list[int] = []

    def before_step(self, trainer: HookContext) -> None:
        depth = self.layers.depth  # stacking may run fewer layers than exist
        self.layers.keep_probs = keep_probabilities(trainer.progress, depth, self.cfg)

    def after_step(self, trainer: HookContext, record: dict) -> None:
        record["theta"] = theta(trainer.clock.progress(), self.cfg)
        record["active_layers"] = self.layers.last_active

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
