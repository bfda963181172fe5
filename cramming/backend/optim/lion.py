"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

Per parameter, with gradient g, momentum m, lr eta and decoupled weight decay lambda::

    c = beta1 * m + (1 - beta1) * g
    p = p - eta * (sign(c) + lambda * p)
    m = beta2 * m + (1 - beta2) * g
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cramming.backend.optim.closure import evaluate_closure


class Lion(torch.optim.Optimizer):
    """Sign-momentum optimizer; parameters without a gradient are left untouched."""

    def __init__(self, params: Iterable, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Lion settings lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Lion update of every parameter that has a gradient."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                direction = (m * beta1).add_(p.grad, alpha=1 - beta1).sign_()
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(direction, alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss
