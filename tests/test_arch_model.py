"""Our crammed encoder: prediction modes, attention paths, variants, init, training."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn

from cramming.architectures import IGNORE_INDEX, CrammedBERT, build_model
from cramming.config.schema import ArchConfig
from cramming.errors import CrammingError

VOCAB = 97
TINY = ArchConfig(
    name="test-tiny",
    num_layers=2,
    hidden_size=32,
    num_heads=4,
    intermediate_size=48,
    max_seq_length=32,
    dropout=0.0,
    attention_dropout=0.0,
    attention_impl="sdpa",
)


def tiny(**overrides) -> ArchConfig:
    return dataclasses.replace(TINY, **overrides)


def make_batch(batch: int = 3, seq_len: int = 16, mask_prob: float = 0.3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (batch, seq_len), generator=gen)
    masked = torch.rand(batch, seq_len, generator=gen) < mask_prob
    masked[0, :2] = True  # at least two predictions
    masked[-1] = False  # one row without predictions
    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    return input_ids, labels


def twin(model: CrammedBERT, **overrides) -> CrammedBERT:
    """A model with the same weights and some arch options changed."""
    other = CrammedBERT(dataclasses.replace(model.arch, **overrides), VOCAB)
    other.load_state_dict(model.state_dict())
    return other


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sparse_equals_dense_loss_and_gradients():
    torch.manual_seed(0)
    sparse = CrammedBERT(tiny(sparse_prediction=True, prediction_head=True), VOCAB)
    dense = twin(sparse, sparse_prediction=False)
    input_ids, labels = make_batch()
    out_s, out_d = sparse(input_ids, labels), dense(input_ids, labels)
    n_masked = int((labels != IGNORE_INDEX).sum())
    assert out_s["logits"].shape == (n_masked, VOCAB)
    assert out_d["logits"].shape == (*labels.shape, VOCAB)
    torch.testing.assert_close(out_s["loss"], out_d["loss"])
    assert int(out_s["num_predictions"]) == int(out_d["num_predictions"]) == n_masked
    assert int(out_s["num_correct"]) == int(out_d["num_correct"])
    out_s["loss"].backward()
    out_d["loss"].backward()
    g_s, g_d = grads(sparse), grads(dense)
    assert g_s.keys() == g_d.keys() and len(g_s) > 0
    for name in g_s:
        torch.testing.assert_close(g_s[name], g_d[name], msg=name)


def test_reference_loss_and_accuracy():
    torch.manual_seed(0)
    model = CrammedBERT(tiny(), VOCAB)
    input_ids, labels = make_batch()
    out = model(input_ids, labels)
    logits = model.predict(model.encode(input_ids))
    keep = labels != IGNORE_INDEX
    expected = nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out["loss"], expected)
    correct = (logits[keep].argmax(-1) == labels[keep]).sum()
    assert int(out["num_correct"]) == int(correct)


def test_fixed_masked_fraction_matches_sparse_with_static_shape():
    torch.manual_seed(0)
    sparse = CrammedBERT(tiny(), VOCAB)
    input_ids, labels = make_batch()
    n_masked = int((labels != IGNORE_INDEX).sum())
    reference = sparse(input_ids, labels, return_per_example_loss=True)
    for fraction in (n_masked / labels.numel(), 0.5):  # exact count, and padded with unmasked
        fixed = twin(sparse, fixed_masked_fraction=fraction)
        out = fixed(input_ids, labels, return_per_example_loss=True)
        assert out["logits"].shape == (round(fraction * labels.numel()), VOCAB)
        torch.testing.assert_close(out["loss"], reference["loss"])
        torch.testing.assert_close(out["per_example_loss"], reference["per_example_loss"])
        assert int(out["num_predictions"]) == n_masked
    # The static shape does not depend on how many tokens are masked.
    fixed = twin(sparse, fixed_masked_fraction=0.5)
    _, other_labels = make_batch(mask_prob=0.1, seed=1)
    assert fixed(input_ids, other_labels)["logits"].shape == (24, VOCAB)


def test_fixed_masked_fraction_drops_extra_masked_positions():
    """Documented behaviour: only the first n masked positions (row-major) are decoded."""
    torch.manual_seed(0)
    sparse = CrammedBERT(tiny(), VOCAB)
    input_ids, labels = make_batch(mask_prob=0.6)
    n = 10
    assert int((labels != IGNORE_INDEX).sum()) > n
    fixed = twin(sparse, fixed_masked_fraction=n / labels.numel())
    out = fixed(input_ids, labels)
    kept = labels.flatten().clone()
    masked_positions = (kept != IGNORE_INDEX).nonzero().squeeze(1)
    kept[masked_positions[n:]] = IGNORE_INDEX
    expected = sparse(input_ids, kept.view_as(labels))
    assert out["logits"].shape == (n, VOCAB)
    assert int(out["num_predictions"]) == n
    torch.testing.assert_close(out["loss"], expected["loss"])


@pytest.mark.parametrize("sparse_prediction", [True, False])
def test_per_example_loss_averages_back_to_loss(sparse_prediction):
    torch.manual_seed(0)
    model = CrammedBERT(tiny(sparse_prediction=sparse_prediction), VOCAB)
    input_ids, labels = make_batch(batch=4)
    out = model(input_ids, labels, return_per_example_loss=True)
    counts = (labels != IGNORE_INDEX).sum(dim=1)
    per_example = out["per_example_loss"]
    assert per_example.shape == (4,)
    assert per_example[-1] == 0  # the row without predictions
    torch.testing.assert_close((per_example * counts).sum() / counts.sum(), out["loss"])
    single = model(input_ids[:1], labels[:1])["loss"]
    torch.testing.assert_close(per_example[0], single)
    assert model(input_ids, labels)["per_example_loss"] is None  # off by default


def test_no_labels_gives_dense_logits_and_no_loss():
    model = CrammedBERT(tiny(), VOCAB)
    input_ids, _ = make_batch()
    out = model(input_ids)
    assert out["loss"] is None and out["logits"].shape == (*input_ids.shape, VOCAB)
    assert model.encode(input_ids).shape == (*input_ids.shape, TINY.hidden_size)


def test_batch_without_masks_has_zero_loss_not_nan():
    model = CrammedBERT(tiny(), VOCAB)
    input_ids, labels = make_batch()
    out = model(input_ids, torch.full_like(labels, IGNORE_INDEX))
    assert out["loss"] == 0 and int(out["num_predictions"]) == 0


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_matches_eager(with_mask):
    torch.manual_seed(0)
    sdpa = CrammedBERT(tiny(attention_impl="sdpa"), VOCAB).eval()
    eager = twin(sdpa, attention_impl="eager").eval()
    input_ids, _ = make_batch()
    mask = torch.ones_like(input_ids)
    mask[1, 10:] = 0
    mask = mask if with_mask else None
    torch.testing.assert_close(sdpa.encode(input_ids, mask), eager.encode(input_ids, mask))


@pytest.mark.parametrize("impl", ["sdpa", "eager", "auto"])
def test_padding_does_not_influence_real_tokens(impl):
    torch.manual_seed(0)
    model = CrammedBERT(tiny(attention_impl=impl), VOCAB).eval()
    input_ids, _ = make_batch(batch=2)
    mask = torch.ones_like(input_ids)
    mask[0, 9:] = 0
    garbage = input_ids.clone()
    garbage[0, 9:] = torch.randint(1, VOCAB, (7,))
    out_a = model.encode(input_ids, mask)
    out_b = model.encode(garbage, mask)
    alone = model.encode(input_ids[:1, :9])
    torch.testing.assert_close(out_a[0, :9], out_b[0, :9])
    torch.testing.assert_close(out_a[0, :9], alone[0])
    torch.testing.assert_close(out_a[1], out_b[1])
    # Without the mask the pad tokens do change the outputs: the test can fail.
    assert not torch.allclose(model.encode(input_ids)[0, :9], model.encode(garbage)[0, :9])


VARIANTS = list(
    itertools.product(
        ["pre", "post"],
        ["glu", "mlp"],
        ["scaled-sinusoidal", "sinusoidal", "learned"],
        [True, False],
    )
)


@pytest.mark.parametrize("norm_scheme,ffn,position,bias", VARIANTS)
def test_variants_build_run_and_train(norm_scheme, ffn, position, bias):
    arch = tiny(
        norm_scheme=norm_scheme,
        ffn=ffn,
        position_embedding=position,
        linear_bias=bias,
        norm="rmsnorm" if bias else "layernorm",
        activation="relu" if bias else "silu",
        type_vocab_size=2 if bias else 0,
        dropout=0.1,
        attention_dropout=0.1,
    )
    model = build_model(arch, VOCAB)
    input_ids, labels = make_batch()
    token_types = torch.zeros_like(input_ids) if bias else None
    out = model(input_ids, labels, token_type_ids=token_types)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.embeddings.word.weight.grad.abs().sum() > 0


def test_linear_bias_switch_and_init():
    no_bias = CrammedBERT(tiny(linear_bias=False, prediction_head=True), VOCAB)
    linears = [m for m in no_bias.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 2 + 2 * 2 + 2  # per layer qkv, out, ffn in/out; head, decoder
    assert all(m.bias is None for m in linears)
    with_bias = CrammedBERT(tiny(linear_bias=True, prediction_head=True), VOCAB)
    biases = [m.bias for m in with_bias.modules() if isinstance(m, nn.Linear)]
    assert all(b is not None and (b == 0).all() for b in biases)
    norms = [m for m in with_bias.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1 + 2 * 2 + 1 + 1  # embedding, per layer 2, final, head
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in norms)
    word = with_bias.embeddings.word.weight
    assert (word[0] == 0).all()
    assert abs(word[1:].std().item() - TINY.init_std) < 0.003


def test_tied_weights_are_shared():
    tied = CrammedBERT(tiny(tie_weights=True), VOCAB)
    assert tied.decoder.weight is tied.embeddings.word.weight
    untied = CrammedBERT(tiny(tie_weights=False), VOCAB)
    assert untied.decoder.weight is not untied.embeddings.word.weight
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * TINY.hidden_size
    assert tied.num_parameters(exclude_embeddings=True) == (
        tied.num_parameters() - VOCAB * TINY.hidden_size
    )


def test_sequence_too_long_and_missing_flash_attn_are_clear_errors():
    model = CrammedBERT(tiny(), VOCAB)
    with pytest.raises(CrammingError, match="max_seq_length"):
        model(torch.ones(1, TINY.max_seq_length + 1, dtype=torch.long))
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(CrammingError, match="flash-attn"):
            CrammedBERT(tiny(attention_impl="flash-attn"), VOCAB)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(tiny(hidden_size=64, intermediate_size=128), VOCAB)
    input_ids, labels = make_batch(batch=4, seq_len=16, mask_prob=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(input_ids, labels)["loss"].item()
    assert abs(first - math.log(VOCAB)) < 0.3
    for _ in range(50):
        loss = model(input_ids, labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.25 * first
