"""The RST budget clock: spends reference seconds per unit of work done.

A table times one microbatch of ``microbatch_size`` rows of ``seq_length`` tokens. Work is
charged by its tokens, so rows cut shorter by ``train.seq_length_schedule`` cost what their
tokens cost, not what as many full rows would; a length ``l`` below the table's ``L``
is charged the ratio of the analytic training FLOPs per token at ``l`` and at ``L``
(:mod:`cramming.architectures.flops`: attention is linear in the length per token, the
rest is not), which is exactly 1 at the table's own shape. A microbatch with every layer
dropped still pays for embedding, head and loss (:meth:`RSTTable.zero_layer_seconds`).
"""

from __future__ import annotations

import dataclasses
import time

from cramming.architectures.flops import training_flops_per_token
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
        self.arch, self.mask_prob = cfg.arch, cfg.train.mask_prob
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

    def _flops_per_token(self, layers: int, seq_length: int) -> float:
        arch = dataclasses.replace(self.arch, num_layers=layers)
        return training_flops_per_token(arch, self.table.vocab_size, seq_length, self.mask_prob)

    def length_factor(self, layers: int, seq_length: float) -> float:
        """Cost per token at ``seq_length`` relative to the table's length (1 there)."""
        full = self.table.seq_length
        if seq_length == full:
            return 1.0
        length = max(int(round(seq_length)), 1)
        return self._flops_per_token(layers, length) / self._flops_per_token(layers, full)

    def microbatch_seconds(self, kind: str, layers: int) -> float:
        """Reference seconds of one table-shaped microbatch (``microbatch_size`` full rows).

        With every layer dropped and a table that cannot extrapolate to 0 layers, the
        shallowest measured depth is scaled by the FLOPs of embedding and head alone.
        """
        row = _ROW[kind]
        if layers == 0 and self.table.zero_layer_seconds(row) is None:
            depth = self.table.shallowest_depth(row)
            full = self.table.seq_length
            return (self.table.microbatch_seconds(row, depth, self.microbatch_size)
                    * self._flops_per_token(0, full) / self._flops_per_token(depth, full))
        return self.table.microbatch_seconds(row, layers, self.microbatch_size)

    def work_seconds(self, work: Work) -> float:
        """Reference seconds of ``work`` (0 when that kind is configured free).

        Its tokens' share of a table-shaped microbatch, times :meth:`length_factor` at its
        rows' length (``tokens / sequences``).
        """
        if work.kind not in _ROW:
            raise ValueError(f"RST cannot charge work of kind {work.kind!r}")
        if self.free.get(work.kind, False) or work.tokens == 0:
            return 0.0
        layers = work.active_layers if work.active_layers is not None else self.num_layers
        share = work.tokens * work.replicas / (self.microbatch_size * self.table.seq_length)
        length = work.tokens / work.sequences if work.sequences else self.table.seq_length
        return self.microbatch_seconds(work.kind, layers) * share * self.length_factor(layers,
                                                                                       length)

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
