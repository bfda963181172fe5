"""Sophia-G (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer").

Per parameter, with gradient g, momentum m, Hessian-diagonal EMA h, lr eta, decay lambda::

    m = beta1 * m + (1 - beta1) * g                      (every step)
    p = p * (1 - eta * lambda)
    p = p - eta * sign(m) * min(|m| / (rho * h + eps), 1) (element-wise clipped update)
    h = beta2 * h + (1 - beta2) * h_hat                  (every k steps, update_hessian)

``h_hat = B * g_hat * g_hat`` is the Gauss-Newton-Bartlett estimate: ``g_hat`` is the
gradient of the mean cross-entropy against labels *sampled from the model's own output
distribution* over the estimator batch. Producing ``g_hat`` (extra forward+backward passes)
is the job of :class:`efficient_training.sophia_hessian.SophiaHessianHook`; this class only
keeps the state.

``B`` is ``hessian_scale`` when set, multiplied in at update time as NTNG does with its
fixed ``bs = 196608`` (= 128 tokens x 1536 sequences; JeanKaddour/NoTrainNoGain,
bert/cramming/backend/optimizers/sophiag.py and config/train/optim/sophiag.yaml). Without
it ``B`` is the number of predicted positions of each estimate, folded into ``h_hat``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cramming.backend.optim.closure import evaluate_closure


class SophiaG(torch.optim.Optimizer):
    """Clipped diagonal-Newton optimizer with a Hessian estimate refreshed every k steps."""

    def __init__(self, params: Iterable, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.965, 0.99), rho: float = 0.04,
                 eps: float = 1e-12, weight_decay: float = 0.2,
                 hessian_scale: float | None = None):
        if lr <= 0 or rho <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Sophia settings lr={lr}, betas={betas}, rho={rho}")
        if hessian_scale is not None and hessian_scale <= 0:
            raise ValueError(f"invalid Sophia hessian_scale={hessian_scale}: use > 0 or None")
        self.hessian_scale = hessian_scale
        super().__init__(params, dict(lr=lr, betas=tuple(betas), rho=rho, eps=eps,
                                      weight_decay=weight_decay))

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update_hessian(self, num_predictions: int) -> None:
        """Fold ``grad**2`` (grads of the mean sampled-label loss) into h, times
        ``num_predictions`` when no fixed ``hessian_scale`` is set."""
        weight = num_predictions if self.hessian_scale is None else 1.0
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                hessian = self._state(p)["hessian"]
                hessian.mul_(beta2).addcmul_(p.grad, p.grad, value=(1 - beta2) * weight)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One clipped Sophia update of every parameter that has a gradient."""
        loss = evaluate_closure(closure)
        scale = 1.0 if self.hessian_scale is None else self.hessian_scale
        for group in self.param_groups:
            lr, beta1, rho = group["lr"], group["betas"][0], group["rho"] * scale
            eps, decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m = state["exp_avg"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                if decay:
                    p.mul_(1 - lr * decay)
                ratio = (m.abs() / (rho * state["hessian"] + eps)).clamp_(max=1.0)
                p.addcmul_(m.sign(), ratio, value=-lr)
        return loss
