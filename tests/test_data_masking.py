"""MLM masking: selection rates, 80/10/10 split, special tokens, exact counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cramming.config.schema import DataConfig
from cramming.data import MLMMasker, iter_documents, train_tokenizer
from cramming.data.keyed_random import KeyedRandom, stream_id

VOCAB, PAD, UNK, CLS, SEP, MASK = 1000, 0, 1, 2, 3, 4
SPECIAL = torch.tensor([PAD, UNK, CLS, SEP, MASK])


def make_rows(batch: int = 64, length: int = 128, seed: int = 0) -> torch.Tensor:
    """Packed-style rows: [CLS] first, some [SEP]s, [PAD] tails of varying length."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(SPECIAL), VOCAB, (batch, length), generator=gen)
    rows[:, 0] = CLS
    rows[torch.rand(batch, length, generator=gen) < 0.05] = SEP
    for i in range(batch):
        rows[i, length - (i % 20) * 3:] = PAD
    return rows


def masker(**kwargs) -> MLMMasker:
    return MLMMasker(VOCAB, MASK, [PAD, UNK, CLS, SEP, MASK], **kwargs)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("p", [0.15, 0.4])
def test_selection_rate_and_80_10_10(p, exact):
    rows = make_rows(batch=256)
    masked, labels = masker(exact_count=exact)(rows, p, torch.Generator().manual_seed(1))
    maskable = ~torch.isin(rows, SPECIAL)
    selected = labels != -100
    assert (labels[selected] == rows[selected]).all()
    assert not (selected & ~maskable).any()
    assert (masked[~selected] == rows[~selected]).all()
    if exact:  # Cramming's rule: round(p * row length) per row, capped by the maskable count
        count = min(round(p * rows.shape[1]), int(maskable.sum(dim=1).min()))
        assert (selected.sum(dim=1) == count).all()
    else:
        assert abs(selected.sum() / maskable.sum() - p) < 0.01
    n = selected.sum()
    as_mask = (masked[selected] == MASK).sum() / n
    unchanged = (masked[selected] == rows[selected]).sum() / n
    replaced = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.02
    assert abs(replaced - 0.1 * (1 - 1 / (VOCAB - 5))) < 0.015
    assert abs(unchanged - 0.1) < 0.015


def test_random_tokens_are_never_special():
    rows = make_rows()
    masked, labels = masker(mask_token_prob=0.0, random_token_prob=1.0)(
        rows, 0.4, torch.Generator().manual_seed(2))
    selected = labels != -100
    assert selected.sum() > 1000
    assert not torch.isin(masked[selected], SPECIAL).any()
    assert ((masked >= 0) & (masked < VOCAB)).all()


@pytest.mark.parametrize("p", [0.15, 0.25, 0.4])
def test_exact_count_per_row(p):
    rows = make_rows()
    _, labels = masker(exact_count=True)(rows, p, torch.Generator().manual_seed(3))
    maskable = (~torch.isin(rows, SPECIAL)).sum(dim=1)
    expected = torch.clamp(maskable, max=round(p * rows.shape[1]))
    assert len(set(maskable.tolist())) > 5  # rows differ in maskable count
    assert (expected < maskable).sum() > 50  # most rows: the fixed count, not a fraction
    assert ((labels != -100).sum(dim=1) == expected).all()


def test_exact_count_matches_cramming_rule_on_full_rows():
    rows = make_rows(length=128)[:, :100]  # no padding in the first 100 columns
    rows = torch.cat([rows, rows[:, 1:29]], dim=1)  # 128 tokens, one [CLS]
    _, labels = masker(exact_count=True)(rows, 0.25, torch.Generator().manual_seed(0))
    assert ((labels != -100).sum(dim=1) == 32).all()  # round(0.25 x 128)


@pytest.mark.parametrize("exact", [False, True])
def test_keyed_masks_depend_only_on_the_row_key(exact):
    """A row's mask is the same whichever batch, order or process computes it."""
    rows, m = make_rows(batch=16), masker(exact_count=exact)
    keys = np.arange(1000, 1016)
    whole = m(rows, 0.25, KeyedRandom(5, 0, keys))
    order = np.random.default_rng(0).permutation(16)
    shuffled = m(rows[order], 0.25, KeyedRandom(5, 0, keys[order]))
    halves = [m(rows[part], 0.25, KeyedRandom(5, 0, keys[part]))
              for part in (slice(0, 8), slice(8, 16))]
    for a, b in zip(whole, shuffled):
        assert torch.equal(a[order], b)
    for index in range(2):  # corrupted inputs, labels
        assert torch.equal(torch.cat([halves[0][index], halves[1][index]]), whole[index])
    other_stream = m(rows, 0.25, KeyedRandom(5, stream_id("selective_backprop"), keys))
    other_seed = m(rows, 0.25, KeyedRandom(6, 0, keys))
    assert not torch.equal(other_stream[1], whole[1])
    assert not torch.equal(other_seed[1], whole[1])


def test_keyed_uniform_is_uniform():
    values = KeyedRandom(0, 0, np.arange(512)).uniform((512, 128)).flatten().double()
    assert abs(values.mean().item() - 0.5) < 0.005
    assert abs(values.var().item() - 1 / 12) < 0.002
    counts = torch.bincount(KeyedRandom(1, 0, np.arange(512)).randint(7, (512, 64)).flatten(),
                            minlength=7)
    assert counts.min() > 0.95 * counts.float().mean()


@pytest.mark.parametrize("exact", [False, True])
def test_same_generator_state_same_output(exact):
    rows, m = make_rows(), masker(exact_count=exact)
    first = m(rows, 0.25, torch.Generator().manual_seed(7))
    second = m(rows, 0.25, torch.Generator().manual_seed(7))
    other = m(rows, 0.25, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[1], other[1])


def test_from_tokenizer_on_real_text(enwiki_files):
    docs = list(iter_documents(DataConfig(paths=[str(enwiki_files[0])], max_documents=100)))
    tok = train_tokenizer(docs, DataConfig(vocab_size=500))
    m = MLMMasker.from_tokenizer(tok, exact_count=True)
    assert m.vocab_size == 500 and m.mask_token_id == tok.mask_token_id
    rows = torch.tensor([tok(d, truncation=True, max_length=64, padding="max_length")["input_ids"]
                         for d in docs[:32]])
    masked, labels = m(rows, 0.15, torch.Generator().manual_seed(0))
    special = torch.tensor(tok.all_special_ids)
    assert (labels[torch.isin(rows, special)] == -100).all()
    assert (masked[torch.isin(rows, special)] == rows[torch.isin(rows, special)]).all()
    assert (labels != -100).any()
