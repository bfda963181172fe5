"""The one transformer behind every family except ``hf-bert``.

Embeddings -> N :class:`~cramming.architectures.components.Block` (optionally weighted
across depth, DWA) -> final norm -> prediction head -> decoder. crammed-BERT, BERT, GPT,
Llama, LTG-BERT and GPT-BERT are configurations of it (``arch/*.yaml``). It keeps the
:class:`~cramming.architectures.base.MaskedLMModel` contract and adds keyword arguments that
objectives pass through ``Microbatch.model_kwargs``:

* ``causal``: True = no position attends to a later one (CLM), False = bidirectional
  (MLM / MNTP), None = ``arch.causal``;
* ``document_ids`` [B, L]: positions attend only within their document;
* ``z_loss``: adds ``z_loss * mean(logsumexp(logits)^2)`` over predicted positions.

Labels are aligned with positions: ``labels[b, t]`` is what position ``t`` must predict
(next token for CLM / MNTP, the token itself for plain MLM). The model never shifts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cramming.architectures.base import MaskedLMModel
from cramming.architectures.components import (
    Block,
    Embeddings,
    LayerWeighting,
    PredictionHead,
    RelativePositions,
    RotaryEmbedding,
    make_norm,
)
from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

INIT_SCHEMES = ("normal", "scaled-residual", "ltg")


def attention_mask_for(seq_len: int, causal: bool, attention_mask: torch.Tensor | None,
                       document_ids: torch.Tensor | None,
                       device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = may attend), or None when at most ``causal`` applies.

    Key padding alone gives [B, 1, 1, L] (broadcast over queries); with ``causal`` or
    documents [B|1, 1, L, L].
    """
    if attention_mask is None and document_ids is None:
        return None
    keep = None
    if attention_mask is not None:
        keep = attention_mask.bool()
        keep = keep | ~keep.any(dim=1, keepdim=True)  # all-padding rows: avoid NaN
        if document_ids is None and not causal:
            return keep[:, None, None, :]
    mask = torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril()
    if document_ids is not None:
        mask = mask & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    # A query that may see no key at all (a padded query under a causal mask) sees itself.
    return mask | torch.eye(seq_len, dtype=torch.bool, device=device)


class Transformer(MaskedLMModel):
    """Embeddings -> N blocks -> (final norm) -> (prediction head) -> decoder."""

    def __init__(self, arch: ArchConfig, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__()
        if arch.init_scheme not in INIT_SCHEMES:
            raise ConfigError(f"Unknown arch.init_scheme '{arch.init_scheme}'. "
                              f"Allowed: {', '.join(INIT_SCHEMES)}")
        self.arch, self.vocab_size, self.hidden_size = arch, vocab_size, arch.hidden_size
        self.pad_token_id = pad_token_id
        # Cramming/BERT keep the padding row at zero (no gradient); the LM families do not.
        padding_idx = pad_token_id if arch.init_scheme == "normal" else None
        self.embeddings = Embeddings(arch, vocab_size, padding_idx)
        self.rope = None
        if arch.position_embedding == "rope":
            head_dim = arch.hidden_size // arch.num_heads
            self.rope = RotaryEmbedding(head_dim, arch.max_seq_length, arch.rope_theta)
        self.relative = RelativePositions(arch) if arch.position_embedding == "relative" else None
        self.layers = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.dwa = LayerWeighting(2 * arch.num_layers) if arch.dwa else None
        self.final_norm = make_norm(arch) if arch.final_norm else None
        self.head = PredictionHead(arch) if arch.prediction_head else None
        decoder_bias = arch.linear_bias if arch.decoder_bias is None else arch.decoder_bias
        self.decoder = nn.Linear(arch.hidden_size, vocab_size, bias=decoder_bias)
        self.reset_parameters()
        if arch.tie_weights:
            self.decoder.weight = self.embeddings.word.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise by ``arch.init_scheme``; biases zero, norms one, DWA the identity.

        ``normal``: normal(0, init_std) (Cramming, BERT); ``scaled-residual``: the same with
        residual output projections at init_std / sqrt(2 N) (GPT-2); ``ltg``: truncated
        normal(0, sqrt(2 / 5h)) at +-2 std, FFN weights of layer i times sqrt(1 / (2 (i+1)))
        (ltgoslo/gpt-bert, pretraining/model.py).
        """
        scheme, std = self.arch.init_scheme, self.arch.init_std
        if scheme == "ltg":
            std = math.sqrt(2.0 / (5.0 * self.hidden_size))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                if scheme == "ltg":
                    nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.dwa is not None:
            self.dwa.reset_parameters()
        for index, layer in enumerate(self.layers):
            if scheme == "scaled-residual":
                residual_std = std / math.sqrt(2 * max(self.arch.num_layers, 1))
                nn.init.normal_(layer.attn.out.weight, mean=0.0, std=residual_std)
                nn.init.normal_(layer.ffn.out.weight, mean=0.0, std=residual_std)
            elif scheme == "ltg":
                layer.ffn.inp.weight.mul_(math.sqrt(1.0 / (2.0 * (index + 1))))
                layer.ffn.out.weight.mul_(math.sqrt(1.0 / (2.0 * (index + 1))))
        if self.embeddings.word.padding_idx is not None:
            self.embeddings.word.weight[self.embeddings.word.padding_idx].zero_()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, causal: bool | None = None,
               document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, L, H]; ``attention_mask`` [B, L] with 1 = real token."""
        seq_len = input_ids.shape[1]
        causal = self.arch.causal if causal is None else bool(causal)
        x = self.embeddings(input_ids, token_type_ids)
        mask = attention_mask_for(seq_len, causal, attention_mask, document_ids, x.device)
        # The key padding alone (for flash-attn's varlen kernel), when that is all the mask is.
        keep = mask.flatten(1) if mask is not None and mask.shape[2] == 1 else None
        relative = self.relative(seq_len) if self.relative is not None else None
        if self.dwa is None:
            for layer in self.layers:
                x = layer(x, mask, causal, self.rope, relative, keep)
        else:
            states = [x]
            for index, layer in enumerate(self.layers):
                x = layer.attention_residual(x, mask, causal, self.rope, relative, keep)
                states.append(x)
                x = self.dwa(states, 2 * index)
                states.append(layer.ffn_residual(x))
                x = self.dwa(states, 2 * index + 1)
        return self.final_norm(x) if self.final_norm is not None else x

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states [..., H]."""
        if self.head is not None:
            hidden = self.head(hidden)
        return self.decoder(hidden)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                return_per_example_loss: bool = False, causal: bool | None = None,
                document_ids: torch.Tensor | None = None,
                z_loss: float | None = None) -> dict[str, torch.Tensor | None]:
        """Loss over positions whose label is not -100 (plus the ``z_loss`` regulariser).

        Returns ``loss``, ``logits`` (decoded positions only with sparse prediction),
        ``num_predictions``, ``num_correct``, ``per_example_loss`` (if requested) and, for
        the causal-capable families or when ``z_loss`` is given, ``z_loss`` (the unweighted
        regulariser, None without labels).
        """
        hidden = self.encode(input_ids, attention_mask, token_type_ids, causal, document_ids)
        if z_loss is None and self.arch.model_type != "crammed":
            z_loss = 0.0  # the LM families always report the term
        return self.outputs_from_hidden(hidden, labels, return_per_example_loss, z_loss)


# The families are configurations of the one model; these names stay for readability.
CrammedBERT = GPT = Llama = LTGBert = TransformerLM = Transformer
