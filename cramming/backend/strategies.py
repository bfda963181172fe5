"""Which strategy runs the job: the one place that knows every backend.

:class:`~cramming.backend.strategy.TorchStrategy` (one process, DDP, FSDP2) and
:class:`~cramming.backend.deepspeed_engine.DeepSpeedStrategy` both implement
:class:`~cramming.backend.strategy.Strategy`; the trainer asks :func:`build_strategy`.
"""

from __future__ import annotations

from torch import nn

from cramming.backend.deepspeed_engine import DeepSpeedStrategy
from cramming.backend.distributed import DistributedContext
from cramming.backend.runtime import Runtime
from cramming.backend.strategy import Strategy, TorchStrategy
from cramming.config.schema import PretrainConfig


def build_strategy(cfg: PretrainConfig, model: nn.Module, runtime: Runtime,
                   context: DistributedContext) -> Strategy:
    """The backend ``cfg.impl.distributed`` names (DeepSpeed also runs on one process)."""
    if cfg.impl.distributed == "deepspeed":
        return DeepSpeedStrategy(cfg, model, runtime, context)
    return TorchStrategy(cfg, model, runtime, context)
