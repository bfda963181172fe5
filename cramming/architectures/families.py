"""Which ``arch`` keys apply to which family (``arch.model_type``).

Every family but ``hf-bert`` is a configuration of the one transformer, but not every key
means something in every family: an encoder has no causal default or grouped K/V heads, RoPE
and relative positions act inside attention (which then runs through SDPA, never
flash-attn), and transformers' BertForMaskedLM takes only its shape from ``arch``. A key
that does not apply must keep its neutral value; anything else is refused in one line, so an
override that would silently do nothing fails at start-up.
"""

from __future__ import annotations

import dataclasses

from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

_DEFAULTS = ArchConfig()
ABSOLUTE = ("scaled-sinusoidal", "sinusoidal", "learned")
NO_FLASH = ("auto", "sdpa", "eager")


def _neutral(*keys: str) -> dict[str, tuple]:
    """``key -> (its ArchConfig default,)``: keys that do not apply keep the default."""
    return {key: (getattr(_DEFAULTS, key),) for key in keys}


# family -> {key: values allowed there} (keys not listed apply with all their values).
FAMILY_KEYS: dict[str, dict[str, tuple]] = {
    "crammed": {
        **_neutral("causal", "num_kv_heads", "rope_theta", "position_buckets", "dwa",
                   "attention_gate"),
        "position_embedding": ABSOLUTE,
    },
    "gpt": {
        **_neutral("type_vocab_size", "position_buckets", "dwa", "attention_gate"),
        "position_embedding": ABSOLUTE,
    },
    "llama": {
        **_neutral("type_vocab_size", "position_buckets", "dwa", "attention_gate"),
        "position_embedding": ("rope",),
        "attention_impl": NO_FLASH,
    },
    "ltg-bert": {
        **_neutral("type_vocab_size", "num_kv_heads", "rope_theta"),
        "position_embedding": ("relative",),
        "attention_impl": NO_FLASH,
    },
    # transformers' BertForMaskedLM: post-LN, biases, GELU-MLP, learned positions, BERT head,
    # SDPA attention; only the shape, dropout, eps, init, activation and tying come from arch.
    "hf-bert": {
        **_neutral("causal", "num_kv_heads", "rope_theta", "position_buckets", "dwa",
                   "attention_gate", "inner_norms", "ffn_bias", "decoder_bias"),
        "norm": ("layernorm",), "norm_scheme": ("post",), "final_norm": (False,),
        "embedding_norm": (True,), "linear_bias": (True,), "ffn": ("mlp",),
        "position_embedding": ("learned",), "prediction_head": (True,),
        "prediction_head_type": ("bert",), "norm_affine": (True,), "init_scheme": ("normal",),
        "attention_impl": ("sdpa",),
    },
}


def check_arch_family(arch: ArchConfig) -> None:
    """Refuse (one line) a key whose value does not apply to ``arch.model_type``."""
    rules = FAMILY_KEYS.get(arch.model_type)
    if rules is None:
        raise ConfigError(f"Unknown arch.model_type '{arch.model_type}'. "
                          f"Allowed: {', '.join(FAMILY_KEYS)}")
    values = dataclasses.asdict(arch)
    for key, allowed in rules.items():
        if values[key] not in allowed:
            shown = ", ".join("null" if v is None else str(v).lower() if isinstance(v, bool)
                              else str(v) for v in allowed)
            raise ConfigError(
                f"arch.{key}={values[key]!r} does not apply to arch.model_type="
                f"{arch.model_type} (arch={arch.name}); allowed there: {shown}.")
