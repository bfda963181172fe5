"""Analytic training FLOPs of the encoder, counted from the layer shapes.

Per token, with ``h`` = hidden size, ``i`` = intermediate size, ``s`` = sequence length,
``N`` = layers, ``V`` = vocabulary and ``p`` = fraction of tokens that are decoded::

    layer matmul params  P_layer = 2 h^2 + 2 h kv            (Q, output; K, V at the width
                                                          kv of the grouped K/V heads)
                                 + h^2 if the attention output is gated
                                 + (3 h i  if glu else 2 h i) (FFN in + out)
    head matmul params   P_head  = h^2 (prediction head, if any) + h V (decoder)
    forward FLOPs        = 2 N P_layer + 4 N s h + 2 p P_head
    training FLOPs       = 3 * forward
                         = 6 N P_layer + 12 N s h + 6 p P_head

Each multiply-add is 2 FLOPs and the backward pass costs twice the forward (gradients
w.r.t. activations and weights). ``4 N s h`` is attention itself: QK^T and the weighted
sum over V, each ``2 s h`` per token per layer. Embedding lookups, norms, activations,
softmax and biases are ignored (they are not matmuls). ``p`` is 1 for dense prediction;
for sparse prediction it is the caller's ``num_predicted_fraction`` (the fraction of
tokens that carry an MLM label, i.e. useful decoder work).
"""

from __future__ import annotations

from cramming.config.schema import ArchConfig


def layer_matmul_params(arch: ArchConfig) -> int:
    """Weights of one transformer layer that take part in a matmul."""
    h, i = arch.hidden_size, arch.intermediate_size
    kv = (arch.num_kv_heads or arch.num_heads) * (h // arch.num_heads)
    ffn = (3 if arch.ffn == "glu" else 2) * h * i
    return (3 if arch.attention_gate else 2) * h * h + 2 * h * kv + ffn


def head_matmul_params(arch: ArchConfig, vocab_size: int) -> int:
    """Prediction head (optional h x h) plus decoder (h x V) weights."""
    h = arch.hidden_size
    return (h * h if arch.prediction_head else 0) + h * vocab_size


def training_flops_per_token(
    arch: ArchConfig, vocab_size: int, seq_length: int, num_predicted_fraction: float
) -> float:
    """Forward + backward FLOPs per input token (see the module docstring)."""
    fraction = num_predicted_fraction if arch.sparse_prediction else 1.0
    body = arch.num_layers * (layer_matmul_params(arch) + 2 * seq_length * arch.hidden_size)
    head = fraction * head_matmul_params(arch, vocab_size)
    return 6.0 * (body + head)
