"""Causal language modeling: every position predicts the next token, attention is causal."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from cramming.config.schema import PretrainConfig, TrainConfig
from cramming.objectives.base import Microbatch
from cramming.objectives.common import ModelArguments, shift_left


class CausalLanguageModeling:
    """Inputs are the rows unchanged; labels are the rows shifted left by one."""

    kind = "clm"

    def __init__(self, train: TrainConfig, model_args: ModelArguments):
        self.train, self.model_args = train, model_args

    @classmethod
    def from_config(cls, cfg: PretrainConfig, tokenizer) -> CausalLanguageModeling:
        """The CLM objective for ``cfg`` (document masks split rows at ``[SEP]``)."""
        return cls(cfg.train, ModelArguments(cfg, tokenizer.sep_token_id))

    def microbatch(self, rows: dict[str, torch.Tensor], progress: float, index: int,
                   stream: int = 0) -> Microbatch:
        """Next-token targets for the rows (deterministic: no randomness involved)."""
        input_ids = rows["input_ids"]
        return Microbatch(input_ids, shift_left(input_ids), rows["example_ids"], kind=self.kind,
                          model_kwargs=self.model_args(input_ids, True))

    def schedule_key(self, progress: float) -> Hashable:
        """Progress changes nothing in CLM."""
        return None

    def static_decode_fraction(self, seq_length: int) -> float | None:
        """CLM predicts every position: no sparse decoding."""
        return None

    def log_values(self, progress: float) -> dict[str, float]:
        """Nothing is scheduled in CLM."""
        return {}
