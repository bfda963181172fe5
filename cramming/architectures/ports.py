"""Load weights trained by the original implementations into our models.

Each ``port_*`` function maps a reference state dict (its own parameter names and layouts)
to ours and returns a :class:`PortedWeights`: ``model`` loads into our model with
``load_state_dict(strict=True)``; ``extra`` holds the reference tensors that are not part of
our masked-LM model (e.g. a sequence-classification head), under their original names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

Tensor = torch.Tensor

# Keys of JonasGeiping/cramming's ScriptableLMForSequenceClassification that sit outside the
# encoder (cramming/architectures/crammed_bert.py): the pooler ("pooler.dense.*", hidden ->
# head_dim with its nonlinearity) and the classifier ("head.*", head_dim -> num_labels).
CRAMMING_CLASSIFIER_PREFIXES = ("pooler.", "head.")


@dataclass
class PortedWeights:
    """A ported state dict: ``model`` for our model, ``extra`` for everything else."""

    model: dict[str, Tensor] = field(default_factory=dict)
    # Reference tensors outside our MLM model, by their original names. For Cramming's
    # classifier: pooler.dense.{weight,bias} [head_dim, H] (applied to the first token,
    # then the pooler's nonlinearity) and head.{weight,bias} [num_labels, head_dim].
    extra: dict[str, Tensor] = field(default_factory=dict)


def cramming_arch(config: Mapping[str, Any], **overrides: Any) -> ArchConfig:
    """Our ArchConfig equivalent of a Cramming ``crammed-bert`` arch dict (its config.json).

    Only the crammed-BERT recipe is accepted (pre-LN LayerNorm, GELU-GLU, scaled sinusoidal
    positions, tied decoder, no biases, skipped head transform); anything else is refused.
    """
    embedding, attention = config["embedding"], config["attention"]
    expected = {
        "norm": ("LayerNorm", config.get("norm")),
        "nonlin": ("GELUglu", config.get("nonlin")),
        "embedding.pos_embedding": ("scaled-sinusoidal", embedding.get("pos_embedding")),
        "use_bias": (False, config.get("use_bias")),
        "tie_weights": (True, config.get("tie_weights")),
        "decoder_bias": (False, config.get("decoder_bias")),
        "attention.qkv_bias": (False, attention.get("qkv_bias")),
        "attention.rotary_embedding": (False, attention.get("rotary_embedding")),
        "ffn_layer_frequency": (1, config.get("ffn_layer_frequency", 1)),
    }
    for key, (want, got) in expected.items():
        if want != got:
            raise ConfigError(f"Cramming config {key}={got!r} is not ported (only {want!r}).")
    if config["intermed_size"] % 2:
        raise ConfigError(f"Cramming intermed_size={config['intermed_size']} must be even (GLU).")
    values = dict(
        name="cramming-port",
        model_type="crammed",
        num_layers=config["num_transformer_layers"],
        hidden_size=config["hidden_size"],
        num_heads=attention["num_attention_heads"],
        intermediate_size=config["intermed_size"] // 2,  # Cramming counts both GLU halves
        max_seq_length=embedding["max_seq_length"],
        norm="layernorm",
        norm_eps=config["norm_eps"],
        norm_scheme=config["norm_scheme"],
        final_norm=config["final_norm"],
        embedding_norm=embedding["normalization"],
        linear_bias=False,
        ffn="glu",
        activation="gelu",
        position_embedding="scaled-sinusoidal",
        tie_weights=True,
        prediction_head=not config["skip_head_transform"],
        sparse_prediction=bool(config["sparse_prediction"]),
        dropout=config["hidden_dropout_prob"],
        attention_dropout=attention["dropout_prob"],
        init_std=config["init"]["std"],
    )
    values.update(overrides)
    return ArchConfig(**values)


def _qkv_rows_to_ours(weight: Tensor, num_heads: int) -> Tensor:
    """Cramming's fused QKV rows [heads, 3, head_dim] -> ours [3, heads, head_dim]."""
    rows, cols = weight.shape
    head_dim = rows // (3 * num_heads)
    return weight.view(num_heads, 3, head_dim, cols).transpose(0, 1).reshape(rows, cols)


