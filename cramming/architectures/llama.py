"""Llama style causal LM (``model_type: llama``): RoPE, RMSNorm, SwiGLU, grouped-query attention."""

from __future__ import annotations

from cramming.architectures.lm import TransformerLM


class Llama(TransformerLM):
    """A :class:`TransformerLM` configured by ``arch/llama-*.yaml``.

    ``position_embedding: rope`` (base ``rope_theta``), ``norm: rmsnorm``, ``ffn: glu`` with
    ``activation: silu`` (SwiGLU), no biases, untied decoder, and ``num_kv_heads`` < heads for
    grouped-query attention.
    """
