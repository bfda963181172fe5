"""Training objectives: turn packed token rows into model inputs, targets and loss weights.

The engine asks the objective for each microbatch; an objective never touches the model,
so every objective runs through the same loop, budget clock and hooks.

* ``mlm``: BERT masked language modeling (:mod:`.mlm`), token or span masking;
* ``clm``: causal next-token prediction (:mod:`.clm`);
* ``hybrid``: GPT-BERT's MNTP + CLM mix by ``hybrid_numerator / hybrid_denominator``
  (:mod:`.hybrid`), over microbatches on one process or over ranks on many.

Any of them can be wrapped in a sequence-length schedule (:mod:`.seq_length`).
"""

from __future__ import annotations

from cramming.config.schema import PretrainConfig
from cramming.objectives.base import Microbatch, Objective
from cramming.objectives.clm import CausalLanguageModeling
from cramming.objectives.hybrid import HybridObjective, kind_for_microbatch, kind_for_rank
from cramming.objectives.mlm import MaskedLanguageModeling
from cramming.objectives.seq_length import SequenceLengthSchedule

__all__ = [
    "Microbatch", "Objective", "MaskedLanguageModeling", "CausalLanguageModeling",
    "HybridObjective", "SequenceLengthSchedule", "build_objective", "kind_for_microbatch",
    "kind_for_rank",
]


def build_objective(cfg: PretrainConfig, tokenizer) -> Objective:
    """The objective named by ``cfg.train.objective`` (with its sequence-length schedule)."""
    name = cfg.train.objective
    if name == "mlm":
        objective: Objective = MaskedLanguageModeling.from_config(cfg, tokenizer)
    elif name == "clm":
        objective = CausalLanguageModeling.from_config(cfg, tokenizer)
    elif name == "hybrid":
        objective = HybridObjective.from_config(cfg, tokenizer)
    else:
        raise ValueError(f"unknown objective {name}")
    if cfg.train.seq_length_schedule:
        objective = SequenceLengthSchedule(objective, cfg.train.seq_length_schedule)
    return objective