def _glu_rows_to_ours(weight: Tensor) -> Tensor:
    """Cramming's GLU input rows [value, gate] -> ours [gate (activated), value]."""
    value, gate = weight.chunk(2, dim=0)
    return torch.cat((gate, value), dim=0)


# Cramming name (regex, after "encoder.") -> our name; "{0}" is the layer index.
_CRAMMING_NAMES = {
    r"embedding\.word_embedding\.weight": "embeddings.word.weight",
    r"embedding\.pos_embedding\.scale_factor": "embeddings.position.scale",
    r"embedding\.norm\.(weight|bias)": "embeddings.norm.{0}",
    r"final_norm\.(weight|bias)": "final_norm.{0}",
    r"layers\.(\d+)\.norm1\.(weight|bias)": "layers.{0}.norm1.{1}",
    r"layers\.(\d+)\.norm2\.(weight|bias)": "layers.{0}.norm2.{1}",
    r"layers\.(\d+)\.attn\.self_attention\.query_key_value\.weight": "layers.{0}.attn.qkv.weight",
    r"layers\.(\d+)\.attn\.dense\.weight": "layers.{0}.attn.out.weight",
    r"layers\.(\d+)\.ffn\.dense_in\.weight": "layers.{0}.ffn.inp.weight",
    r"layers\.(\d+)\.ffn\.dense_out\.weight": "layers.{0}.ffn.out.weight",
}
_NORM_FACTOR = re.compile(r"encoder\.layers\.\d+\.attn\.self_attention\.norm_factor")


def port_cramming_state_dict(state_dict: Mapping[str, Tensor], arch: ArchConfig) -> PortedWeights:
    """Map JonasGeiping/cramming's ``ScriptableLMForPreTraining`` (or ``...ForSequence-
    Classification``) weights onto our crammed model built from ``arch``.

    Fused QKV rows are reordered from per-head [q, k, v] to [all q, all k, all v]; GLU input
    halves are swapped (Cramming: value first, gate second); the tied decoder is taken from the
    word embedding. The attention ``norm_factor`` buffer must be 1/sqrt(head_dim) (our SDPA
    scale) and is dropped. Classifier keys (:data:`CRAMMING_CLASSIFIER_PREFIXES`) go to
    ``extra`` unchanged; any other unknown key is an error.
    """
    head_dim = arch.hidden_size // arch.num_heads
    ported = PortedWeights()
    for name, tensor in state_dict.items():
        if name.startswith(CRAMMING_CLASSIFIER_PREFIXES):
            ported.extra[name] = tensor
            continue
        if name == "decoder.weight" or (name == "decoder.bias" and tensor is None):
            continue  # tied to the word embedding (checked below)
        if _NORM_FACTOR.fullmatch(name):
            if not math.isclose(float(tensor), head_dim**-0.5, rel_tol=1e-6):
                raise ConfigError(f"{name}={float(tensor)} differs from 1/sqrt(head_dim="
                                  f"{head_dim}); this attention scale is not ported.")
            continue
        ours = _map_cramming_name(name)
        if ours.endswith("attn.qkv.weight"):
            tensor = _qkv_rows_to_ours(tensor, arch.num_heads)
        elif ours.endswith("ffn.inp.weight"):
            tensor = _glu_rows_to_ours(tensor)
        ported.model[ours] = tensor
    word = ported.model.get("embeddings.word.weight")
    decoder = state_dict.get("decoder.weight")
    if word is None:
        raise ConfigError("Cramming state dict has no encoder.embedding.word_embedding.weight.")
    if decoder is not None and not torch.equal(decoder, word):
        raise ConfigError("Cramming decoder.weight is not tied to the word embedding; "
                          "only tied decoders are ported.")
    ported.model["decoder.weight"] = word
    return ported


def _map_cramming_name(name: str) -> str:
    """Our parameter name for a Cramming encoder parameter name."""
    local = name.removeprefix("encoder.")
    for pattern, ours in _CRAMMING_NAMES.items():
        match = re.fullmatch(pattern, local)
        if match and name.startswith("encoder."):
            return ours.format(*match.groups())
    raise ConfigError(f"Cramming parameter '{name}' has no counterpart in our crammed model.")
