"""RHO-Loss (Mindermann et al. 2022, "Prioritized Training on Points that are Learnable,
Worth Learning, and Not Yet Learnt"), selecting as NTNG does.

Each selection scores a mega-batch of ``mega_batch_size`` rows (default
``train.batch_size / keep_fraction``; NTNG: 15360 for a batch of 1536) by a forward pass and
keeps the ``train.batch_size`` rows with the largest reducible loss ``training loss -
irreducible loss``; those rows are then trained on a microbatch at a time, so one selection
feeds one optimizer step. The mega-batch starts with the training microbatches the engine
handed over since the last selection and is filled up from the hook's own data stream. The
irreducible losses come from a model trained on the held-out split (``method=il_model``) and
are looked up by each row's stable ``example_id`` (never by position, which shuffling
changes). :mod:`efficient_training.extract_il_losses` writes the file.

On N processes the mega-batch, the selection and the pool are global (every rank's rows, see
:mod:`.common`) and the same on every rank; each rank scores and trains on its share, so
the run equals one process with an N times larger microbatch (the mega-batch must then be
a multiple of N).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cramming.backend.hooks import TrainingHook
from cramming.config.schema import RhoLossConfig
from cramming.errors import ConfigError, DataError
from cramming.objectives import Microbatch
from efficient_training.common import (
    ExtraBatches,
    RowPool,
    concat,
    gather_rows,
    rank_share,
    score_globally,
    take_rows,
)

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext

IL_FORMAT = "cramming-il-losses/1"


class IrreducibleLosses:
    """Irreducible loss per example id (sorted ids, binary search)."""

    def __init__(self, example_ids: np.ndarray, losses: np.ndarray, fingerprint: str = ""):
        order = np.argsort(example_ids, kind="stable")
        self.ids = np.asarray(example_ids, dtype=np.int64)[order]
        self.losses = np.asarray(losses, dtype=np.float32)[order]
        self.fingerprint = fingerprint
        if len(self.ids) and np.any(self.ids[1:] == self.ids[:-1]):
            raise DataError("Irreducible-loss file lists an example id twice.")

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (ids, losses, data fingerprint)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, format=np.array(IL_FORMAT), example_ids=self.ids,
                     losses=self.losses, fingerprint=np.array(self.fingerprint))
        return path

    @classmethod
    def load(cls, path: str | Path) -> IrreducibleLosses:
        """Read a file written by :meth:`save`; ConfigError if it is missing or foreign."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"method.rho_loss.il_losses={path} does not exist; create it with "
                              f"`python -m efficient_training.extract_il_losses`.")
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != IL_FORMAT:
                    raise KeyError("format")
                return cls(data["example_ids"], data["losses"], str(data["fingerprint"]))
        except (KeyError, ValueError, OSError) as error:
            raise ConfigError(f"{path} is not an irreducible-loss file ({error}).") from None

    def covers(self, example_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``example_ids`` have an irreducible loss."""
        pos = np.searchsorted(self.ids, example_ids).clip(max=max(len(self.ids) - 1, 0))
        return (len(self.ids) > 0) & (self.ids[pos] == example_ids)

    def lookup(self, example_ids: torch.Tensor) -> torch.Tensor:
        """Irreducible losses of ``example_ids`` (DataError on an unknown id)."""
        ids = example_ids.numpy()
        known = self.covers(ids)
        if not known.all():
            raise DataError(f"No irreducible loss for example ids {ids[~known][:5].tolist()}: "
                            f"extract the losses from the same data settings.")
        return torch.from_numpy(self.losses[np.searchsorted(self.ids, ids)])


class RhoLossHook(TrainingHook):
    """Trains on the top ``batch_size`` rows of each mega-batch by reducible loss."""

    name = "rho_loss"

    def __init__(self, cfg: RhoLossConfig, il: IrreducibleLosses, microbatch_size: int,
                 batch_size: int):
        self.cfg, self.il, self.microbatch_size = cfg, il, microbatch_size
        self.selected_rows = batch_size
        self.mega_batch = mega_batch_size(cfg, batch_size)
        self.extra = ExtraBatches(self.name)
        self.pending, self.pool = RowPool(), RowPool()
        self._progress = 0.0
        self.last_reducible = float("nan")

    def before_step(self, trainer: HookContext) -> None:
        self._progress = trainer.progress

    def select_batch(self, trainer: HookContext, batch: Microbatch) -> Microbatch:
        world = trainer.context.world_size
        self.pending.add(gather_rows(trainer, batch))  # global rows: every rank checkpoints them
        if len(self.pool) < self.microbatch_size * world:
            self._select(trainer, world)
        return rank_share(trainer, self.pool.take(self.microbatch_size * world))

    def _select(self, trainer: HookContext, world: int) -> None:
        parts = self.pending.drain()
        rows = sum(part.input_ids.shape[0] for part in parts)
        while rows < self.mega_batch:
            size = min(self.microbatch_size * world, self.mega_batch - rows)
            parts.append(gather_rows(trainer,
                                     self.extra.draw(trainer, size // world, self._progress)))
            rows += size
        reducible = torch.cat([score_globally(trainer, part) - self.il.lookup(part.example_ids)
                               for part in parts])
        top = torch.topk(reducible, min(self.selected_rows, rows)).indices.sort().values
        self.last_reducible = float(reducible[top].mean())
        self.pool.add(take_rows(concat(parts), top))

    def after_step(self, trainer: HookContext, record: dict) -> None:
        record["reducible_loss"] = self.last_reducible

    def state_dict(self) -> dict:
        return {"pending": self.pending.state_dict(), "pool": self.pool.state_dict(),
                "last_reducible": self.last_reducible}

    def load_state_dict(self, state: dict) -> None:
        self.pending.load_state_dict(state["pending"])
        self.pool.load_state_dict(state["pool"])
        self.last_reducible = float(state["last_reducible"])


def mega_batch_size(cfg: RhoLossConfig, batch_size: int) -> int:
    """Rows scored per selection: ``cfg.mega_batch_size`` or ``batch_size / keep_fraction``."""
    if cfg.mega_batch_size is not None:
        return cfg.mega_batch_size
    return math.ceil(batch_size / cfg.keep_fraction - 1e-9)
