"""Training objectives: turn packed token rows into model inputs, targets and loss weights.

The engine asks the objective for each microbatch; an objective never touches the model,
so every objective runs through the same loop, budget clock and hooks.
"""

from __future__ import annotations

from cramming.config.schema import PretrainConfig
from cramming.objectives.base import Microbatch, Objective
from cramming.objectives.mlm import MaskedLanguageModeling

__all__ = ["Microbatch", "Objective", "MaskedLanguageModeling", "build_objective"]


def build_objective(cfg: PretrainConfig, tokenizer) -> Objective:
    """The objective named by ``cfg.train.objective``."""
    if cfg.train.objective == "mlm":
        return MaskedLanguageModeling.from_config(cfg, tokenizer)
    raise ValueError(f"unknown objective {cfg.train.objective}")
