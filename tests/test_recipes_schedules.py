"""Each train preset's LR (and batch) schedule equals its original's, in the engine too.

The curves of the originals are in the shared reference fixtures (``schedules/*.json``,
computed by the originals' own code). Cramming's and GPT-BERT's schedules are step-based
LambdaLRs: a fixture point labelled ``p`` is the value at the integer step ``int(p x N)`` of
an ``N``-step run (``0.29 x 100000 = 28999.999...`` -> step 28999), so our pure function of
progress is evaluated at that step's progress. NTNG's seconds-based one-cycle is not
quantised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import TrainConfig
from cramming.errors import ConfigError
from cramming.pretrain import run_pretraining
from cramming.schedules import batch_size_at, lr_factor

STEPS = 100_000  # steps of the run the step-based fixtures were computed on


def triangle2(x: float) -> float:
    """Cramming get_budget_triangle(base_percentage=0.25, falloff=0.25) at progress x
    (JonasGeiping/cramming, cramming/backend/optimizers/schedulers.py)."""
    return min(0.25 + x * 0.75 / 0.75, 1 / 0.25 - x / 0.25)


def one_cycle(x: float) -> float:
    """NTNG get_budget_one_cycle_seconds (JeanKaddour/NoTrainNoGain, bert/cramming/backend/
    optimizers/schedulers.py): up to the peak at half the budget, down to 0 at the end."""
    return x / 0.5 if x < 0.5 else 2 - x / 0.5


def gpt_bert_cosine(x: float) -> float:
    """GPT-BERT cosine_schedule_with_warmup_cooldown(warmup 0.016, cooldown 0.016, floor 0.1)
    (ltgoslo/gpt-bert, pretraining/utils.py), on progress instead of steps."""
    warm = cool = 0.016
    if x < warm:
        return x / warm
    if x >= 1 - cool:
        return 0.1 * (1 - x) / cool
    rest = (x - warm) / (1 - warm)
    return max(0.1, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * rest)))


# preset, fixture file, the original's scheduler named in its "source", quantised to steps?,
# the formula restated from the original, extra overrides to compose the preset
PRESETS = [
    ("bert-o4", "cramming-bert-o4-budget-triangle2.json", "budget-triangle2", True, triangle2,
     []),
    ("bert-o3", "ntng-bert-o3-budget-one-cycle.json", "budget-one-cycle-seconds", False,
     one_cycle, []),
    ("gpt-bert", "gpt-bert-cosine-warmup-cooldown.json", "cosine_schedule_with_warmup_cooldown",
     True, gpt_bert_cosine, ["arch=gpt-bert-small", "impl.microbatch_size=64"]),
]


def preset_config(preset: str, *extra: str):
    return load_pretrain_config(compose("pretrain", [f"train={preset}", *extra]))


def fixture_points(shared_reference: Path, name: str, quantised: bool):
    data = json.loads((shared_reference / "schedules" / name).read_text())
    progress = [int(p * STEPS) / STEPS if quantised else p for p in data["progress"]]
    return data, progress


@pytest.mark.parametrize("preset, fixture, source, quantised, formula, extra", PRESETS,
                         ids=[p[0] for p in PRESETS])
def test_preset_lr_equals_the_original_at_every_grid_point(shared_reference, preset, fixture,
                                                           source, quantised, formula, extra):
    data, progress = fixture_points(shared_reference, fixture, quantised)
    assert source in data["source"] and len(progress) == 101
    train = preset_config(preset, *extra).train
    for p, expected in zip(progress, data["lr_factor"]):
        assert lr_factor(p, train) == pytest.approx(expected, abs=1e-9), (preset, p)
        # the restated formula (used for the engine check below) is the fixture's, too
        assert formula(p) == pytest.approx(expected, abs=1e-9), (preset, p)


def test_the_fixture_grid_really_is_quantised_to_steps(shared_reference):
    # Without the step quantisation the Cramming curve differs by one step (1e-5) at 0.29:
    # this is why the points above are taken at int(p x 100000).
    data, _ = fixture_points(shared_reference, PRESETS[0][1], False)
    index = data["progress"].index(0.29)
    assert abs(lr_factor(0.29, TrainConfig()) - data["lr_factor"][index]) > 1e-6


def test_presets_schedule_fields_are_the_originals():
    o4, o3 = preset_config("bert-o4").train, preset_config("bert-o3").train
    # JonasGeiping/cramming, cramming/config/train/bert-o4.yaml
    assert (o4.batch_size, o4.batch_size_ramp, o4.gradient_clipping) == (8192, 0.6, 0.5)
    assert (o4.mask_prob, o4.mask_token_prob, o4.random_token_prob) == (0.25, 0.8, 0.1)
    assert o4.exact_mask_count and o4.optim.name in ("adam", "adamw")
    # JeanKaddour/NoTrainNoGain, bert/cramming/config/train/bert-o3.yaml
    assert (o3.batch_size, o3.batch_size_ramp, o3.gradient_clipping) == (1536, 0, 0.5)
    assert (o3.mask_prob, o3.mask_token_prob, o3.random_token_prob) == (0.15, 0.8, 0.1)
    assert not o3.exact_mask_count and o3.optim.name == "adam"  # Bernoulli per token
    assert (o3.optim.lr, o3.optim.betas, o3.optim.eps, o3.optim.weight_decay) == (
        1e-3, [0.9, 0.98], 1e-12, 0.01)


def test_gpt_bert_preset_is_its_argparse_defaults():
    # ltgoslo/gpt-bert, pretraining/train_multi_gpu.py parse_arguments()
    train = preset_config("gpt-bert", *PRESETS[2][5]).train
    optim = train.optim
    assert (optim.name, optim.lr, optim.betas, optim.eps, optim.weight_decay) == (
        "lamb", 1e-2, [0.9, 0.98], 1e-8, 0.1)
    assert (train.warmup, train.cooldown, train.min_lr_ratio) == (0.016, 0.016, 0.1)
    assert (train.mask_prob, train.mask_prob_end) == (0.3, 0.15)  # mask_p_start / _end
    assert train.random_token_prob == 0.1  # mask_random_p
    assert 1 - train.mask_token_prob - train.random_token_prob == pytest.approx(0.1)  # keep
    assert (train.hybrid_numerator, train.hybrid_denominator) == (15, 16)
    assert (train.gradient_clipping, train.z_loss, train.ema_decay) == (2.0, 1e-4, 0.999)
    assert train.token_weighted_loss is False and train.mask_span_length == 3
    # --global_batch_size 32768 reached linearly from a quarter (--batch_reduction 4)
    assert (train.batch_size, train.batch_size_start, train.batch_size_ramp) == (32768, 0.25,
                                                                                1.0)


def gpt_bert_global_batch(step: int, steps: int, batch: int = 32768, reduction: int = 4):
    """GPT-BERT load_datasets: linear batch size scaling, rounded to the nearest sequence."""
    return int(batch / reduction * (1 - step / steps) + batch * (step / steps) + 0.5)


def cramming_batch(progress: float, batch: int, ramp: float, micro: int) -> int:
    """Cramming _update_batch_size: one microbatch plus the ramped share, in microbatches."""
    return min(int(progress / ramp * batch // micro + 1) * micro, batch)


def test_batch_schedules_follow_the_originals():
    o4 = preset_config("bert-o4").train
    for p in (0.0, 0.1, 0.33, 0.59, 0.6, 0.9):
        assert batch_size_at(p, o4, 128) == cramming_batch(p, 8192, 0.6, 128), p
    gpt = preset_config("gpt-bert", *PRESETS[2][5]).train
    group = 64 * gpt.hybrid_denominator  # whole MNTP/CLM groups of microbatches
    for step in (0, 1000, 5000, 10000, 15000):
        ours = batch_size_at(step / 15625, gpt, 64)
        assert ours % group == 0
        assert 0 <= gpt_bert_global_batch(step, 15625) - ours < group, step


def test_gpt_bert_sequence_length_schedule_composes_with_512_token_rows():
    cfg = preset_config("gpt-bert", *PRESETS[2][5], "data.seq_length=512",
                        "train.batch_size=8192",
                        "train.seq_length_schedule=[[0,128],[0.7,256],[0.9,512]]")
    assert cfg.train.seq_length_schedule == [[0, 128], [0.7, 256], [0.9, 512]]
    # 8192 rows of 512 = GPT-BERT's 32768 x 128 tokens per batch
    assert cfg.train.batch_size * cfg.data.seq_length == 32768 * 128


@pytest.mark.parametrize("override, key", [
    ("train.warmup=0.9", "train.cooldown"),
    ("train.lr_start=1.5", "train.lr_start"),
    ("train.batch_size_start=-0.1", "train.batch_size_start"),
    ("train.scheduler=triangle", "train.scheduler"),
])
def test_bad_schedule_settings_fail_in_one_line(override, key):
    extra = ["train.cooldown=0.2"] if key == "train.cooldown" else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        load_pretrain_config(compose("pretrain", [override, *extra]))
    assert "\n" not in str(error.value)


# preset: (formula, steps, overrides); 64 steps put GPT-BERT's step 1 in its warmup
# (1/64 < 0.016) and its last step in its cooldown (63/64 >= 0.984).
ENGINE_RUNS = {
    "bert-o4": (triangle2, 25, []),
    "gpt-bert": (gpt_bert_cosine, 64, ["arch=ltg-bert-tiny", "train.hybrid_numerator=1",
                                       "train.hybrid_denominator=2", "train.ema_decay=null"]),
}


@pytest.mark.parametrize("preset", sorted(ENGINE_RUNS))
def test_engine_applies_the_schedule(tiny_overrides, tmp_path, single_thread, preset):
    formula, steps, extra = ENGINE_RUNS[preset]
    cfg = load_pretrain_config(compose("pretrain", [
        *tiny_overrides, f"train={preset}", *extra, f"budget={steps}", "train.batch_size=16",
        "train.batch_size_ramp=0", "train.validate_at_end=false",
        "train.checkpoint_every_minutes=1000"]))
    run_pretraining(cfg, tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(records) == steps
    peak = cfg.train.optim.lr
    for before, record in zip([{"progress": 0.0}, *records], records):
        # the LR of a step is set at the progress reached when it began
        assert record["schedule_progress"] == before["progress"]
        assert record["lr"] == pytest.approx(peak * formula(record["schedule_progress"]),
                                             rel=1e-9, abs=1e-15), record
    lrs = [r["lr"] for r in records]
    assert max(lrs) > lrs[0] and max(lrs) > lrs[-1]  # rise, peak and decay all ran
    if preset == "gpt-bert":
        first, last = records[1]["schedule_progress"], records[-1]["schedule_progress"]
        assert first < cfg.train.warmup and last >= 1 - cfg.train.cooldown
