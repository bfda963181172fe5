"""Masking as the originals do it: GPT-BERT's span masking (against its measured rates),
Cramming's fixed-count collator, and what the engine logs and weights from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.data import MLMMasker
from cramming.data.keyed_random import KeyedRandom
from cramming.data.masking import IGNORE_INDEX
from cramming.errors import ConfigError
from cramming.objectives import build_objective
from cramming.objectives.span import SpanMasker
from cramming.pretrain import run_pretraining

pytestmark = pytest.mark.usefixtures("single_thread")

# The fixture's setting: vocabulary 8192, ids below 16 special, 127 content tokens a row.
GPT_BERT_VOCAB, GPT_BERT_SPECIAL, GPT_BERT_MASK = 8192, 16, 4


def gpt_bert_rows(count: int = 2000, content: int = 127) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(GPT_BERT_SPECIAL, GPT_BERT_VOCAB, (count, content + 1),
                         generator=generator)
    rows[:, 0] = 1  # <s>
    return rows


def span_statistics(rows: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor) -> dict:
    """Masked fraction of the content tokens, corruption split, mean masked run length."""
    selected = labels != IGNORE_INDEX
    content = selected[:, 1:].float()
    n = selected.sum()
    as_mask = (masked[selected] == GPT_BERT_MASK).sum() / n
    kept = (masked[selected] == rows[selected]).sum() / n
    edges = torch.diff(torch.nn.functional.pad(content, (1, 1)), dim=1)
    return {"fraction": (content.sum(1) / content.shape[1]).mean().item(),
            "mask": as_mask.item(), "random": (1 - as_mask - kept).item(), "keep": kept.item(),
            "run": (content.sum() / (edges == 1).sum()).item()}


def test_span_masking_reaches_gpt_bert_measured_rates(shared_reference: Path):
    reference = json.loads((shared_reference / "masking" / "gpt-bert-span-masking.json")
                           .read_text())["by_mask_p"]
    masker = SpanMasker(GPT_BERT_VOCAB, GPT_BERT_MASK, range(GPT_BERT_SPECIAL), max_span=3)
    rows = gpt_bert_rows()
    for mask_p, expected in reference.items():
        masked, labels = masker(rows, float(mask_p), KeyedRandom(0, 0, np.arange(len(rows))))
        got = span_statistics(rows, masked, labels)
        assert got["fraction"] == pytest.approx(expected["mean_masked_fraction"], abs=0.005)
        for kind in ("mask", "random", "keep"):
            assert got[kind] == pytest.approx(expected["replacement_fractions"][kind],
                                              abs=0.005), kind
        assert got["run"] == pytest.approx(expected["mean_masked_run_length"], abs=0.03)


def test_span_corruption_is_one_decision_per_span_and_the_count_rule_holds():
    rows = gpt_bert_rows(400)
    rows[:, 60:64] = 2  # a stretch of special tokens inside the row
    masker = SpanMasker(GPT_BERT_VOCAB, GPT_BERT_MASK, range(GPT_BERT_SPECIAL), max_span=3,
                        mask_token_prob=0.5, random_token_prob=0.0)
    masked, labels = masker(rows, 0.3, torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    assert not selected[rows < GPT_BERT_SPECIAL].any()
    # Neighbours in a masked run share a span most of the time, hence its decision: per-token
    # decisions would agree only half the time at 50/50.
    both = selected[:, 1:] & selected[:, :-1]
    as_mask = masked == GPT_BERT_MASK
    agree = (as_mask[:, 1:] == as_mask[:, :-1])[both].float().mean()
    assert agree > 0.75
    # k = max(1, int(n p + u)) spans-worth of tokens: at least k, overshooting by < one span
    maskable = (rows >= GPT_BERT_SPECIAL).sum(1)
    count = selected.sum(1)
    assert (count >= torch.floor(maskable * 0.3)).all()
    assert (count <= torch.ceil(maskable * 0.3) + 2).all()
    tiny = masker(rows, 1e-4, torch.Generator().manual_seed(2))[1] != IGNORE_INDEX
    assert (tiny.sum(1) >= 1).all()  # at least one span per row, as GPT-BERT's max(1, ...)


def test_cramming_fixed_counts_per_row():
    """32 of 128 per row, 26 [MASK] / 3 random / 3 kept, by fixed counts."""
    vocab, mask = 32768, 4
    rows = torch.randint(5, vocab, (64, 128), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = 2
    masker = MLMMasker(vocab, mask, [0, 1, 2, 3], exact_count=True)
    masked, labels = masker(rows, 0.25, torch.Generator().manual_seed(3))
    selected = labels != IGNORE_INDEX
    assert (selected.sum(1) == 32).all()
    assert ((masked == mask) & selected).sum(1).tolist() == [26] * 64
    replaced = (masked != rows) & (masked != mask)
    assert replaced.sum(1).tolist() == [3] * 64
    assert not selected[:, 0].any()  # our default: [CLS] is never a target


def test_cramming_switch_masks_special_tokens_like_the_original_collator():
    vocab, mask, special = 1000, 4, [0, 1, 2, 3]
    rows = torch.randint(5, vocab, (256, 128), generator=torch.Generator().manual_seed(0))
    rows[:, 0], rows[:, 100:] = 2, 0  # [CLS] and a [PAD] tail: 29 of 128 special
    original = MLMMasker(vocab, mask, special, exact_count=True, mask_special_tokens=True)
    _, labels = original(rows, 0.25, torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    assert (selected.sum(1) == 32).all()  # even where fewer than 32 are ordinary tokens
    share = selected[rows < 5].float().mean() / selected.float().mean()
    assert 0.9 < share < 1.1  # special positions as likely as any other
    randomised = MLMMasker(vocab, mask, special, mask_token_prob=0.0, random_token_prob=1.0,
                           exact_count=True, mask_special_tokens=True)
    replaced, labels = randomised(rows, 0.25, torch.Generator().manual_seed(2))
    assert (replaced[labels != IGNORE_INDEX] < 5).any()  # replacements from the whole vocab
    ours = MLMMasker(vocab, mask, special, exact_count=True)
    _, labels = ours(rows, 0.25, torch.Generator().manual_seed(1))
    assert not (labels != IGNORE_INDEX)[rows < 5].any()


class _Tokenizer:
    """What build_objective reads from a tokenizer."""

    mask_token_id, sep_token_id, all_special_ids = 4, 3, [0, 1, 2, 3, 4]

    def __len__(self) -> int:
        return 1000


def test_bert_o4_takes_the_switch_and_rejects_it_for_spans():
    cfg = load_pretrain_config(compose("pretrain", ["train=bert-o4"]))
    assert cfg.train.exact_mask_count and not cfg.train.mask_special_tokens
    default = build_objective(cfg, _Tokenizer())
    assert not default.masker.mask_special_tokens
    assert default.static_decode_fraction(128) == 0.25
    cfg = load_pretrain_config(compose("pretrain", ["train=bert-o4",
                                                    "train.mask_special_tokens=true"]))
    assert build_objective(cfg, _Tokenizer()).masker.mask_special_tokens
    cfg.train.mask_span_length = 3
    with pytest.raises(ConfigError, match="mask_special_tokens"):
        build_objective(cfg, _Tokenizer())


class RecordTargets(TrainingHook):
    """Per step: each microbatch's real mask rate and sum of token losses (same weights)."""

    name = "record_targets"

    def __init__(self, special: list[int]):
        self.special = torch.tensor(special)
        self.steps: list[dict] = []

    def before_step(self, trainer):
        self.steps.append({"masked": 0, "maskable": 0, "loss_sum": 0.0, "targets": 0,
                           "rates": []})

    def select_batch(self, trainer, batch):
        step = self.steps[-1]
        selected = batch.labels != IGNORE_INDEX
        original = torch.where(selected, batch.labels, batch.input_ids)
        maskable = int((~torch.isin(original, self.special)).sum())
        step["rates"].append(int(selected.sum()) / maskable)
        with torch.no_grad():
            out = trainer.model(batch.input_ids, labels=batch.labels, **batch.model_kwargs)
        step["loss_sum"] += float(out["loss"]) * int(out["num_predictions"])
        step["targets"] += int(out["num_predictions"])
        return batch


def test_engine_logs_the_real_mask_rate_and_token_weights_the_loss(tiny_overrides, tmp_path):
    cfg = load_pretrain_config(compose("pretrain", [
        *tiny_overrides, "budget=3", "arch.dropout=0", "arch.attention_dropout=0",
        "arch.sparse_prediction=false", "train.mask_span_length=3",
        "train.exact_mask_count=false", "train.mask_prob=0.3", "train.token_weighted_loss=true"]))
    special = [0, 1, 2, 3, 4]  # our tokenizers' [PAD] [UNK] [CLS] [SEP] [MASK]
    recorder = RecordTargets(special)
    run_pretraining(cfg, tmp_path, hooks=[recorder])
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "mask_rate" in r]
    assert len(records) == 3
    for record, seen in zip(records, recorder.steps):
        assert record["mask_rate"] == pytest.approx(np.mean(seen["rates"]), rel=1e-6)
        assert record["mask_rate"] > 0.3  # whole spans: GPT-BERT's rule overshoots p
        # the step's loss is the mean over all its targets, not the mean of microbatch means
        assert record["loss"] == pytest.approx(seen["loss_sum"] / seen["targets"], rel=1e-5)
        assert 0 < record["accuracy"] < 1
