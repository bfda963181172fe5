"""Arch YAMLs, parameter counts, FLOP formula and the transformers BERT wrapper."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cramming.architectures import IGNORE_INDEX, HFBert, build_model
from cramming.config import CONFIG_DIR, to_typed
from cramming.config.schema import CHOICES, ArchConfig

ARCH_DIR = CONFIG_DIR / "arch"
ARCH_CHOICES = {k[len("arch.") :]: v for k, v in CHOICES.items() if k.startswith("arch.")}
YAMLS = sorted(ARCH_DIR.glob("*.yaml"))
VOCAB = 32768


def load_arch(path: Path) -> ArchConfig:
    raw = OmegaConf.load(path)
    schema_keys = {f.name for f in dataclasses.fields(ArchConfig)}
    assert set(raw.keys()) == schema_keys, f"{path.name} must list every ArchConfig key"
    return to_typed(raw, ArchConfig, ARCH_CHOICES)


def test_expected_yamls_exist():
    names = {p.stem for p in YAMLS}
    assert {
        "crammed-bert",
        "bert-c5",
        "bert-base",
        "hf-bert-base",
        "hf-bert-tiny",
        "bert-tiny",
        "bert-small",
    } <= names


def expected_crammed_params(arch: ArchConfig, vocab: int) -> int:
    """Hand count for a pre-LN, bias-free GLU model with tied decoder and no head."""
    h, i = arch.hidden_size, arch.intermediate_size
    layer = 4 * h * h + 3 * h * i + 2 * 2 * h  # attention, GLU FFN, two LayerNorms
    return vocab * h + 1 + 2 * h + arch.num_layers * layer + 2 * h  # + pos scale, emb/final LN


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_yaml_builds_on_meta(path):
    arch = load_arch(path)
    assert arch.name == path.stem
    with torch.device("meta"):
        model = build_model(arch, vocab_size=VOCAB)
    params = model.num_parameters()
    if arch.name == "crammed-bert":
        # Cramming reports ~120M: 25.2M tied embedding + 16 layers x 5.9M.
        assert params == expected_crammed_params(arch, VOCAB)
        assert 115e6 < params < 121e6
    elif arch.name == "bert-c5":
        # crammed-bert plus the bias-free h x h Linear of the old ScriptableMaskedLM head.
        assert params == expected_crammed_params(arch, VOCAB) + arch.hidden_size**2
    elif arch.name in ("bert-base", "hf-bert-base"):
        # BERT-base is 110M with 30522 tokens; 32768 adds 2246 x 768 = 1.7M.
        assert 110e6 < params < 113e6
    elif arch.name in ("bert-tiny", "bert-small"):
        assert params == expected_crammed_params(arch, VOCAB)
    elif arch.name == "hf-bert-tiny":
        # 4.19M words + 66K positions/types + 2 x 198K layers + 17K head + 33K decoder bias
        assert 4.65e6 < params < 4.75e6


def test_bert_c5_is_ntng_size_with_a_linear_head():
    """NTNG's arch=bert-c5 has 120,179,713 parameters at vocabulary 32768 / sequence 128
    (shared/reference/README.md); its head is one bias-free Linear, no activation, no norm."""
    arch = load_arch(ARCH_DIR / "bert-c5.yaml")
    assert arch.max_seq_length == 128
    with torch.device("meta"):
        model = build_model(arch, vocab_size=VOCAB)
    assert model.num_parameters() == 120_179_713
    head = model.head
    assert head.dense.bias is None and head.act is None and head.norm is None
    assert [n for n, _ in head.named_parameters()] == ["dense.weight"]


def test_linear_head_is_just_the_dense_layer():
    torch.manual_seed(0)
    arch = ArchConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=48,
                      prediction_head=True, prediction_head_type="linear", dropout=0.0,
                      attention_dropout=0.0)
    model = build_model(arch, vocab_size=50).eval()
    hidden = torch.randn(3, 32)
    expected = hidden @ model.head.dense.weight.T @ model.embeddings.word.weight.T
    torch.testing.assert_close(model.predict(hidden), expected)
    bert = build_model(dataclasses.replace(arch, prediction_head_type="bert"), 50)
    assert model.num_parameters() == bert.num_parameters() - 2 * 32  # no LayerNorm


# Parameter counts of ltgoslo/gpt-bert's Bert (model_extra.py: GPT-BERT, model.py: LTG-BERT)
# at configs/small.json (V 8192, h 384, i 1280) and configs/base.json (V 16384, h 768,
# i 2560), 12 layers, 32 buckets, counted from its code (model.parameters(), tied decoder once):
#   word V h + relative (2*32-1) h + relative LayerNorm 2h (the only affine norm)
#   + 12 x [in_proj_qk 2h^2+2h, in_proj_vg 2h^2+2h (model.py: in_proj_v h^2+h),
#           out_proj h^2+h, GeGLU h*2i + i*h without biases]
#   + DWA alphas sum_{j<24} (j+2) = 324 (model_extra.py only)
#   + classifier Linear h^2+h and decoder bias V.
GPT_BERT_PARAMETERS = {
    ("gpt-bert-small", 8192): 29_892_164,
    ("gpt-bert-base", 16384): 119_454_532,
    ("ltg-bert-small", 8192): 28_117_760,
    ("ltg-bert-base", 16384): 112_367_104,
}


@pytest.mark.parametrize("name, vocab", list(GPT_BERT_PARAMETERS), ids=lambda x: str(x))
def test_gpt_bert_parameter_counts_equal_the_original(name, vocab):
    with torch.device("meta"):
        model = build_model(load_arch(ARCH_DIR / f"{name}.yaml"), vocab_size=vocab)
    assert model.num_parameters() == GPT_BERT_PARAMETERS[(name, vocab)]


def test_our_bert_base_matches_hf_parameter_count():
    """Same shape, same parameters (HF has a 1-row token-type table; pooler is not built)."""
    ours = load_arch(ARCH_DIR / "bert-base.yaml")
    hf = load_arch(ARCH_DIR / "hf-bert-base.yaml")
    with torch.device("meta"):
        n_ours = build_model(ours, VOCAB).num_parameters()
        n_hf = build_model(hf, VOCAB).num_parameters()
    assert n_ours == n_hf


@pytest.mark.parametrize("name", ["bert-tiny", "hf-bert-tiny"])
def test_tiny_yamls_run_on_cpu(name):
    torch.manual_seed(0)
    model = build_model(load_arch(ARCH_DIR / f"{name}.yaml"), vocab_size=512)
    input_ids = torch.randint(1, 512, (2, 128))
    labels = torch.where(torch.rand(2, 128) < 0.25, input_ids, IGNORE_INDEX)
    out = model(input_ids, labels)
    assert abs(out["loss"].item() - math.log(512)) < 0.3


def test_flops_per_token_hand_count():
    arch = ArchConfig(
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        intermediate_size=128,
        ffn="glu",
        prediction_head=False,
        sparse_prediction=True,
    )
    model = build_model(arch, vocab_size=100)
    # Per layer: QKV+out 4*64^2 = 16384, GLU 3*64*128 = 24576 -> 40960 params;
    # attention 2*s*h = 2*16*64 = 2048. Body: 2 * (40960 + 2048) = 86016.
    # Decoder 64*100 = 6400 on a quarter of the tokens: 1600. Training: 6 * 87616.
    assert model.flops_per_token(16, 0.25) == 6 * 87616 == 525696
    dense = build_model(dataclasses.replace(arch, sparse_prediction=False), vocab_size=100)
    assert dense.flops_per_token(16, 0.25) == 6 * (86016 + 6400)
    head = build_model(dataclasses.replace(arch, prediction_head=True, ffn="mlp"), 100)
    # MLP: 4*4096 + 2*64*128 = 32768; head adds 64^2 = 4096 before the decoder.
    assert head.flops_per_token(16, 0.25) == 6 * (2 * (32768 + 2048) + 0.25 * (4096 + 6400))


def test_flops_close_to_six_n_for_crammed_bert():
    """Sanity: without attention, FLOPs/token ~ 6 x (non-embedding params + decoder share)."""
    arch = load_arch(ARCH_DIR / "crammed-bert.yaml")
    with torch.device("meta"):
        model = build_model(arch, VOCAB)
    body = model.num_parameters(exclude_embeddings=True)
    flops = model.flops_per_token(128, 0.25)
    attention = 12 * 16 * 128 * 768
    expected = 6 * (body + 0.25 * VOCAB * 768) + attention
    assert abs(flops - expected) / expected < 0.001  # only norms/scale differ


def hf_tiny(**overrides) -> ArchConfig:
    return dataclasses.replace(load_arch(ARCH_DIR / "hf-bert-tiny.yaml"), **overrides)


def test_hf_bert_wrapper_interface():
    torch.manual_seed(0)
    vocab = 300
    model = build_model(hf_tiny(sparse_prediction=True), vocab_size=vocab)
    assert isinstance(model, HFBert) and model.hidden_size == 128 and model.vocab_size == vocab
    assert model.model.config._attn_implementation == "sdpa"
    decoder = model.model.cls.predictions.decoder.weight
    assert decoder.data_ptr() == model.model.bert.embeddings.word_embeddings.weight.data_ptr()
    input_ids = torch.randint(1, vocab, (3, 20))
    labels = torch.where(torch.rand(3, 20) < 0.3, input_ids, IGNORE_INDEX)
    labels[2] = IGNORE_INDEX
    mask = torch.ones_like(input_ids)
    mask[1, 15:] = 0
    out = model(input_ids, labels, attention_mask=mask, return_per_example_loss=True)
    n = int((labels != IGNORE_INDEX).sum())
    assert out["logits"].shape == (n, vocab) and int(out["num_predictions"]) == n
    assert abs(out["loss"].item() - math.log(vocab)) < 0.2
    counts = (labels != IGNORE_INDEX).sum(1)
    weighted = (out["per_example_loss"] * counts).sum() / counts.sum()
    torch.testing.assert_close(weighted, out["loss"])
    assert out["per_example_loss"][2] == 0
    assert model.encode(input_ids, mask).shape == (3, 20, 128)
    assert model(input_ids)["logits"].shape == (3, 20, vocab)
    out["loss"].backward()
    assert decoder.grad is not None and torch.isfinite(decoder.grad).all()


def test_hf_bert_sparse_equals_dense_and_flops_dense():
    torch.manual_seed(0)
    sparse = build_model(hf_tiny(sparse_prediction=True), vocab_size=200).eval()
    dense = build_model(hf_tiny(sparse_prediction=False), vocab_size=200).eval()
    dense.load_state_dict(sparse.state_dict())
    input_ids = torch.randint(1, 200, (2, 16))
    labels = torch.where(torch.rand(2, 16) < 0.3, input_ids, IGNORE_INDEX)
    torch.testing.assert_close(sparse(input_ids, labels)["loss"], dense(input_ids, labels)["loss"])
    # HF structure: MLP FFN 2*h*i plus the prediction head, decoded on every token.
    h, i, s = 128, 512, 16
    expected = 6 * (2 * (4 * h * h + 2 * h * i + 2 * s * h) + h * h + h * 200)
    assert dense.flops_per_token(s, 0.25) == expected
