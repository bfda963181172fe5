"""Masked language modeling (BERT), and its next-token variant MNTP (GPT-BERT)."""

from __future__ import annotations

import torch

from cramming.backend.schedules import mask_prob_at
from cramming.config.schema import PretrainConfig, TrainConfig
from cramming.data import MLMMasker
from cramming.objectives.base import Microbatch
from cramming.objectives.common import ModelArguments, shift_left, token_weight
from cramming.objectives.span import SpanMasker


def masking_generator(seed: int, microbatch_index: int) -> torch.Generator:
    """Masks are a pure function of (seed, microbatch index): exact on resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + microbatch_index)


def build_masker(tokenizer, train: TrainConfig) -> MLMMasker:
    """Token masker, or span masker when ``train.mask_span_length > 1``."""
    kwargs = dict(mask_token_prob=train.mask_token_prob,
                  random_token_prob=train.random_token_prob)
    if train.mask_span_length > 1:
        return SpanMasker.from_tokenizer(tokenizer, max_span=train.mask_span_length, **kwargs)
    return MLMMasker.from_tokenizer(tokenizer, exact_count=train.exact_mask_count, **kwargs)


class MaskedLanguageModeling:
    """Mask a scheduled fraction of tokens and predict them.

    With ``next_token=True`` (MNTP) the target of a masked token at position t is
    predicted at position t - 1, so masked and causal training share one output semantics;
    ``causal`` is passed to models that accept it (False: bidirectional attention).
    """

    kind = "mlm"

    def __init__(self, masker: MLMMasker, train: TrainConfig, seed: int,
                 next_token: bool = False, model_args: ModelArguments | None = None,
                 causal: bool | None = None):
        self.masker, self.train, self.seed = masker, train, seed
        self.next_token, self.model_args, self.causal = next_token, model_args, causal

    @classmethod
    def from_config(cls, cfg: PretrainConfig, tokenizer,
                    next_token: bool = False) -> MaskedLanguageModeling:
        """The objective ``cfg.train`` describes, for ``tokenizer``'s vocabulary."""
        model_args = ModelArguments(cfg, tokenizer.sep_token_id)
        causal = False if model_args.lm else None
        return cls(build_masker(tokenizer, cfg.train), cfg.train, cfg.seed, next_token,
                   model_args, causal)

    def microbatch(self, rows: dict[str, torch.Tensor], progress: float,
                   index: int) -> Microbatch:
        """Masked microbatch number ``index``: masks depend only on (seed, index)."""
        generator = masking_generator(self.seed, index)
        mask_prob = mask_prob_at(progress, self.train)
        input_ids, labels = self.masker(rows["input_ids"], mask_prob, generator)
        if self.next_token:
            labels = shift_left(labels)
        weight = 1.0
        if self.train.token_weighted_loss:
            weight = token_weight(labels, mask_prob * labels.numel())
        kwargs = self.model_args(input_ids, self.causal) if self.model_args else {}
        return Microbatch(input_ids, labels, rows["example_ids"], kind=self.kind,
                          loss_weight=weight, model_kwargs=kwargs)

    def log_values(self, progress: float) -> dict[str, float]:
        """The current masking rate."""
        return {"mask_prob": mask_prob_at(progress, self.train)}
