"""GPT-BERT's hybrid objective: a fixed share of MNTP microbatches, the rest causal LM.

The MNTP share is ``numerator / denominator`` of the training signal. Two ways to mix,
with the same expected gradient ``r * E[g_mntp] + (1 - r) * E[g_clm]``:

* **one process**: within every group of ``denominator`` consecutive microbatches the first
  ``numerator`` are MNTP and the rest CLM. The batch-size schedule grows in whole groups
  (``schedules.batch_size_at``), so every optimizer step holds the exact ratio, in a
  deterministic order; each microbatch's loss has the same weight.
* **N processes** (``world_size > 1``): ranks ``0 .. N*r - 1`` train MNTP only and the others
  CLM only (as GPT-BERT does); DDP's gradient average then weights the two by ``r``. This
  needs ``N * numerator`` divisible by ``denominator`` (:func:`kind_for_rank` says so).
"""

from __future__ import annotations

import os
from collections.abc import Hashable

import torch

from cramming.config.schema import PretrainConfig
from cramming.errors import ConfigError
from cramming.objectives.base import Microbatch, Objective
from cramming.objectives.clm import CausalLanguageModeling
from cramming.objectives.mlm import MaskedLanguageModeling

KINDS = ("mlm", "clm")


def mlm_ranks(world_size: int, numerator: int, denominator: int) -> int:
    """How many of ``world_size`` ranks train MNTP; ConfigError if the ratio does not fit."""
    if denominator < 1 or not 0 <= numerator <= denominator:
        raise ConfigError(f"hybrid ratio {numerator}/{denominator} must be a fraction in [0, 1].")
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}.")
    if (world_size * numerator) % denominator:
        fitting = denominator // _gcd(numerator, denominator) if numerator else 1
        raise ConfigError(
            f"train.objective=hybrid with train.hybrid_numerator={numerator} / "
            f"train.hybrid_denominator={denominator} splits ranks by that ratio, but "
            f"{world_size} processes cannot: {world_size} x {numerator}/{denominator} is not a "
            f"whole number of MNTP ranks. Use a multiple of {fitting} processes, or change the "
            f"ratio (one process mixes microbatches instead and fits any ratio).")
    return world_size * numerator // denominator


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def kind_for_rank(rank: int, world_size: int, ratio: tuple[int, int]) -> str:
    """``"mlm"`` (MNTP) for the first ``world_size * num / den`` ranks, ``"clm"`` after."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size}).")
    return "mlm" if rank < mlm_ranks(world_size, *ratio) else "clm"


def kind_for_microbatch(index: int, ratio: tuple[int, int]) -> str:
    """Single-process mix: position ``index % den`` of each group; the first ``num`` are MNTP."""
    numerator, denominator = ratio
    return "mlm" if index % denominator < numerator else "clm"


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from an initialised process group, else from torchrun's env."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class HybridObjective:
    """MNTP (masked next token, bidirectional) and CLM (next token, causal) mixed by ratio."""

    kinds = KINDS  # the losses it produces (logged per kind)

    def __init__(self, mlm: Objective, clm: Objective, numerator: int, denominator: int,
                 rank: int = 0, world_size: int = 1):
        self.parts = {"mlm": mlm, "clm": clm}
        self.ratio = (numerator, denominator)
        self.rank, self.world_size = rank, world_size
        if denominator < 1 or not 0 <= numerator <= denominator:
            raise ConfigError(f"hybrid ratio {numerator}/{denominator} must be in [0, 1].")
        # Fails early (clear ConfigError) when the ranks cannot be split by the ratio.
        self.rank_kind = kind_for_rank(rank, world_size, self.ratio) if world_size > 1 else None

    @classmethod
    def from_config(cls, cfg: PretrainConfig, tokenizer, rank: int | None = None,
                    world_size: int | None = None) -> HybridObjective:
        """Hybrid for ``cfg``; rank and world size default to the running process group."""
        if rank is None or world_size is None:
            rank, world_size = distributed_rank()
        mlm = MaskedLanguageModeling.from_config(cfg, tokenizer, next_token=True)
        clm = CausalLanguageModeling.from_config(cfg, tokenizer)
        return cls(mlm, clm, cfg.train.hybrid_numerator, cfg.train.hybrid_denominator,
                   rank, world_size)

    def kind_at(self, index: int) -> str:
        """Which objective builds microbatch ``index`` on this rank."""
        return self.rank_kind or kind_for_microbatch(index, self.ratio)

    def microbatch(self, rows: dict[str, torch.Tensor], progress: float, index: int,
                   stream: int = 0) -> Microbatch:
        """Microbatch ``index`` from the MNTP or the CLM objective (see :meth:`kind_at`)."""
        return self.parts[self.kind_at(index)].microbatch(rows, progress, index, stream)

    def schedule_key(self, progress: float) -> Hashable:
        """The MNTP part's key (CLM has none)."""
        return self.parts["mlm"].schedule_key(progress)

    def static_decode_fraction(self, seq_length: int) -> float | None:
        """None: CLM microbatches decode every position."""
        return None

    def log_values(self, progress: float) -> dict[str, float]:
        """The MNTP masking rate and share."""
        numerator, denominator = self.ratio
        return {**self.parts["mlm"].log_values(progress), "mntp_share": numerator / denominator}
