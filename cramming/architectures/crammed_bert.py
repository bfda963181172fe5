"""Our BERT-style encoder (``model_type: crammed``), configurable from BERT to Cramming."""

from __future__ import annotations

import torch
from torch import nn

from cramming.architectures.base import MaskedLMModel
from cramming.architectures.components import (
    Embeddings,
    PredictionHead,
    TransformerLayer,
    make_norm,
)
from cramming.config.schema import ArchConfig


class CrammedBERT(MaskedLMModel):
    """Embeddings -> N transformer layers -> (final norm) -> (prediction head) -> decoder."""

    def __init__(self, arch: ArchConfig, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__()
        self.arch = arch
        self.vocab_size = vocab_size
        self.hidden_size = arch.hidden_size
        self.pad_token_id = pad_token_id
        self.embeddings = Embeddings(arch, vocab_size, pad_token_id)
        self.layers = nn.ModuleList(TransformerLayer(arch) for _ in range(arch.num_layers))
        self.final_norm = make_norm(arch) if arch.final_norm else None
        self.head = PredictionHead(arch) if arch.prediction_head else None
        self.decoder = nn.Linear(arch.hidden_size, vocab_size, bias=arch.linear_bias)
        self.reset_parameters()
        if arch.tie_weights:
            self.decoder.weight = self.embeddings.word.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std) for Linear/Embedding weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.arch.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        self.embeddings.word.weight[self.pad_token_id].zero_()

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, L, H]; ``attention_mask`` [B, L] with 1 = real token."""
        mask = None
        if attention_mask is not None:
            keep = attention_mask.bool()
            # A row that is all padding would softmax over nothing (NaN); let it attend to all.
            keep = keep | ~keep.any(dim=1, keepdim=True)
            mask = keep[:, None, None, :]  # broadcast over heads and queries
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x) if self.final_norm is not None else x

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states [..., H]."""
        if self.head is not None:
            hidden = self.head(hidden)
        return self.decoder(hidden)
