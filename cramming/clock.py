"""Budget clocks: how much of the run's budget is spent, as progress in [0, 1].

Every schedule is a function of ``clock.progress()``, whichever clock it is. A clock is
charged after each microbatch (the unit of work) and after each optimizer step; its
state is saved in checkpoints so a resumed run continues the same clock. Other clocks
(e.g. reference system time, :mod:`rst`) subclass :class:`Clock`; which clock counts a
run's ``budget_kind`` is chosen in :mod:`cramming.budget`.

A leaf module: it imports nothing of the project, so any package may build on it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Work:
    """What one microbatch cost: fed to :meth:`BudgetClock.charge_microbatch`."""

    sequences: int
    tokens: int
    kind: str = "train"  # train: forward+backward; forward: scoring-only pass; hessian
    active_layers: int | None = None
    replicas: int = 1  # data-parallel ranks doing the same work in lockstep


class BudgetClock(Protocol):
    total: float

    def start(self) -> None: ...
    def charge_microbatch(self, work: Work) -> None: ...
    def charge_step(self) -> None: ...
    def spent(self) -> float: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Clock(ABC):
    """Base of the clocks: progress and exhaustion from ``spent`` and ``total``."""

    unit = ""
    total: float
    # Whether the budget can run out in the middle of an optimizer step (time passes while
    # microbatches run); clocks that count work only move when work is charged.
    may_stop_mid_step = False

    @abstractmethod
    def spent(self) -> float:
        """Budget spent so far, in ``unit`` (each clock counts its own)."""

    def progress(self) -> float:
        """Fraction of the budget spent, capped at 1."""
        return min(self.spent() / self.total, 1.0)

    def exhausted(self) -> bool:
        """Whether the whole budget is spent."""
        return self.spent() >= self.total

    def remaining_text(self) -> str:
        """What is left, for logs: e.g. ``0.5 h left``."""
        return f"{max(self.total - self.spent(), 0):.4g} {self.unit} left"


class WallClock(Clock):
    """Wall-clock hours; time before a crash counts, so resume continues the budget."""

    unit = "h"
    may_stop_mid_step = True

    def __init__(self, hours: float):
        self.total = hours
        self._previous_seconds = 0.0
        self._started_at: float | None = None

    def start(self) -> None:
        self._started_at = time.perf_counter()

    def charge_microbatch(self, work: Work) -> None:
        pass

    def charge_step(self) -> None:
        pass

    def spent(self) -> float:
        running = time.perf_counter() - self._started_at if self._started_at is not None else 0.0
        return (self._previous_seconds + running) / 3600.0

    def state_dict(self) -> dict:
        return {"seconds": self.spent() * 3600.0}

    def load_state_dict(self, state: dict) -> None:
        self._previous_seconds = float(state["seconds"])
        if self._started_at is not None:
            self._started_at = time.perf_counter()


class CounterClock(Clock):
    """Counts optimizer steps or training tokens."""

    def __init__(self, total: float, unit: str):
        self.total = total
        self.unit = unit
        self.count = 0.0

    def start(self) -> None:
        pass

    def charge_microbatch(self, work: Work) -> None:
        if self.unit == "tokens" and work.kind == "train":
            self.count += work.tokens * work.replicas

    def charge_step(self) -> None:
        if self.unit == "steps":
            self.count += 1

    def spent(self) -> float:
        return self.count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = float(state["count"])


def active_layers(model: nn.Module) -> int | None:
    """Layers the model's last forward pass ran, when its ``layers`` report it.

    Depth-changing methods (layer dropping, stacking) install a layer list with a
    ``last_active`` count; a plain model reports None (= all layers).
    """
    return getattr(getattr(model, "layers", None), "last_active", None)

