"""What an objective hands to the engine."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Microbatch:
    """One microbatch on its way into the model.

    ``model_kwargs`` carries objective-specific forward arguments (e.g. an attention
    pattern); ``kind`` names the loss it produces so the engine can log each separately;
    ``mask_rate`` is the fraction of maskable tokens actually selected (masked kinds only).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    example_ids: torch.Tensor
    kind: str = "mlm"
    loss_weight: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mask_rate: float | None = None


class Objective(Protocol):
    def microbatch(self, rows: dict[str, torch.Tensor], progress: float, index: int,
                   stream: int = 0) -> Microbatch:
        """Build microbatch number ``index`` of data stream ``stream`` at budget ``progress``.

        ``rows["keys"]`` (when present) identifies each row's draw; random choices are keyed
        by (seed, stream, key), so a row's microbatch never depends on its neighbours.
        """
        ...

    def schedule_key(self, progress: float) -> Hashable:
        """Everything of ``progress`` that changes a microbatch (equal keys: equal output)."""
        ...

    def log_values(self, progress: float) -> dict[str, float]:
        """Schedule values worth logging at ``progress`` (e.g. the masking rate)."""
        ...
