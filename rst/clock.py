"""The RST budget clock: spends reference seconds per unit of work done."""

from __future__ import annotations

import time

from cramming.budget import BudgetKind, register_budget_kind
from cramming.clock import Clock, Work
from cramming.config.schema import PretrainConfig
from rst.table import RSTTable, find_table

# Work.kind -> table row: a Hessian-estimator pass is a forward+backward pass.
_ROW = {"train": "train", "forward": "forward", "hessian": "train"}


class RSTClock(Clock):
    """Budget in reference hours; ``charged`` keeps the seconds per kind of work.

    ``Work.active_layers=None`` means the full depth. ``rst.charge_*`` switches make scoring
    passes, Hessian passes or optimizer steps free (the paper's ablations).
    """

    unit = "RST h"

    def __init__(self, hours: float, table: RSTTable, cfg: PretrainConfig):
        self.total, self.table = hours, table
        self.num_layers, self.microbatch_size = cfg.arch.num_layers, cfg.impl.microbatch_size
        self.optimizer = cfg.train.optim.name
        rst = cfg.rst
        self.free = {"forward": not rst.charge_scoring_passes,
                     "hessian": not rst.charge_hessian_passes,
                     "step": not rst.charge_optimizer_step}
        self.charged: dict[str, float] = {"train": 0.0, "forward": 0.0, "hessian": 0.0,
                                          "step": 0.0}
        self.sequences: dict[str, int] = {}  # "kind/active layers" -> sequences charged
        self.steps = 0
        self._wall_before = 0.0
        self._started_at: float | None = None

    @classmethod
    def from_config(cls, cfg: PretrainConfig, vocab_size: int | None = None) -> RSTClock:
        """Clock for ``cfg`` with the matching table (ConfigError if there is none)."""
        table = find_table(cfg.rst.device, cfg.arch, cfg.data.seq_length,
                           cfg.impl.microbatch_size, cfg.rst.tables_dir, cfg.rst.table,
                           vocab_size)
        return cls(cfg.budget, table, cfg)

    def work_seconds(self, work: Work) -> float:
        """Reference seconds of ``work`` (0 when that kind is configured free)."""
        if work.kind not in _ROW:
            raise ValueError(f"RST cannot charge work of kind {work.kind!r}")
        if self.free.get(work.kind, False):
            return 0.0
        layers = work.active_layers if work.active_layers is not None else self.num_layers
        if layers == 0:
            return 0.0
        full = self.table.microbatch_seconds(_ROW[work.kind], layers, self.microbatch_size)
        return full * work.sequences * work.replicas / self.microbatch_size

    def start(self) -> None:
        self._started_at = time.perf_counter()

    def charge_microbatch(self, work: Work) -> None:
        self.charged[work.kind] += self.work_seconds(work)
        layers = work.active_layers if work.active_layers is not None else self.num_layers
        key = f"{work.kind}/{layers}"
        self.sequences[key] = self.sequences.get(key, 0) + work.sequences * work.replicas

    def charge_step(self) -> None:
        self.steps += 1
        if not self.free["step"]:
            self.charged["step"] += self.table.step_seconds(self.optimizer)

    def seconds(self) -> float:
        """Reference seconds spent so far."""
        return sum(self.charged.values())

    def spent(self) -> float:
        return self.seconds() / 3600.0

    def wall_seconds(self) -> float:
        """Wall-clock seconds of training so far (over resumes), for comparison."""
        running = time.perf_counter() - self._started_at if self._started_at is not None else 0
        return self._wall_before + running

    def state_dict(self) -> dict:
        return {"charged": dict(self.charged), "wall_seconds": self.wall_seconds(),
                "table": self.table.identity, "sequences": dict(self.sequences),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if state.get("table") != self.table.identity:
            raise ValueError(f"the checkpoint's RST clock used table {state.get('table')}, "
                             f"this run uses {self.table.identity}")
        self.charged = {k: float(v) for k, v in state["charged"].items()}
        self.sequences = {k: int(v) for k, v in state["sequences"].items()}
        self.steps = int(state["steps"])
        self._wall_before = float(state["wall_seconds"])
        if self._started_at is not None:
            self._started_at = time.perf_counter()


def _check(cfg: PretrainConfig) -> None:
    find_table(cfg.rst.device, cfg.arch, cfg.data.seq_length, cfg.impl.microbatch_size,
               cfg.rst.tables_dir, cfg.rst.table)


def _build(cfg: PretrainConfig, model, budget: float) -> RSTClock:
    return RSTClock.from_config(cfg, getattr(model, "vocab_size", None))


register_budget_kind("rst", BudgetKind(build=_build, check=_check))
