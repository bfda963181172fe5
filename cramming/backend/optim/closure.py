"""The closure convention every torch optimizer's ``step`` shares."""

from __future__ import annotations

from collections.abc import Callable

import torch


def evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    """Re-evaluate the loss with gradients enabled (inside ``step``'s no_grad), if given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
