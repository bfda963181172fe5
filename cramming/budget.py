"""Budget kinds: which clock counts a run's ``budget_kind``, and whether that kind can run.

Hours, steps and tokens are counted by the clocks of :mod:`cramming.clock`. Reference
system time is counted by :mod:`rst`, which builds on :mod:`cramming.clock`; this module
is the one place that reaches it, and only when a run asks for ``budget_kind=rst`` (the
imports are inside the functions, so importing cramming never imports rst).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cramming.clock import Clock, CounterClock, WallClock
from cramming.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from cramming.config.schema import PretrainConfig


def check_budget(cfg: PretrainConfig) -> None:
    """Fail at config load (ConfigError) when ``cfg.budget_kind`` cannot run.

    ``rst`` needs a timing table for the run's device, arch, sequence length and
    microbatch (see :func:`rst.table.find_table`).
    """
    if cfg.budget_kind == "rst":
        from rst.table import find_table

        find_table(cfg.rst.device, cfg.arch, cfg.data.seq_length, cfg.impl.microbatch_size,
                   cfg.rst.tables_dir, cfg.rst.table)


def build_clock(kind: str, budget: float, cfg: PretrainConfig | None = None,
                model: nn.Module | None = None) -> Clock:
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
        from rst.clock import RSTClock

        return RSTClock.from_config(cfg, getattr(model, "vocab_size", None))
    raise ConfigError(f"Unknown budget_kind={kind!r}. Allowed values: hours, steps, tokens, rst")
