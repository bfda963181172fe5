"""Masked language modeling (BERT), and its next-token variant MNTP (GPT-BERT)."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from cramming.config.schema import PretrainConfig, TrainConfig
from cramming.data import MLMMasker
from cramming.data.keyed_random import KeyedRandom, RandomSource
from cramming.data.masking import IGNORE_INDEX
from cramming.errors import ConfigError
from cramming.objectives.base import Microbatch
from cramming.objectives.common import ModelArguments, shift_left
from cramming.objectives.span import SpanMasker
from cramming.schedules import mask_prob_at


def masking_generator(seed: int, microbatch_index: int) -> torch.Generator:
    """A generator seeded by (seed, index), for rows that carry no draw keys (tools)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + microbatch_index)


def row_random(rows: dict[str, torch.Tensor], seed: int, stream: int,
               index: int) -> RandomSource | torch.Generator:
    """Randomness keyed by each row's draw key; rows without keys fall back to the index."""
    if "keys" in rows:
        return KeyedRandom(seed, stream, rows["keys"].numpy())
    return masking_generator(seed, index)


def build_masker(tokenizer, train: TrainConfig) -> MLMMasker:
    """Token masker, or GPT-BERT's span masker when ``train.mask_span_length > 1``."""
    kwargs = dict(mask_token_prob=train.mask_token_prob,
                  random_token_prob=train.random_token_prob)
    if train.mask_span_length > 1:
        if train.mask_special_tokens:
            raise ConfigError("train.mask_special_tokens=true does not apply to span masking "
                              "(train.mask_span_length > 1): GPT-BERT never masks special "
                              "tokens. Set one of them back.")
        return SpanMasker.from_tokenizer(tokenizer, max_span=train.mask_span_length, **kwargs)
    return MLMMasker.from_tokenizer(tokenizer, exact_count=train.exact_mask_count,
                                    mask_special_tokens=train.mask_special_tokens, **kwargs)


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

    def microbatch(self, rows: dict[str, torch.Tensor], progress: float, index: int,
                   stream: int = 0) -> Microbatch:
        """Masked microbatch: each row's mask depends only on (seed, stream, row key)."""
        mask_prob = mask_prob_at(progress, self.train)
        input_ids, labels = self.masker(rows["input_ids"], mask_prob,
                                        row_random(rows, self.seed, stream, index))
        maskable = int(self.masker.maskable(rows["input_ids"]).sum())
        mask_rate = int((labels != IGNORE_INDEX).sum()) / max(maskable, 1)
        if self.next_token:
            labels = shift_left(labels)
        kwargs = self.model_args(input_ids, self.causal) if self.model_args else {}
        return Microbatch(input_ids, labels, rows["example_ids"], kind=self.kind,
                          model_kwargs=kwargs, mask_rate=mask_rate)

    def schedule_key(self, progress: float) -> Hashable:
        """The masking rate in force (all that progress changes here)."""
        return mask_prob_at(progress, self.train)

    def static_decode_fraction(self, seq_length: int) -> float | None:
        """Predicted positions per row / ``seq_length`` when every row has the same count
        (exact-count masking, the run's highest rate); None when the count varies."""
        rates = [mask_prob_at(p, self.train) for p in (0.0, 1.0)]
        count = self.masker.count_per_row(max(rates), seq_length)
        if count is None or self.masker.__class__ is not MLMMasker:
            return None
        return count / seq_length

    def log_values(self, progress: float) -> dict[str, float]:
        """The scheduled masking rate (the engine logs the real one as ``mask_rate``)."""
        return {"mask_prob": mask_prob_at(progress, self.train)}
