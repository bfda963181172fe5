"""Selective backprop (Jiang et al. 2019, "Accelerating Deep Learning by Focusing on the
Biggest Losers").

Candidates are scored by a forward pass; each is selected for backprop with probability
``P = percentile(loss) ** beta``, the percentile taken among the last ``history`` scored
losses (including the current ones). Selected rows are pooled until a full microbatch is
ready; that microbatch is what the engine trains on. Scoring passes are charged to the
budget clock as forward-only work.

On N processes the candidates, history, draws and pool are global (every rank's rows, see
:mod:`.common`) and the same on every rank; each rank scores and trains on its share, so
the run equals one process with an N times larger microbatch.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import torch

from cramming.backend.hooks import TrainingHook
from cramming.config.schema import SelectiveBackpropConfig
from cramming.objectives import Microbatch
from efficient_training.common import (
    ExtraBatches,
    RowPool,
    gather_rows,
    rank_share,
    score_globally,
    take_rows,
)

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext


def selection_probabilities(losses: torch.Tensor, history: torch.Tensor,
                            beta: float) -> torch.Tensor:
    """``(fraction of history <= loss) ** beta`` for each loss (Jiang et al., Alg. 1)."""
    if history.numel() == 0:
        return torch.ones_like(losses)
    percentile = (history[None, :] <= losses[:, None]).float().mean(dim=1)
    return percentile.pow(beta)


class SelectiveBackpropHook(TrainingHook):
    """Replaces each training microbatch by one built from selected high-loss candidates."""

    name = "selective_backprop"

    def __init__(self, cfg: SelectiveBackpropConfig, microbatch_size: int, seed: int):
        self.cfg, self.microbatch_size = cfg, microbatch_size
        self.history: deque[float] = deque(maxlen=cfg.history)
        self.generator = torch.Generator().manual_seed(seed + 104729)
        self.extra = ExtraBatches(self.name)
        self.pool = RowPool()
        self.scored = self.selected = 0
        self._progress = 0.0

    def before_step(self, trainer: HookContext) -> None:
        self._progress = trainer.progress

    def _select(self, losses: torch.Tensor) -> torch.Tensor:
        self.history.extend(losses.tolist())
        probs = selection_probabilities(losses, torch.tensor(list(self.history)), self.cfg.beta)
        draws = torch.rand(len(losses), generator=self.generator)
        return (draws < probs).nonzero().squeeze(1)

    def select_batch(self, trainer: HookContext, batch: Microbatch) -> Microbatch:
        size = self.microbatch_size * trainer.context.world_size  # global microbatch
        candidates = batch  # this rank's share
        while len(self.pool) < size:
            rows = gather_rows(trainer, candidates)
            chosen = self._select(score_globally(trainer, rows))
            self.scored += rows.input_ids.shape[0]
            self.selected += len(chosen)
            self.pool.add(take_rows(rows, chosen))
            candidates = self.extra.draw(trainer, self.microbatch_size, self._progress)
        return rank_share(trainer, self.pool.take(size))

    def after_step(self, trainer: HookContext, record: dict) -> None:
        record["selected_fraction"] = self.selected / max(self.scored, 1)

    def state_dict(self) -> dict:
        """Plain values and tensors only (the pool's microbatches as dicts)."""
        return {"history": list(self.history), "generator": self.generator.get_state(),
                "pool": self.pool.state_dict(),
                "scored": self.scored, "selected": self.selected}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.cfg.history)
        self.generator.set_state(state["generator"])
        self.pool.load_state_dict(state["pool"])
        self.scored, self.selected = int(state["scored"]), int(state["selected"])
