"""What an objective hands to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Microbatch:
    """One microbatch on its way into the model.

    ``model_kwargs`` carries objective-specific forward arguments (e.g. an attention
    pattern); ``kind`` names the loss it produces so the engine can log each separately.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    example_ids: torch.Tensor
    kind: str = "mlm"
    loss_weight: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)


class Objective(Protocol):
    def microbatch(self, rows: dict[str, torch.Tensor], progress: float,
                   index: int) -> Microbatch:
        """Build microbatch number ``index`` (global, resumable) at budget ``progress``."""
        ...

    def log_values(self, progress: float) -> dict[str, float]:
        """Schedule values worth logging at ``progress`` (e.g. the masking rate)."""
        ...
