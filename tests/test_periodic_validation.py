"""Held-out loss during pretraining: fixed points of the budget, fixed masks and rows,
equal to validate_bert.py at any batch size, not charged to the budget, exact on resume."""

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cramming.architectures import build_model
from cramming.backend.checkpoint import MODEL_WEIGHTS, latest_checkpoint, load_weights
from cramming.backend.engine import uncharged
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import read_jsonl
from cramming.backend.runtime import resolve_runtime
from cramming.backend.validation import PeriodicValidation, evaluate_mlm, exact_decoding
from cramming.clock import WallClock
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import ArchConfig, ImplConfig, ValidateConfig
from cramming.data import MLMMasker, prepare_data
from cramming.errors import ConfigError
from cramming.pretrain import data_cache_root, run_pretraining
from cramming.validate import validate_model

VALIDATION = ["train.val_rows=20", "train.val_batch_size=8"]  # 8 + 8 + 4 rows


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def validation_records(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]


class CrashAtStep(TrainingHook):
    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, record):
        if trainer.step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_points_equal_validate_bert_at_any_batch_size(tiny_overrides, tmp_path, single_thread):
    cfg = config(tiny_overrides, "budget=4", "train.validate_every_fraction=0.5", *VALIDATION)
    run_pretraining(cfg, tmp_path)
    records = validation_records(tmp_path)
    assert [(r["step"], r["val_point"], r["val_rows"]) for r in records] == [(2, 1, 20),
                                                                             (4, 2, 20)]
    assert records[-1]["progress"] == pytest.approx(1.0)
    impl = ImplConfig(device="cpu", progress_bar=False, threads=1)
    for batch_size in (3, 20, 64):  # the final weights, grouped three other ways
        scores = validate_model(ValidateConfig(model_path=str(tmp_path / "model"), impl=impl,
                                               max_rows=20, batch_size=batch_size))
        assert scores["rows"] == 20
        assert scores["masked_tokens"] == records[-1]["val_masked_tokens"]
        assert scores["loss"] == pytest.approx(records[-1]["val_loss"], abs=1e-6)
        assert scores["accuracy"] == records[-1]["val_accuracy"]
    # the end-of-run validation scores the same rows too
    at_end = read_jsonl(tmp_path / "validation.jsonl")[0]
    assert at_end["loss"] == pytest.approx(records[-1]["val_loss"], abs=1e-6)


def test_a_fixed_decode_count_does_not_make_the_loss_depend_on_the_batch(
        tiny_overrides, tmp_path, single_thread):
    """A static decode count (the trainer sets one) would drop masked tokens beyond it,
    differently for each grouping of rows; validation decodes exactly the masked ones."""
    cfg = config(tiny_overrides, "budget=2", "train.validate_at_end=false")
    run_pretraining(cfg, tmp_path)
    model = build_model(cfg.arch, vocab_size=2000)
    load_weights(model, latest_checkpoint(tmp_path) / MODEL_WEIGHTS)
    prepared = prepare_data(cfg.data, cache_root=data_cache_root(cfg), progress=False)
    runtime = resolve_runtime(ImplConfig(device="cpu", progress_bar=False))
    masker = MLMMasker.from_tokenizer(prepared.tokenizer)

    def loss(batch_size: int) -> dict:
        return evaluate_mlm(model, prepared.val, masker, runtime, batch_size=batch_size,
                            max_rows=24, progress_bar=False)

    exact = loss(24)
    model.set_static_decode(0.05)  # fewer positions than the ~15% masked
    for batch_size in (1, 5, 24):
        scores = loss(batch_size)
        assert scores["masked_tokens"] == exact["masked_tokens"]
        assert scores["loss"] == pytest.approx(exact["loss"], abs=1e-6)
    assert model.static_decode_fraction == 0.05  # the trainer's setting is put back


def test_resumed_run_logs_the_same_validation_values(tiny_overrides, tmp_path, single_thread):
    common = [*tiny_overrides, "budget=6", "train.validate_every_fraction=0.25",
              "train.checkpoint_every_steps=2", "train.validate_at_end=false", *VALIDATION]
    run_pretraining(config(common), tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(common), tmp_path / "crashed", hooks=[CrashAtStep(4)])
    assert [r["step"] for r in validation_records(tmp_path / "crashed")] == [2, 3]
    run_pretraining(config(common, "resume=true"), tmp_path / "crashed")

    def values(run: str) -> list[tuple]:
        return [(r["step"], r["val_point"], r["progress"], r["val_loss"], r["val_accuracy"])
                for r in validation_records(tmp_path / run)]

    # points at 1/4, 1/2, 3/4 and all of a 6-step budget: after steps 2, 3, 5 and 6
    assert [v[:2] for v in values("straight")] == [(2, 1), (3, 2), (5, 3), (6, 4)]
    assert values("crashed") == values("straight")


