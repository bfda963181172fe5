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

from cramming.architectures.components import relative_buckets
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


# Cramming name (regex) -> our name; "{0}" is the first group (layer index, ...).
_LAYER = r"encoder\.layers\.(\d+)\."
_CRAMMING_NAMES = {
    r"encoder\.embedding\.word_embedding\.weight": "embeddings.word.weight",
    r"encoder\.embedding\.pos_embedding\.scale_factor": "embeddings.position.scale",
    r"encoder\.embedding\.norm\.(weight|bias)": "embeddings.norm.{0}",
    r"encoder\.final_norm\.(weight|bias)": "final_norm.{0}",
    _LAYER + r"norm1\.(weight|bias)": "layers.{0}.norm1.{1}",
    _LAYER + r"norm2\.(weight|bias)": "layers.{0}.norm2.{1}",
    _LAYER + r"attn\.self_attention\.query_key_value\.weight": "layers.{0}.attn.qkv.weight",
    _LAYER + r"attn\.dense\.weight": "layers.{0}.attn.out.weight",
    _LAYER + r"ffn\.dense_in\.weight": "layers.{0}.ffn.inp.weight",
    _LAYER + r"ffn\.dense_out\.weight": "layers.{0}.ffn.out.weight",
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
        ours = _map_name(name, _CRAMMING_NAMES, "Cramming")
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




# ----------------------------------------------------------------------------- GPT-BERT


def gpt_bert_arch(config: Mapping[str, Any], extra: bool, **overrides: Any) -> ArchConfig:
    """Our ArchConfig for ltgoslo/gpt-bert's ``Bert`` built from ``config`` (configs/*.json).

    ``extra``: pretraining/model_extra.py (gated attention + DWA, the GPT-BERT paper model);
    otherwise pretraining/model.py (LTG-BERT). Field by field as arch/gpt-bert-small.yaml.
    """
    values = dict(
        name="gpt-bert-port" if extra else "ltg-bert-port",
        model_type="ltg-bert",
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        num_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        max_seq_length=config["max_position_embeddings"],
        norm="layernorm",
        norm_eps=config["layer_norm_eps"],
        norm_scheme="pre",
        final_norm=False,
        embedding_norm=True,
        linear_bias=True,
        ffn="glu",
        activation="gelu_tanh",
        position_embedding="relative",
        tie_weights=True,
        prediction_head=True,
        prediction_head_type="ltg",
        dropout=config["hidden_dropout_prob"],
        attention_dropout=config["attention_probs_dropout_prob"],
        attention_impl="sdpa",
        position_buckets=config["position_bucket_size"],
        norm_affine=False,
        inner_norms=True,
        attention_gate=extra,
        dwa=extra,
        ffn_bias=False,
        decoder_bias=True,
        init_scheme="ltg",
    )
    values.update(overrides)
    return ArchConfig(**values)


_GPT_BERT_NAMES = {
    r"embedding\.word_embedding\.weight": "embeddings.word.weight",
    r"embedding\.relative_embedding": "relative.embedding.weight",
    r"embedding\.relative_layer_norm\.(weight|bias)": "relative.norm.{0}",
    r"transformer\.attention_layers\.(\d+)\.out_proj\.(weight|bias)": "layers.{0}.attn.out.{1}",
    r"transformer\.mlp_layers\.(\d+)\.mlp\.1\.weight": "layers.{0}.ffn.inp.weight",
    r"transformer\.mlp_layers\.(\d+)\.mlp\.4\.weight": "layers.{0}.ffn.out.weight",
    r"transformer\.dwa_modules\.alphas\.(\d+)": "dwa.alphas.{0}",
    r"classifier\.nonlinearity\.1\.(weight|bias)": "head.dense.{0}",
    r"classifier\.nonlinearity\.5\.bias": "decoder.bias",
}
# The attention input projections, fused in our order [q, k, v, (gate)].
_GPT_BERT_PROJECTIONS = re.compile(
    r"transformer\.attention_layers\.(\d+)\.(in_proj_qk|in_proj_vg|in_proj_v)\.(weight|bias)")
_GPT_BERT_BUCKETS = re.compile(r"transformer\.attention_layers\.\d+\.position_indices")


def port_gpt_bert_state_dict(state_dict: Mapping[str, Tensor], arch: ArchConfig) -> PortedWeights:
    """Map ltgoslo/gpt-bert's ``Bert`` (pretraining/model.py or model_extra.py) weights onto
    our model built from :func:`gpt_bert_arch`.

    ``in_proj_qk`` and ``in_proj_v`` / ``in_proj_vg`` are concatenated into our fused
    projection; the GeGLU input halves are swapped (theirs: value first, gate second); the
    classifier's last Linear must be tied to the word embedding (its bias is our decoder
    bias); the stored relative-bucket index must equal ours.
    """
    ported = PortedWeights()
    projections: dict[tuple[str, str], dict[str, Tensor]] = {}
    expected_index = relative_buckets(arch.max_seq_length, arch.position_buckets,
                                      arch.max_seq_length)
    for name, tensor in state_dict.items():
        if name == "classifier.nonlinearity.5.weight":
            continue  # tied (checked below)
        if _GPT_BERT_BUCKETS.fullmatch(name):
            if not torch.equal(tensor.long(), expected_index):
                raise ConfigError(f"{name} differs from our relative buckets "
                                  f"(position_buckets={arch.position_buckets}, "
                                  f"max_seq_length={arch.max_seq_length}).")
            continue
        match = _GPT_BERT_PROJECTIONS.fullmatch(name)
        if match:
            layer, which, kind = match.groups()
            projections.setdefault((layer, kind), {})[which] = tensor
            continue
        ours = _map_name(name, _GPT_BERT_NAMES, "GPT-BERT")
        if ours.endswith("ffn.inp.weight"):
            tensor = _glu_rows_to_ours(tensor)
        ported.model[ours] = tensor
    value_key = "in_proj_vg" if arch.attention_gate else "in_proj_v"
    for (layer, kind), parts in projections.items():
        if set(parts) != {"in_proj_qk", value_key}:
            raise ConfigError(f"GPT-BERT layer {layer} has attention projections "
                              f"{sorted(parts)}; arch.attention_gate={arch.attention_gate} "
                              f"expects in_proj_qk and {value_key}.")
        ported.model[f"layers.{layer}.attn.qkv.{kind}"] = torch.cat(
            (parts["in_proj_qk"], parts[value_key]))
    word = ported.model["embeddings.word.weight"]
    decoder = state_dict.get("classifier.nonlinearity.5.weight")
    if decoder is not None and not torch.equal(decoder, word):
        raise ConfigError("GPT-BERT classifier weight is not tied to the word embedding.")
    ported.model["decoder.weight"] = word
    return ported


def _map_name(name: str, table: Mapping[str, str], source: str) -> str:
    """Our parameter name for ``name`` by the first matching pattern of ``table``."""
    for pattern, ours in table.items():
        match = re.fullmatch(pattern, name)
        if match:
            return ours.format(*match.groups())
    raise ConfigError(f"{source} parameter '{name}' has no counterpart in our model.")
