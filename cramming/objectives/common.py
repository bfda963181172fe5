"""Helpers shared by the objectives: target shifting, document ids, model keyword arguments."""

from __future__ import annotations

import torch

from cramming.config.schema import PretrainConfig

IGNORE_INDEX = -100
# Model types that accept ``causal`` / ``document_ids`` / ``z_loss`` in forward.
LM_MODEL_TYPES = ("gpt", "llama", "ltg-bert")


def shift_left(labels: torch.Tensor) -> torch.Tensor:
    """``out[:, t] = labels[:, t + 1]``, last position ignored: position t predicts t + 1.

    Applied to MLM labels this gives GPT-BERT's masked *next* token prediction (MNTP);
    applied to the input ids it gives causal LM targets.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def document_ids(input_ids: torch.Tensor, separator_id: int) -> torch.Tensor:
    """Per-position document index within each row: it increases after every separator."""
    is_separator = (input_ids == separator_id).long()
    return torch.cumsum(is_separator, dim=1) - is_separator


class ModelArguments:
    """Builds ``Microbatch.model_kwargs`` for the configured model and training options."""

    def __init__(self, cfg: PretrainConfig, separator_id: int | None):
        self.lm = cfg.arch.model_type in LM_MODEL_TYPES
        self.z_loss = cfg.train.z_loss
        self.document_mask = cfg.train.document_mask
        self.separator_id = separator_id

    def __call__(self, input_ids: torch.Tensor, causal: bool | None) -> dict:
        """Keyword arguments for one forward; empty for the BERT encoders."""
        if not self.lm:
            return {}
        kwargs: dict = {}
        if causal is not None:
            kwargs["causal"] = causal
        if self.z_loss:
            kwargs["z_loss"] = self.z_loss
        if self.document_mask and self.separator_id is not None:
            kwargs["document_ids"] = document_ids(input_ids, self.separator_id)
        return kwargs
