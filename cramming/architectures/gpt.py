"""GPT-2 style causal LM (``model_type: gpt``): learned positions, LayerNorm, GELU MLP."""

from __future__ import annotations

from cramming.architectures.lm import TransformerLM


class GPT(TransformerLM):
    """A :class:`TransformerLM` configured by ``arch/gpt-*.yaml`` (causal by default).

    The family is defined by its YAML (``position_embedding: learned``, ``norm: layernorm``,
    ``ffn: mlp``, ``activation: gelu``, ``causal: true``, tied decoder); any of those keys
    can still be overridden for ablations.
    """
