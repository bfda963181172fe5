"""Progressive layer stacking (Gong et al. 2019; NTNG's "stacking" baseline).

Training starts with ``initial_layers`` of the model's layers running. At each budget
fraction in ``at`` the model grows: ``double`` copies layers ``[0, k)`` onto ``[k, 2k)``,
``add`` copies the top layer onto the next ``add_layers`` ones. Optimizer state on growth
(``optimizer_state``): ``keep`` (NTNG) leaves the old layers' moments alone and starts the new
layers fresh, ``copy`` gives the new layers their source's state, ``reset`` clears every
state. With ``rewarmup > 0`` the learning rate is re-warmed linearly over that budget
fraction after each growth, so the schedule sees the reset (NTNG grew without touching it).
All layers exist from the start (checkpoints and the final model always hold the full
depth); only the first ``depth`` of them run and receive gradients.

On N processes every rank grows at the same step (growth reads the budget progress all
ranks agreed on) and copies the same weights and optimizer state; DDP is built to find the
layers that do not run (:class:`cramming.backend.strategy.TorchStrategy`), so it needs no
rebuild when more of them start running.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from cramming.backend.hooks import TrainingHook
from cramming.config.schema import StackingConfig
from cramming.errors import ConfigError
from efficient_training.depth import install_active_layers

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext


def depth_schedule(cfg: StackingConfig, num_layers: int) -> list[int]:
    """Depth after each growth in ``cfg.at``; the last one must be ``num_layers``."""
    depths, depth = [], cfg.initial_layers
    for _ in cfg.at:
        depth = depth * 2 if cfg.growth == "double" else depth + cfg.add_layers
        depths.append(depth)
    final = depths[-1] if depths else cfg.initial_layers
    if final != num_layers:
        raise ConfigError(
            f"method.stacking grows {cfg.initial_layers} -> {' -> '.join(map(str, depths))} "
            f"layers ({cfg.growth} at {list(cfg.at)}) but arch.num_layers={num_layers}; adjust "
            f"method.stacking.initial_layers / at / add_layers so the last growth reaches it.")
    return depths


def _source_layer(target: int, old_depth: int, growth: str) -> int:
    return target - old_depth if growth == "double" else old_depth - 1


class StackingHook(TrainingHook):
    """Grows the running depth of ``model`` at the configured budget fractions."""

    name = "stacking"

    def __init__(self, cfg: StackingConfig, model: nn.Module):
        self.cfg = cfg
        self.layers = install_active_layers(model)
        self.depths = depth_schedule(cfg, len(self.layers))
        self.depth = cfg.initial_layers
        self.grown_at: list[float] = []  # budget progress of each growth so far
        self.layers.depth = self.depth

    def before_step(self, trainer: HookContext) -> None:
        progress = trainer.progress
        while len(self.grown_at) < len(self.cfg.at) and \
                progress >= self.cfg.at[len(self.grown_at)]:
            self.grow(trainer.optimizer, progress)

    @torch.no_grad()
    def grow(self, optimizer: torch.optim.Optimizer, progress: float) -> None:
        """Copy layers (and optimizer state) into the next stage's new layers."""
        layers = self.layers.all_layers()
        old, new = self.depth, self.depths[len(self.grown_at)]
        for target in range(old, new):
            source = layers[_source_layer(target, old, self.cfg.growth)]
            for p_src, p_dst in zip(source.parameters(), layers[target].parameters()):
                p_dst.copy_(p_src)
                if self.cfg.optimizer_state == "copy" and p_src in optimizer.state:
                    optimizer.state[p_dst] = copy.deepcopy(optimizer.state[p_src])
                elif self.cfg.optimizer_state == "keep":
                    optimizer.state.pop(p_dst, None)
        if self.cfg.optimizer_state == "reset":
            optimizer.state.clear()
        self.depth = self.layers.depth = new
        self.grown_at.append(progress)

    def lr_scale(self, trainer: HookContext, progress: float) -> float:
        if self.cfg.rewarmup <= 0 or not self.grown_at:
            return 1.0
        return min(1.0, max(progress - self.grown_at[-1], 0.0) / self.cfg.rewarmup)

    def after_step(self, trainer: HookContext, record: dict) -> None:
        record["depth"] = self.depth

    def state_dict(self) -> dict:
        return {"depth": self.depth, "grown_at": list(self.grown_at)}

    def load_state_dict(self, state: dict) -> None:
        self.depth = self.layers.depth = int(state["depth"])
        self.grown_at = [float(p) for p in state["grown_at"]]
