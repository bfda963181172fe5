"""How a step's gradients are computed, reduced and applied: the engine's parallel backend.

:class:`TorchStrategy` covers one process, DDP and FSDP2; :class:`DeepSpeedStrategy`
(:mod:`cramming.backend.deepspeed_engine`) wraps the DeepSpeed engine. The trainer only
talks to this interface, so schedules, budgets, hooks and checkpoints are shared by all.
"""

from __future__ import annotations

import abc
import contextlib
from pathlib import Path

import torch
from torch import nn

from cramming.backend.checkpoint import MODEL_WEIGHTS, load_weights, read_weights
from cramming.backend.distributed import (
    DistributedContext,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
    no_sync_unless,
    shard_model,
)
from cramming.backend.optimizers import build_optimizer
from cramming.backend.runtime import Runtime, compile_model
from cramming.config.checks import skips_layers
from cramming.config.schema import PretrainConfig
from cramming.errors import CheckpointError


class Strategy(abc.ABC):
    """The interface the trainer drives, once per microbatch and once per step."""

    model: nn.Module  # the bare model (hooks and the budget clock look at its layers)
    forward_model: nn.Module  # what the trainer calls forward on (wrapped, compiled)
    optimizer: torch.optim.Optimizer
    shards_parameters: bool = False  # parameters live in shards: gather to export
    can_stop_mid_step: bool = True  # a step may end after fewer microbatches than planned
    writes_shards: bool = False  # every rank writes files of its own into a checkpoint

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @abc.abstractmethod
    def zero_grad(self) -> None:
        """Clear the gradients before a step's first microbatch."""

    def microbatch_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Wraps forward and backward of one microbatch (``last`` in its step or not)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one microbatch's (already accumulation-scaled) loss."""

    @abc.abstractmethod
    def rescale_gradients(self, factor: float) -> None:
        """Scale the accumulated gradients (a step that ended early, see can_stop_mid_step)."""

    @abc.abstractmethod
    def apply_gradients(self, clip_norm: float | None) -> torch.Tensor | float | None:
        """Clip (when ``clip_norm``) and take the optimizer step; returns the grad norm
        (a device tensor where possible: reading it would wait for the device)."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Optimizer (and loss-scaler) state for a checkpoint; collective when sharded."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""

    @abc.abstractmethod
    def model_weights(self) -> dict[str, torch.Tensor]:
        """Consolidated weights, the same on every backend (collective when sharded)."""

    @abc.abstractmethod
    def load_weights(self, folder: Path, saved_world_size: int) -> None:
        """Weights (and backend-held state) from checkpoint ``folder``, written by
        ``saved_world_size`` processes, into the (possibly sharded) model."""

    def save_shards(self, folder: Path) -> None:
        """Collective: every rank writes its own files into ``folder`` (when writes_shards)."""
        return None  # backends without per-rank files keep everything in the state dict


class TorchStrategy(Strategy):
    """Plain PyTorch: one process, DDP (replicated) or FSDP2 (``fully_shard``)."""

    def __init__(self, cfg: PretrainConfig, model: nn.Module, runtime: Runtime,
                 context: DistributedContext):
        self.model = model.to(runtime.device)
        self.shards_parameters = context.enabled and cfg.impl.distributed == "fsdp"
        if self.shards_parameters:
            shard_model(self.model)
        self.forward_model = compile_model(self.model, cfg.impl, self.shards_parameters)
        if context.enabled and not self.shards_parameters:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            # Stacking and layer dropping leave layers out of a pass (the same ones on every
            # rank): DDP must look for them each step. All layers exist from the start, so
            # growth needs no rebuild of the wrapper.
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=device_ids,
                find_unused_parameters=skips_layers(cfg))
        self.optimizer = build_optimizer(self.model, cfg.train.optim, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type,
                                           enabled=runtime.needs_grad_scaler)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def microbatch_context(self, last: bool) -> contextlib.AbstractContextManager:
        return no_sync_unless(last, self.forward_model)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def rescale_gradients(self, factor: float) -> None:
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def apply_gradients(self, clip_norm: float | None) -> torch.Tensor | None:
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if clip_norm:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip_norm).detach()
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
                grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return grad_norm

    def state_dict(self) -> dict:
        return {"optimizer": full_optimizer_state(self.model, self.optimizer),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("optimizer") is None:
            raise CheckpointError("This checkpoint was written by the DeepSpeed backend (its "
                                  "optimizer state is in DeepSpeed's files): resume it with "
                                  "impl.distributed=deepspeed.")
        load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def model_weights(self) -> dict[str, torch.Tensor]:
        return full_model_state(self.model, self.shards_parameters)

    def load_weights(self, folder: Path, saved_world_size: int) -> None:
        if self.shards_parameters:
            load_full_model_state(self.model, read_weights(folder / MODEL_WEIGHTS), True)
        else:
            load_weights(self.model, folder / MODEL_WEIGHTS)
