"""Budget kinds: which clock counts a run's ``budget_kind``, and whether that kind can run.

Hours, steps and tokens are counted by the clocks of :mod:`cramming.clock`. Other kinds are
plugins that register here: the reference-system-time clock of :mod:`rst` registers
``rst`` when it is imported, and installed packages announce theirs through the
``cramming.budget_kinds`` entry point (``pyproject.toml``), so cramming finds them without
importing them by name: plugins depend on cramming, never the reverse.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cramming.clock import Clock, CounterClock, WallClock
from cramming.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from cramming.config.schema import PretrainConfig

ENTRY_POINT_GROUP = "cramming.budget_kinds"
BUILTIN_KINDS = ("hours", "steps", "tokens")


@dataclass(frozen=True)
class BudgetKind:
    """A plugin budget kind: ``build(cfg, model, budget)`` makes its clock; ``check(cfg)``
    raises ConfigError at config load when a run of this kind cannot start."""

    build: Callable[[PretrainConfig, nn.Module | None, float], Clock]
    check: Callable[[PretrainConfig], None] | None = None


_PLUGINS: dict[str, BudgetKind] = {}


def register_budget_kind(name: str, kind: BudgetKind) -> None:
    """Make ``budget_kind=name`` available (called by the plugin's module on import)."""
    if name in BUILTIN_KINDS:
        raise ValueError(f"budget kind {name!r} is built in")
    _PLUGINS[name] = kind


def _plugin(name: str) -> BudgetKind | None:
    if name not in _PLUGINS:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
            entry.load()  # the module registers its kind on import
    return _PLUGINS.get(name)


def budget_kinds() -> list[str]:
    """Every budget kind this installation offers."""
    announced = {entry.name for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return [*BUILTIN_KINDS, *sorted(set(_PLUGINS) | announced)]


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"Unknown budget_kind={name!r}. Allowed values: "
                       f"{', '.join(budget_kinds())} (plugin kinds come from installed packages: "
                       f"`pip install -e .` registers rst).")


def check_budget(cfg: PretrainConfig) -> None:
    """Fail at config load (ConfigError) when ``cfg.budget_kind`` cannot run."""
    if cfg.budget_kind in BUILTIN_KINDS:
        return
    kind = _plugin(cfg.budget_kind)
    if kind is None:
        raise _unknown(cfg.budget_kind)
    if kind.check is not None:
        kind.check(cfg)


def build_clock(kind: str, budget: float, cfg: PretrainConfig | None = None,
                model: nn.Module | None = None) -> Clock:
    """Clock for ``budget_kind`` (hours | steps | tokens | a plugin kind such as rst).

    Plugin kinds need ``cfg`` (rst: arch, sequence length, microbatch, optimizer,
    ``cfg.rst``) and may read the model (rst: its vocabulary size).
    """
    if budget <= 0:
        raise ConfigError(f"budget={budget} must be > 0 ({kind}).")
    if kind == "hours":
        return WallClock(budget)
    if kind in ("steps", "tokens"):
        return CounterClock(budget, kind)
    plugin = _plugin(kind)
    if plugin is None:
        raise _unknown(kind)
    if cfg is None:
        raise ConfigError(f"budget_kind={kind} needs the run's config to build its clock.")
    return plugin.build(cfg, model, budget)
