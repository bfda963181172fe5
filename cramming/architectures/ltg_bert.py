"""LTG-BERT / GPT-BERT style encoder (``model_type: ltg-bert``).

The family GPT-BERT (Charpentier & Samuel, BabyLM 2024) trains with its hybrid MNTP + CLM
objective: no absolute positions but learned, log-bucketed *relative* position embeddings
entering attention as content-to-position and position-to-content scores (DeBERTa style,
scaled by ``1/sqrt(3 d)``), NormFormer-like extra norms (after attention, inside the
GEGLU feed-forward), an embedding norm and a BERT prediction head tied to the embedding.
Attention is bidirectional by default and causal when the objective asks for it.
This is a re-implementation from the papers' descriptions, not a port of their code:
it does not reproduce their checkpoints' parameter names or exact initialisation.
"""

from __future__ import annotations

from cramming.architectures.lm import TransformerLM


class LTGBert(TransformerLM):
    """A :class:`TransformerLM` with the LTG-BERT extra norms (see the module docstring)."""

    extra_norms = True
