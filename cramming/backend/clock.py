"""Budget clocks: how much of the run's budget is spent, as progress in [0, 1].

Every schedule is a function of ``clock.progress()``, whichever clock it is. A clock is
charged after each microbatch (the unit of work) and after each optimizer step; its
state is saved in checkpoints so a resumed run continues the same clock. Other clocks
(e.g. reference system time) implement the same small interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cramming.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from cramming.config.schema import PretrainConfig


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


class _Clock:
    """Shared bookkeeping: progress and exhaustion from ``spent`` and ``total``."""

    unit = ""
    total: float

    def progress(self) -> float:
        return min(self.spent() / self.total, 1.0)

    def exhausted(self) -> bool:
        return self.spent() >= self.total

    def remaining_text(self) -> str:
        return f"{max(self.total - self.spent(), 0):.4g} {self.unit} left"


class WallClock(_Clock):
    """Wall-clock hours; time before a crash counts, so resume continues the budget."""

    unit = "h"

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


class CounterClock(_Clock):
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


def build_clock(kind: str, budget: float, cfg: PretrainConfig | None = None,
                model: nn.Module | None = None) -> _Clock:
    """Clock for ``budget_kind`` (hours | steps | tokens | rst).

    ``rst`` needs ``cfg`` (arch, sequence length, microbatch, optimizer, ``cfg.rst``) and
    reads the vocabulary size from ``model`` to find its table (see :mod:`rst`).
    """
    if budget <= 0:
        raise ConfigError(f"budget={budget} must be > 0 ({kind}).")
    if kind == "hours":
        return WallClock(budget)
    if kind in ("steps", "tokens"):
        return CounterClock(budget, kind)
    if kind == "rst":
        if cfg is None:
            raise ConfigError("budget_kind=rst needs the run's config to find its RST table.")
        from rst import RSTClock

        return RSTClock.from_config(cfg, getattr(model, "vocab_size", None))
    raise ConfigError(f"Unknown budget_kind={kind!r}. Allowed values: hours, steps, tokens, rst")
