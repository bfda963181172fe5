"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning").

Adam's bias-corrected direction plus decoupled weight decay, ``r = m_hat / (sqrt(v_hat) + eps)
+ lambda * p``, scaled per tensor by the trust ratio ``||p|| / ||r||`` (1 when either is 0).
As GPT-BERT's LAMB (ltgoslo/gpt-bert, pretraining/lamb.py), tensors without weight decay
(norms, biases: lambda = 0) take the plain Adam step, trust ratio 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cramming.backend.optim.closure import evaluate_closure


class Lamb(torch.optim.Optimizer):
    """Layer-wise adaptive Adam; parameters without a gradient are left untouched."""

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid LAMB settings lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LAMB update of every parameter that has a gradient."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + eps)
                if decay:
                    update.add_(p, alpha=decay)
                    weight_norm, update_norm = p.norm(), update.norm()
                    update.mul_(torch.where((weight_norm > 0) & (update_norm > 0),
                                            weight_norm / update_norm,
                                            torch.ones_like(weight_norm)))
                p.add_(update, alpha=-lr)
        return loss
