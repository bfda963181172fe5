"""Model architectures: the one transformer (every family) and a transformers BERT wrapper.

:func:`build_model` turns an :class:`~cramming.config.schema.ArchConfig` into a
:class:`MaskedLMModel`; both implementations share its forward/loss contract.
"""

from __future__ import annotations

from cramming.architectures.base import IGNORE_INDEX, MaskedLMModel
from cramming.architectures.families import check_arch_family
from cramming.architectures.flops import training_flops_per_token
from cramming.architectures.hf_bert import HFBert
from cramming.architectures.transformer import (
    GPT,
    CrammedBERT,
    Llama,
    LTGBert,
    Transformer,
    TransformerLM,
)
from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

__all__ = [
    "IGNORE_INDEX",
    "CrammedBERT",
    "GPT",
    "HFBert",
    "LTGBert",
    "Llama",
    "Transformer",
    "TransformerLM",
    "MaskedLMModel",
    "build_model",
    "training_flops_per_token",
]

# Every family but hf-bert is a configuration of the one Transformer; the type names the
# family (which arch keys apply, which objectives it can train).
MODEL_TYPES: dict[str, type[MaskedLMModel]] = {
    "crammed": Transformer, "hf-bert": HFBert, "gpt": Transformer, "llama": Transformer,
    "ltg-bert": Transformer,
}


def build_model(arch: ArchConfig, vocab_size: int, pad_token_id: int = 0) -> MaskedLMModel:
    """Instantiate the model of ``arch.model_type`` (on the current default device)."""
    if arch.model_type not in MODEL_TYPES:
        raise ConfigError(
            f"Unknown arch.model_type '{arch.model_type}'. Allowed: {', '.join(MODEL_TYPES)}"
        )
    check_arch_family(arch)
    if arch.fixed_masked_fraction is not None and not 0 < arch.fixed_masked_fraction <= 1:
        raise ConfigError(
            f"arch.fixed_masked_fraction={arch.fixed_masked_fraction} must be in (0, 1] or null"
        )
    return MODEL_TYPES[arch.model_type](arch, vocab_size=vocab_size, pad_token_id=pad_token_id)
