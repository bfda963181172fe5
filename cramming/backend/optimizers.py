"""Optimizer construction with weight-decay groups chosen by parameter type."""

from __future__ import annotations

import torch
from torch import nn

from cramming.backend.optim import Lamb, Lion, SophiaG
from cramming.config.schema import OptimConfig

NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; exempt norm parameters, biases and scalar scales.

    Decided by the owning module's type and the tensor's rank, never by name substrings,
    so a renamed layer cannot silently start decaying its LayerNorm gains.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = isinstance(module, NORM_TYPES) or param.ndim < 2
            (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """``cfg.name`` over :func:`parameter_groups` (AdamW/Adam fused where the device has it).

    Every optimizer gets the same decay groups, so norm gains are never decayed.
    """
    groups = parameter_groups(model, cfg.weight_decay)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "lion":
        return Lion(groups, lr=cfg.lr, betas=betas)
    if cfg.name == "sophiag":
        return SophiaG(groups, lr=cfg.lr, betas=betas, rho=cfg.rho, eps=cfg.eps,
                       hessian_scale=cfg.hessian_scale)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
    # Fused kernels exist for CUDA and (torch >= 2.4) CPU; other devices use the for-loop.
    fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
    kwargs = dict(lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fused or None)
    # "adam" is AdamW as in Cramming and NTNG (their optim/adam.yaml: type AdamW);
    # "adam_classic" is torch Adam, L2 decay in the gradient (NTNG's optim/adam_classic.yaml).
    if cfg.name in ("adamw", "adam"):
        return torch.optim.AdamW(groups, **kwargs)
    if cfg.name == "adam_classic":
        return torch.optim.Adam(groups, **kwargs)
    raise ValueError(f"unknown optimizer {cfg.name}")
