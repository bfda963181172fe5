"""Efficient-training methods that plug into the one engine through its hooks.

:func:`build_hooks` turns ``cfg.method`` (and ``train.optim.name=sophiag``,
``budget_kind=rst``) into :class:`~cramming.backend.hooks.TrainingHook` instances; the
training loop itself knows none of them. One small module per method:

* :mod:`.stacking` (progressive layer stacking), :mod:`.layer_drop` (progressive layer
  dropping), both through :mod:`.depth`;
* :mod:`.selective_backprop`, :mod:`.rho_loss` (batch selection, through :mod:`.common`);
* :mod:`.sophia_hessian` (Sophia-G's Hessian estimator passes);
* :mod:`.rst_log` (reference system time next to wall-clock time).
"""

from __future__ import annotations

import logging

import numpy as np
from torch import nn

from cramming.backend.hooks import TrainingHook
from cramming.config.checks import uses_training_method
from cramming.config.schema import PretrainConfig
from cramming.errors import ConfigError

log = logging.getLogger(__name__)


def build_hooks(cfg: PretrainConfig, model: nn.Module, prepared,
                world_size: int = 1) -> list[TrainingHook]:
    """The method hooks ``cfg`` asks for, in a fixed order (depth, selection, optimizer, log).

    ``method.train_on_held_out`` (RHO's irreducible-loss model) swaps ``prepared.train``
    and ``prepared.val`` in place, so the engine trains on the held-out split. On
    ``world_size`` processes (DDP) every method equals one process with a ``world_size``
    times larger microbatch.
    """
    method, micro = cfg.method, cfg.impl.microbatch_size
    if world_size > 1 and uses_training_method(cfg):
        _check_several_processes(cfg, world_size)
    hooks: list[TrainingHook] = []
    if method.train_on_held_out:
        if len(prepared.val) == 0:
            raise ConfigError("method=il_model trains on the held-out split, which is empty: "
                              "raise data.val_fraction.")
        prepared.train, prepared.val = prepared.val, prepared.train
        log.info("Irreducible-loss model: training on the %d held-out sequences",
                 len(prepared.train))
    if method.stacking.enabled:
        from efficient_training.stacking import StackingHook

        hooks.append(StackingHook(method.stacking, model))
    if method.layer_drop.enabled:
        from efficient_training.layer_drop import LayerDropHook

        hooks.append(LayerDropHook(method.layer_drop, model, cfg.seed))
    if method.selection == "selective_backprop":
        from efficient_training.selective_backprop import SelectiveBackpropHook

        hooks.append(SelectiveBackpropHook(method.selective_backprop, micro, cfg.seed))
    elif method.selection == "rho_loss":
        from efficient_training.rho_loss import IrreducibleLosses, RhoLossHook

        il = IrreducibleLosses.load(method.rho_loss.il_losses)
        if il.fingerprint and il.fingerprint != prepared.fingerprint:
            raise ConfigError(
                f"{method.rho_loss.il_losses} was extracted from data {il.fingerprint}, this "
                f"run uses {prepared.fingerprint}: extract from the same data settings.")
        missing = ~il.covers(np.asarray(prepared.train.example_ids))
        if missing.any():
            raise ConfigError(
                f"{method.rho_loss.il_losses} has no irreducible loss for {int(missing.sum())} "
                f"of {len(missing)} training examples; extract it for this corpus.")
        hooks.append(RhoLossHook(method.rho_loss, il, micro, cfg.train.batch_size))
    if cfg.train.optim.name == "sophiag":
        from efficient_training.sophia_hessian import SophiaHessianHook

        hooks.append(SophiaHessianHook(cfg.train.optim, micro, cfg.seed, world_size))
    if cfg.budget_kind == "rst":
        from efficient_training.rst_log import RSTLogHook

        hooks.append(RSTLogHook())
    return hooks


def _check_several_processes(cfg: PretrainConfig, world_size: int) -> None:
    """What the methods need on ``world_size`` processes: DDP, and global row counts that
    split evenly over the ranks."""
    if cfg.impl.distributed != "ddp":
        raise ConfigError(
            f"The efficient-training methods (method.*, train/optim=sophiag) change which layers "
            f"run or read gradients between steps; on several processes they run under "
            f"impl.distributed=ddp, not {cfg.impl.distributed}.")
    counts = {"train.optim.hessian_batch_size": cfg.train.optim.hessian_batch_size
              if cfg.train.optim.name == "sophiag" else None}
    if cfg.method.selection == "rho_loss":
        from efficient_training.rho_loss import mega_batch_size

        counts["the RHO-Loss mega-batch"] = mega_batch_size(cfg.method.rho_loss,
                                                            cfg.train.batch_size)
    for name, rows in counts.items():
        if rows is not None and rows % world_size:
            raise ConfigError(f"{name} ({rows} rows) is split over the {world_size} processes: "
                              f"make it a multiple of {world_size}.")
