"""The training engine on a tiny model and real text: budgets, resume, NaN, decay groups."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cramming.architectures import build_model
from cramming.backend.checkpoint import latest_checkpoint, load_checkpoint
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import read_jsonl
from cramming.backend.optimizers import parameter_groups
from cramming.config import compose, load_pretrain_config
from cramming.errors import CheckpointError, TrainingError
from cramming.pretrain import run_pretraining


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


class CrashAtStep(TrainingHook):
    """Simulates a crash (exception) right after a given optimizer step."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, record):
        if trainer.step == self.step:
            raise KeyboardInterrupt("simulated crash")


class PoisonWeightsAtStep(TrainingHook):
    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, record):
        if trainer.step == self.step:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_step_budget_stops_exactly_and_writes_the_run(tiny_overrides, tmp_path):
    summary = run_pretraining(config(tiny_overrides, "budget=5"), tmp_path)
    assert summary["steps"] == 5
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["progress"] == pytest.approx(1.0)
    for name in ("config.yaml", "git_commit.txt", "git_diff.patch", "loss_curve.png",
                 "validation.jsonl", "summary.json", "model/model.safetensors",
                 "model/arch.json", "model/tokenizer/tokenizer.json"):
        assert (tmp_path / name).is_file(), name


def test_token_budget_counts_training_tokens(tiny_overrides, tmp_path):
    # 16 sequences x 64 tokens = 1024 tokens per step -> 3 steps for 3000 tokens.
    summary = run_pretraining(config(tiny_overrides, "budget_kind=tokens", "budget=3000"),
                              tmp_path)
    assert summary["steps"] == 3 and summary["tokens"] == 3072


def test_wall_clock_budget_stops(tiny_overrides, tmp_path):
    summary = run_pretraining(config(tiny_overrides, "budget_kind=hours", "budget=0.001",
                                     "train.validate_at_end=false"), tmp_path)
    assert summary["budget_spent"] >= 0.001
    assert summary["steps"] >= 1
    # It stops at the first step that spends the budget: no step after it, and no more than
    # that step (plus the stop itself) past the 3.6 s budget.
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(records) == summary["steps"]
    assert records[-1]["progress"] == pytest.approx(1.0)
    assert all(r["progress"] < 1.0 for r in records[:-1])
    overshoot = summary["budget_spent"] * 3600 - 3.6
    assert overshoot <= records[-1]["step_seconds"] + 2.0, overshoot


def test_resume_reproduces_the_uninterrupted_loss_sequence(tiny_overrides, tmp_path):
    common = [*tiny_overrides, "budget=8", "train.checkpoint_every_steps=3",
              "arch.dropout=0.1", "train.batch_size_ramp=0.5"]
    run_pretraining(config(common), tmp_path / "straight")
    reference = losses(tmp_path / "straight")
    assert len(reference) == 8

    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(common), crashed, hooks=[CrashAtStep(5)])
    assert latest_checkpoint(crashed).name == "step-000000003"
    run_pretraining(config(common, "resume=true"), crashed)
    assert losses(crashed) == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_resume_without_checkpoint_is_an_error(tiny_overrides, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_pretraining(config(tiny_overrides, "resume=true"), tmp_path)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_overrides, tmp_path):
    cfg = config(tiny_overrides, "train.checkpoint_every_steps=2")
    with pytest.raises(TrainingError, match="last good checkpoint"):
        run_pretraining(cfg, tmp_path, hooks=[PoisonWeightsAtStep(3)])
    folder = latest_checkpoint(tmp_path)
    assert folder.name == "step-000000002"
    model = build_model(cfg.arch, vocab_size=2000)
    state = load_checkpoint(folder, model)
    assert state["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (tmp_path / "model").exists()


def test_weight_decay_groups_by_parameter_type(tiny_overrides):
    cfg = config(tiny_overrides, "arch.linear_bias=true")
    model = build_model(cfg.arch, vocab_size=2000)
    decay, no_decay = parameter_groups(model, 0.01)
    decayed = {id(p) for p in decay["params"]}
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert norms
    for norm in norms:
        assert all(id(p) not in decayed for p in norm.parameters())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(id(m.weight) in decayed for m in linears)
    assert all(id(m.bias) not in decayed for m in linears if m.bias is not None)
    total = sum(p.numel() for p in model.parameters())
    grouped = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert grouped == total


def test_loss_falls_on_real_text(tiny_overrides, tmp_path):
    run_pretraining(config(tiny_overrides, "budget=40", "train.optim.lr=3e-3",
                           "train.scheduler=constant", "train.warmup=0"), tmp_path)
    curve = losses(tmp_path)
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.5
    validation = json.loads((tmp_path / "validation.jsonl").read_text().splitlines()[0])
    assert validation["loss"] < curve[0]


def test_wall_clock_budget_is_honoured_inside_a_large_step(tiny_overrides, tmp_path):
    """A huge accumulated batch must not overrun the budget by a whole step."""
    cfg = config(tiny_overrides, "budget_kind=hours", "budget=0.0005", "train.batch_size=40000",
                 "train.validate_at_end=false")
    summary = run_pretraining(cfg, tmp_path)
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert summary["steps"] == 1 and math.isfinite(record["loss"])
    assert record["tokens"] < 40000 * 64  # stopped mid-step
    assert summary["budget_spent"] < 0.0005 + 0.0005  # overran by far less than the budget