def test_validation_time_is_not_charged_to_the_budget():
    clock = WallClock(1.0)
    clock.start()
    with uncharged(clock):
        time.sleep(0.3)
    assert clock.spent() * 3600 < 0.1
    time.sleep(0.05)
    assert clock.spent() * 3600 >= 0.05  # it runs again afterwards


class ClockAroundSteps(TrainingHook):
    """Budget spent at the end of each step and at the start of the next."""

    def __init__(self):
        self.ends, self.starts = {}, {}

    def before_step(self, trainer):
        self.starts[trainer.step] = trainer.clock.spent() * 3600

    def after_step(self, trainer, record):
        self.ends[trainer.step] = trainer.clock.spent() * 3600


def test_a_wall_clock_run_does_not_count_its_validations(tiny_overrides, tmp_path,
                                                         single_thread):
    clock = ClockAroundSteps()
    cfg = config(tiny_overrides, "budget_kind=hours", "budget=0.0003",
                 "train.validate_every_fraction=0.5", "train.val_batch_size=1",
                 "train.validate_at_end=false")
    run_pretraining(cfg, tmp_path, hooks=[clock])
    first = validation_records(tmp_path)[0]
    step = first["step"]
    assert first["val_seconds"] > 0.02 and first["val_rows"] > 10
    # between the end of that step and the start of the next only the validation ran
    assert clock.starts[step] - clock.ends[step] < 0.5 * first["val_seconds"]


def test_cadence_options_are_checked(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match="needs a budget in hours"):
        config(tiny_overrides, "train.validate_every_hours=0.5")  # a step budget
    with pytest.raises(ConfigError, match="set one of them"):
        config(tiny_overrides, "budget_kind=hours", "train.validate_every_hours=0.5",
               "train.validate_every_fraction=0.1")
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\]"):
        config(tiny_overrides, "train.validate_every_fraction=0")
    cfg = config(tiny_overrides, "budget_kind=hours", "budget=2",
                 "train.validate_every_hours=0.5")
    prepared = prepare_data(cfg.data, cache_root=data_cache_root(cfg), progress=False)
    periodic = PeriodicValidation.from_config(cfg, prepared.val, prepared.tokenizer)
    assert periodic.interval == 0.25 and periodic.batch_size == cfg.impl.microbatch_size
    assert not periodic.due(0.2499) and periodic.due(0.25)
    with pytest.raises(ConfigError, match="max_batches=2 and max_rows=8"):
        validate_model(ValidateConfig(model_path=str(tmp_path), max_batches=2, max_rows=8))


def test_exact_decoding_reproduces_crammings_loss_in_any_grouping(shared_reference):
    """Cramming's own MLM loss on its tiny model (sparse head, 25% masked per row): scoring
    its final hidden states with our head under a smaller fixed decode count, row groups
    of any size give back its loss once decoding is exact."""
    folder = shared_reference / "cramming-crammed-bert-tiny"
    weights, io = load_file(folder / "weights.safetensors"), load_file(folder / "io.safetensors")
    arch = ArchConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128,
                      max_seq_length=32, prediction_head=False, dropout=0.0,
                      attention_dropout=0.0)
    model = build_model(arch, vocab_size=512).eval()
    with torch.no_grad():
        model.decoder.weight.copy_(weights["decoder.weight"])  # tied to the word embedding
    hidden, labels = io["hidden_states"], io["labels"]
    reference = float(io["mlm_loss"])
    model.set_static_decode(0.1)  # below the 25% masked: tokens would be dropped
    with torch.no_grad():
        dropped = model.outputs_from_hidden(hidden, labels)
        assert int(dropped["num_predictions"]) < int((labels != -100).sum())
        for groups in ([[0, 1, 2]], [[0], [1, 2]], [[0], [1], [2]]):
            total, count = 0.0, 0
            with exact_decoding(model) as fit:
                for rows in groups:
                    fit(labels[rows])
                    out = model.outputs_from_hidden(hidden[rows], labels[rows])
                    total += float(out["loss"]) * int(out["num_predictions"])
                    count += int(out["num_predictions"])
            assert count == int((labels != -100).sum())
            assert total / count == pytest.approx(reference, abs=1e-5)
    assert model.static_decode_fraction == 0.1
