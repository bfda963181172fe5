"""Logs reference system time next to wall-clock time (budget_kind=rst)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cramming.backend.hooks import TrainingHook

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext


class RSTLogHook(TrainingHook):
    """Adds ``rst_seconds``, ``wall_seconds``, the per-kind split and the speed ratio.

    ``speed_vs_reference`` = RST / wall time: above 1 this implementation/device is faster
    than the reference system, below 1 slower.
    """

    name = "rst_log"

    def after_step(self, trainer: HookContext, record: dict) -> None:
        clock = trainer.clock
        rst, wall = clock.seconds(), clock.wall_seconds()
        record["rst_seconds"], record["wall_seconds"] = rst, wall
        for kind, seconds in clock.charged.items():
            record[f"rst_{kind}_seconds"] = seconds
        record["speed_vs_reference"] = rst / wall if wall > 0 else float("nan")
