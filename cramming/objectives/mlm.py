"""Masked language modeling (BERT): mask a scheduled fraction of tokens, predict them."""

from __future__ import annotations

import torch

from cramming.backend.schedules import mask_prob_at
from cramming.config.schema import PretrainConfig, TrainConfig
from cramming.data import MLMMasker
from cramming.objectives.base import Microbatch


def masking_generator(seed: int, microbatch_index: int) -> torch.Generator:
    """Masks are a pure function of (seed, microbatch index): exact on resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + microbatch_index)


class MaskedLanguageModeling:
    def __init__(self, masker: MLMMasker, train: TrainConfig, seed: int):
        self.masker, self.train, self.seed = masker, train, seed

    @classmethod
    def from_config(cls, cfg: PretrainConfig, tokenizer) -> MaskedLanguageModeling:
        masker = MLMMasker.from_tokenizer(tokenizer, mask_token_prob=cfg.train.mask_token_prob,
                                          random_token_prob=cfg.train.random_token_prob,
                                          exact_count=cfg.train.exact_mask_count)
        return cls(masker, cfg.train, cfg.seed)

    def microbatch(self, rows: dict[str, torch.Tensor], progress: float,
                   index: int) -> Microbatch:
        generator = masking_generator(self.seed, index)
        input_ids, labels = self.masker(rows["input_ids"], mask_prob_at(progress, self.train),
                                        generator)
        return Microbatch(input_ids, labels, rows["example_ids"], kind="mlm")

    def log_values(self, progress: float) -> dict[str, float]:
        return {"mask_prob": mask_prob_at(progress, self.train)}
