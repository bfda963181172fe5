"""``model_type: hf-bert``: transformers' BertForMaskedLM behind our MaskedLMModel interface.

Only the shape is taken from the ArchConfig (layers, hidden, heads, intermediate,
max_seq_length, dropout, norm_eps, init_std, type_vocab_size, activation, tie_weights);
the layer structure is HF's (post-LN, biases, MLP FFN, learned positions, prediction
head). ``sparse_prediction`` / ``fixed_masked_fraction`` are honoured by our shared
forward, which calls HF's backbone and MLM head separately.
"""

from __future__ import annotations

import dataclasses

import torch

from cramming.architectures.base import MaskedLMModel
from cramming.architectures.flops import training_flops_per_token
from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

# HF's equivalent of our structural options, for FLOP counting and documentation.
HF_STRUCTURE = dict(ffn="mlp", norm_scheme="post", prediction_head=True, linear_bias=True)


def bert_config(arch: ArchConfig, vocab_size: int, pad_token_id: int = 0):
    """A ``transformers.BertConfig`` with the shape of ``arch``."""
    from transformers import BertConfig

    if arch.ffn != "mlp":
        raise ConfigError("model_type=hf-bert supports only arch.ffn=mlp (HF BERT has no GLU).")
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        hidden_act=arch.activation,
        hidden_dropout_prob=arch.dropout,
        attention_probs_dropout_prob=arch.attention_dropout,
        max_position_embeddings=arch.max_seq_length,
        type_vocab_size=max(1, arch.type_vocab_size),  # HF always has a token-type table
        initializer_range=arch.init_std,
        layer_norm_eps=arch.norm_eps,
        pad_token_id=pad_token_id,
        tie_word_embeddings=arch.tie_weights,
    )


class HFBert(MaskedLMModel):
    """Wrapper around ``transformers.BertForMaskedLM`` (no pooler)."""

    def __init__(self, arch: ArchConfig, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__()
        from transformers import BertForMaskedLM

        self.arch = arch
        self.vocab_size = vocab_size
        self.hidden_size = arch.hidden_size
        config = bert_config(arch, vocab_size, pad_token_id)
        try:
            self.model = BertForMaskedLM._from_config(config, attn_implementation="sdpa")
        except (ValueError, ImportError):  # older transformers without SDPA for BERT
            self.model = BertForMaskedLM(config)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states [B, L, H] of the (post-LN) encoder."""
        out = self.model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """HF's MLM head (transform + decoder) on hidden states [..., H]."""
        return self.model.cls(hidden)

    def flops_per_token(self, seq_length: int, num_predicted_fraction: float) -> float:
        """As for ours, with HF's fixed structure (MLP FFN, prediction head)."""
        arch = dataclasses.replace(self.arch, **HF_STRUCTURE)
        return training_flops_per_token(arch, self.vocab_size, seq_length, num_predicted_fraction)
