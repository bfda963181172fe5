"""CLM / MNTP / hybrid objectives: targets, exact ratios, rank split, span masking,
sequence-length schedule, EMA. The N-rank hybrid through the engine: test_hybrid_ranks.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from cramming.architectures import build_model
from cramming.backend.ema import EMAHook
from cramming.config import CONFIG_DIR, compose, load_pretrain_config, to_typed
from cramming.config.schema import ArchConfig, PretrainConfig, TrainConfig
from cramming.data import MLMMasker
from cramming.errors import ConfigError
from cramming.objectives import (
    CausalLanguageModeling,
    HybridObjective,
    MaskedLanguageModeling,
    SequenceLengthSchedule,
    kind_for_microbatch,
    kind_for_rank,
)
from cramming.objectives.common import ModelArguments, document_ids
from cramming.objectives.mlm import masking_generator
from cramming.objectives.seq_length import seq_length_at
from cramming.objectives.span import SpanMasker
from cramming.schedules import batch_size_at

VOCAB, CLS, SEP, MASK = 200, 1, 2, 3
SPECIAL = [0, CLS, SEP, MASK]



pytestmark = pytest.mark.usefixtures("single_thread")

def lm_config() -> PretrainConfig:
    raw = OmegaConf.load(CONFIG_DIR / "arch" / "ltg-bert-tiny.yaml")
    return PretrainConfig(arch=to_typed(raw, ArchConfig))


def rows(count: int, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (count, length), generator=generator)
    ids[:, 0] = CLS
    ids[:, length // 2] = SEP
    return {"input_ids": ids, "example_ids": torch.arange(count) + 100 * seed}


def hybrid(numerator: int, denominator: int, rank: int = 0, world: int = 1) -> HybridObjective:
    cfg = lm_config()
    args = ModelArguments(cfg, SEP)
    masker = MLMMasker(VOCAB, MASK, SPECIAL)
    mlm = MaskedLanguageModeling(masker, cfg.train, seed=0, next_token=True, model_args=args,
                                 causal=False)
    return HybridObjective(mlm, CausalLanguageModeling(cfg.train, args), numerator,
                           denominator, rank, world)


def test_clm_targets_are_the_next_token_with_causal_attention():
    batch = hybrid(0, 1).microbatch(rows(3), 0.0, 0)
    ids = rows(3)["input_ids"]
    assert batch.kind == "clm" and batch.model_kwargs == {"causal": True}
    assert torch.equal(batch.input_ids, ids)
    assert torch.equal(batch.labels[:, :-1], ids[:, 1:])
    assert (batch.labels[:, -1] == -100).all()


def test_mntp_predicts_each_masked_token_one_position_earlier():
    data = rows(8, 32)
    batch = hybrid(1, 1).microbatch(data, 0.0, 5)
    assert batch.kind == "mlm" and batch.model_kwargs == {"causal": False}
    masker = MLMMasker(VOCAB, MASK, SPECIAL)
    inputs, plain = masker(data["input_ids"], TrainConfig().mask_prob, masking_generator(0, 5))
    assert torch.equal(batch.input_ids, inputs)
    selected = plain != -100
    assert selected.sum() > 10
    assert torch.equal(batch.labels[:, :-1], plain[:, 1:])
    targets = selected[:, 1:]
    assert torch.equal(batch.labels[:, :-1][targets], data["input_ids"][:, 1:][targets])
    assert (batch.labels[:, -1] == -100).all()


@pytest.mark.parametrize("numerator, denominator", [(1, 2), (1, 4), (3, 4), (15, 16)])
def test_hybrid_ratio_is_exact_in_every_step_even_during_the_batch_ramp(numerator, denominator):
    micro = 4
    train = dataclasses.replace(TrainConfig(), objective="hybrid", batch_size=micro * 2
                                * denominator * 4, batch_size_ramp=0.5,
                                hybrid_numerator=numerator, hybrid_denominator=denominator)
    objective = hybrid(numerator, denominator)
    index, sizes = 0, set()
    for step in range(40):
        accumulation = batch_size_at(step / 40, train, micro) // micro
        sizes.add(accumulation)
        kinds = [objective.kind_at(i) for i in range(index, index + accumulation)]
        index += accumulation
        assert kinds.count("mlm") * denominator == accumulation * numerator
        assert kinds == [kind_for_microbatch(i, (numerator, denominator))
                         for i in range(index - accumulation, index)]
    assert len(sizes) > 2  # the ramp really changed the number of microbatches


def test_rank_split_follows_the_ratio_and_rejects_world_sizes_that_do_not_fit():
    assert [kind_for_rank(r, 4, (1, 4)) for r in range(4)] == ["mlm", "clm", "clm", "clm"]
    assert [kind_for_rank(r, 4, (3, 4)) for r in range(4)] == ["mlm", "mlm", "mlm", "clm"]
    assert [kind_for_rank(r, 8, (1, 2)) for r in range(8)] == ["mlm"] * 4 + ["clm"] * 4
    assert [kind_for_rank(r, 2, (2, 4)) for r in range(2)] == ["mlm", "clm"]
    with pytest.raises(ConfigError, match="multiple of 4 processes"):
        kind_for_rank(0, 3, (1, 4))
    with pytest.raises(ConfigError, match="multiple of 2 processes"):
        hybrid(2, 4, rank=0, world=3)
    ranked = hybrid(1, 4, rank=2, world=4)
    assert {ranked.kind_at(i) for i in range(10)} == {"clm"}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(lm_config().arch, vocab_size=VOCAB)


def test_span_masking_selects_contiguous_spans_at_about_the_rate():
    ids = torch.randint(5, VOCAB, (64, 128))
    masker = SpanMasker(VOCAB, MASK, SPECIAL, max_span=3)
    _, labels = masker(ids, 0.3, torch.Generator().manual_seed(0))
    selected = labels != -100
    assert 0.22 < selected.float().mean() < 0.33
    flat = torch.cat([selected, torch.zeros(64, 1, dtype=torch.bool)], dim=1).flatten()
    starts = (flat[1:] & ~flat[:-1]).sum() + flat[0]
    mean_run = flat.sum() / starts
    assert 1.7 < mean_run < 3.2  # token masking at this rate gives runs of ~1.4
    _, token_labels = MLMMasker(VOCAB, MASK, SPECIAL)(ids, 0.3, torch.Generator().manual_seed(0))
    flat = torch.cat([token_labels != -100, torch.zeros(64, 1, dtype=torch.bool)], 1).flatten()
    assert flat.sum() / ((flat[1:] & ~flat[:-1]).sum() + flat[0]) < 1.6


def test_sequence_length_schedule_cuts_rows_and_keeps_tokens_per_batch():
    schedule = [[0, 16], [0.5, 32], [0.8, 64]]
    assert [seq_length_at(p, schedule, 64) for p in (0.0, 0.49, 0.5, 0.79, 0.8, 1.0)] == \
        [16, 16, 32, 32, 64, 64]
    objective = SequenceLengthSchedule(hybrid(0, 1), schedule)
    data = rows(8, 64)
    for progress, length in ((0.1, 16), (0.6, 32), (0.9, 64)):
        batch = objective.microbatch(data, progress, 0)
        assert batch.input_ids.shape == (8 * 64 // length, length)
        assert torch.equal(batch.input_ids.reshape(8, 64), data["input_ids"])
        assert batch.example_ids.tolist() == data["example_ids"].repeat_interleave(
            64 // length).tolist()
        assert objective.log_values(progress)["seq_length"] == length


def test_seq_length_schedule_and_hybrid_config_checks():
    base = ["arch=ltg-bert-tiny", "train.batch_size=64", "impl.microbatch_size=8",
            "data.seq_length=64", "train.objective=hybrid"]
    cfg = load_pretrain_config(compose("pretrain", [*base, "train.hybrid_denominator=4",
                                                    "train.seq_length_schedule=[[0,16],[0.5,64]]"]))
    assert cfg.train.seq_length_schedule == [[0, 16], [0.5, 64]]
    bad = [("train.hybrid_denominator=16", "multiple of impl.microbatch_size"),
           ("train.seq_length_schedule=[[0,24]]", "seq_length_schedule"),
           ("train.seq_length_schedule=[[0.2,16]]", "seq_length_schedule"),
           ("arch=bert-tiny", "model_type in gpt, llama, ltg-bert"),
           ("train.hybrid_numerator=3", "fraction")]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_pretrain_config(compose("pretrain", [*base, override]))
    with pytest.raises(ConfigError, match="arch.causal=true"):
        load_pretrain_config(compose("pretrain", ["arch=gpt-tiny", "train.batch_size=128"]))


def test_document_ids_and_document_mask_kwargs():
    ids = torch.tensor([[CLS, 7, 8, SEP, 9, SEP, 10, 11]])
    assert document_ids(ids, SEP).tolist() == [[0, 0, 0, 0, 1, 1, 2, 2]]
    cfg = lm_config()
    cfg.train.document_mask, cfg.train.z_loss = True, 1e-4
    kwargs = ModelArguments(cfg, SEP)(ids, True)
    assert kwargs["causal"] is True and kwargs["z_loss"] == 1e-4
    assert torch.equal(kwargs["document_ids"], document_ids(ids, SEP))


def test_ema_follows_the_formula_and_round_trips():
    model = tiny_model()
    hook = EMAHook(0.9)
    hook.update(model)  # first call: starts at the weights
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items()}
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        decay = min(0.9, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            expected[key] = decay * expected[key] + (1 - decay) * value
        hook.update(model)
    averaged = hook.averaged_model(model).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hook.shadow[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(averaged["embeddings.word.weight"],
                              model.state_dict()["embeddings.word.weight"])
    restored = EMAHook(0.9)
    restored.load_state_dict(hook.state_dict())
    assert restored.updates == 5 and restored.current_decay() == hook.current_decay()
