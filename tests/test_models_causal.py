"""gpt / llama / ltg-bert models: causal masking, document masks, RoPE, GQA, z-loss, YAMLs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

from cramming.architectures import GPT, Llama, LTGBert, build_model
from cramming.architectures.components import RotaryEmbedding, relative_buckets
from cramming.config import CONFIG_DIR, to_typed
from cramming.config.schema import ArchConfig

VOCAB = 300
TINY = ("gpt-tiny", "llama-tiny", "ltg-bert-tiny")



pytestmark = pytest.mark.usefixtures("single_thread")

def arch(name: str, **overrides) -> ArchConfig:
    return dataclasses.replace(to_typed(OmegaConf.load(CONFIG_DIR / "arch" / f"{name}.yaml"),
                                        ArchConfig), **overrides)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(arch(name, **overrides), vocab_size=VOCAB).eval()


@pytest.mark.parametrize("name", TINY)
def test_causal_attention_never_sees_the_future(name):
    model = tiny(name)
    ids = torch.randint(5, VOCAB, (2, 24))
    changed = ids.clone()
    changed[:, 15] = (ids[:, 15] + 7) % VOCAB
    with torch.no_grad():
        before = model.encode(ids, causal=True)
        after = model.encode(changed, causal=True)
        bidirectional = model.encode(changed, causal=False)
        reference = model.encode(ids, causal=False)
    torch.testing.assert_close(before[:, :15], after[:, :15])
    assert (before[:, 15:] - after[:, 15:]).abs().amax() > 1e-4
    # Without the causal flag the same change reaches the earlier positions.
    assert (reference[:, :15] - bidirectional[:, :15]).abs().amax() > 1e-4


@pytest.mark.parametrize("name", TINY)
def test_document_mask_isolates_documents(name):
    model = tiny(name)
    ids = torch.randint(5, VOCAB, (1, 20))
    documents = torch.tensor([[0] * 8 + [1] * 12])
    changed = ids.clone()
    changed[0, 12] = (ids[0, 12] + 3) % VOCAB  # inside the second document
    with torch.no_grad():
        for causal in (True, False):
            a = model.encode(ids, causal=causal, document_ids=documents)
            b = model.encode(changed, causal=causal, document_ids=documents)
            torch.testing.assert_close(a[:, :8], b[:, :8])
            assert (a[:, 8:] - b[:, 8:]).abs().amax() > 1e-4


@pytest.mark.parametrize("name", TINY)
def test_explicit_mask_matches_is_causal_path(name):
    model = tiny(name)
    ids = torch.randint(5, VOCAB, (2, 16))
    with torch.no_grad():
        fast = model.encode(ids, causal=True)
        masked = model.encode(ids, attention_mask=torch.ones_like(ids), causal=True)
    torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=16, max_len=64)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, offset=m) * rope(k, offset=n)).sum()

    for shift in (1, 5, 30):
        torch.testing.assert_close(score(3, 7), score(3 + shift, 7 + shift))
        torch.testing.assert_close(score(10, 2), score(10 + shift, 2 + shift))
    assert not torch.allclose(score(3, 7), score(3, 9))
    # A rotation keeps the norm, and position 0 is the identity.
    torch.testing.assert_close(rope(q, offset=11).norm(), q.norm())
    torch.testing.assert_close(rope(q, offset=0), q)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    gqa = tiny("llama-tiny")  # 4 query heads, 2 kv heads
    mha = tiny("llama-tiny", num_kv_heads=4)
    state = gqa.state_dict()
    hd = 16
    for index, layer in enumerate(gqa.layers):
        weight = layer.attn.qkv.weight.detach()
        q, k, v = weight.split([4 * hd, 2 * hd, 2 * hd])
        k = k.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
        v = v.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
        state[f"layers.{index}.attn.qkv.weight"] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    ids = torch.randint(5, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gqa.encode(ids), mha.encode(ids), rtol=1e-4, atol=1e-5)
    assert gqa.num_parameters() < mha.num_parameters()


def test_relative_buckets_are_antisymmetric_and_bounded():
    index = relative_buckets(128, buckets=8, max_len=128)  # query i, key j: offset i - j
    center = 8 - 1
    assert index.min() >= 0 and index.max() <= 2 * 8 - 2
    torch.testing.assert_close(index - center, -(index.T - center))
    assert (index.diagonal() == center).all()
    assert index[1, 0] == center + 1 and index[127, 0] == 2 * 8 - 2 and index[0, 127] == 0
    assert (index[1:, 0] - index[:-1, 0] >= 0).all()  # farther never maps to a nearer bucket
    assert len(index[:, 0].unique()) == 8  # every bucket of one sign is used


@pytest.mark.parametrize("name", TINY)
def test_loss_starts_near_uniform_and_z_loss_adds_its_term(name):
    model = tiny(name)
    ids = torch.randint(5, VOCAB, (2, 32))
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    plain = model(ids, labels=labels, causal=True)
    assert abs(plain["loss"].item() - math.log(VOCAB)) < 0.3
    regularised = model(ids, labels=labels, causal=True, z_loss=1e-2)
    logits = model(ids, causal=True)["logits"][:, :-1].reshape(-1, VOCAB).float()
    z = torch.logsumexp(logits, dim=-1).square().mean()
    torch.testing.assert_close(plain["z_loss"], z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(regularised["loss"] - plain["loss"], 1e-2 * z, rtol=1e-3,
                               atol=1e-5)
    # The z-term's gradient shrinks the log-partition: a small step along it lowers it.
    model.zero_grad()
    with_z = model(ids, labels=labels, causal=True, z_loss=1.0)["loss"]
    without = model(ids, labels=labels, causal=True)["loss"]
    (with_z - without).backward()  # gradient of the z-term alone
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
        after = model(ids, labels=labels, causal=True)["z_loss"]
    assert after < plain["z_loss"]


def test_families_and_sizes():
    with torch.device("meta"):
        gpt = build_model(arch("gpt-small"), vocab_size=50257)
        llama = build_model(arch("llama-small"), vocab_size=32000)
        base = build_model(arch("gpt-bert-base"), vocab_size=16384)
    assert isinstance(gpt, GPT) and isinstance(llama, Llama) and isinstance(base, LTGBert)
    assert 123e6 < gpt.num_parameters() < 125.5e6  # GPT-2 small: 124M
    assert 100e6 < llama.num_parameters() < 140e6
    assert 90e6 < base.num_parameters() < 130e6
    assert gpt.arch.causal and llama.arch.causal and not base.arch.causal
