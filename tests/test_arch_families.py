"""Each family takes its own arch keys: a key that does not apply is refused at start-up."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from cramming.architectures import build_model
from cramming.architectures.families import FAMILY_KEYS, check_arch_family
from cramming.config import CONFIG_DIR, compose, load_pretrain_config, to_typed
from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

YAMLS = sorted((CONFIG_DIR / "arch").glob("*.yaml"))


def typed(*overrides: str):
    return load_pretrain_config(compose("pretrain", ["data.paths=[x]", *overrides]))


@pytest.mark.parametrize("overrides, key", [
    (["arch=llama-tiny", "arch.attention_impl=flash-attn"], "arch.attention_impl='flash-attn'"),
    (["arch=hf-bert-tiny", "arch.norm=rmsnorm"], "arch.norm='rmsnorm'"),
    (["arch=bert-tiny", "arch.num_kv_heads=1"], "arch.num_kv_heads=1"),
    (["arch=gpt-tiny", "arch.dwa=true"], "arch.dwa=True"),
    (["arch=ltg-bert-tiny", "arch.position_embedding=rope"], "arch.position_embedding='rope'"),
])
def test_a_key_that_does_not_apply_is_refused_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as error:
        typed(*overrides)
    message = str(error.value)
    assert "\n" not in message and message.startswith(key)
    assert "does not apply to arch.model_type=" in message and "allowed there:" in message


def test_keys_that_apply_are_accepted():
    llama = typed("arch=llama-tiny", "train=clm", "arch.attention_impl=eager")
    assert llama.arch.attention_impl == "eager"
    assert typed("arch=hf-bert-tiny", "arch.hidden_size=256", "arch.num_heads=4").arch.hidden_size
    assert typed("arch=bert-tiny", "arch.attention_impl=flash-attn").arch.name == "bert-tiny"
    assert typed("arch=gpt-bert-small", "data.seq_length=128").arch.dwa


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_shipped_arch_fits_its_family(path):
    arch = to_typed(OmegaConf.load(path), ArchConfig)
    assert arch.model_type in FAMILY_KEYS
    check_arch_family(arch)


def test_build_model_refuses_too():
    arch = dataclasses.replace(ArchConfig(num_layers=1, hidden_size=16, num_heads=2,
                                          intermediate_size=16), causal=True)
    with pytest.raises(ConfigError, match="arch.causal=True does not apply"):
        build_model(arch, vocab_size=10)
