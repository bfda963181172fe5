"""Layer stacking and progressive layer dropping on a tiny model through the real engine."""

import copy

import pytest
import torch

from cramming.architectures import build_model
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.errors import ConfigError
from cramming.pretrain import run_pretraining
from cramming.schedules import lr_factor
from efficient_training.depth import ActiveLayers
from efficient_training.layer_drop import keep_probabilities, theta


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


STACK = ["arch.num_layers=4", "method=stacking", "method.stacking.initial_layers=1",
         "method.stacking.at=[0.25,0.5]", "method.stacking.optimizer_state=copy", "budget=8",
         "train.validate_at_end=false"]


class GrowthProbe(TrainingHook):
    """Snapshots the model before step 5 and right after the stacking hook grew it."""

    def __init__(self):
        self.before = self.after = self.optim_state = None

    def after_step(self, trainer, record):
        if trainer.step == 4:  # the second growth happens before step 5 (progress 0.5)
            self.before = copy.deepcopy(trainer.model.state_dict())

    def before_step(self, trainer):
        if trainer.step == 4:
            self.after = copy.deepcopy(trainer.model).eval()
            layers = trainer.model.layers.all_layers()
            state = trainer.optimizer.state
            self.optim_state = copy.deepcopy(
                [(state.get(a), state.get(b))
                 for a, b in zip(layers[0].parameters(), layers[2].parameters())])


def test_stacking_grows_at_the_fractions_and_copies_the_layers(tiny_overrides, tmp_path):
    probe = GrowthProbe()
    cfg = config(tiny_overrides, *STACK)
    run_pretraining(cfg, tmp_path, hooks=[probe])
    depths = [r["depth"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert depths == [1, 1, 2, 2, 4, 4, 4, 4]  # grows at 25% and 50% of 8 steps

    # The designed copy: a plain 4-layer model whose layers 2, 3 are layers 0, 1.
    state = dict(probe.before)
    for i in (0, 1):
        for key in [k for k in probe.before if k.startswith(f"layers.{i}.")]:
            state[key.replace(f"layers.{i}.", f"layers.{i + 2}.", 1)] = probe.before[key]
    reference = build_model(cfg.arch, vocab_size=probe.after.vocab_size)
    reference.load_state_dict(state)
    reference.eval()
    ids = torch.randint(5, probe.after.vocab_size, (3, 20))
    with torch.no_grad():
        assert torch.allclose(probe.after(ids)["logits"], reference(ids)["logits"], atol=1e-6)
    for source, target in probe.optim_state:  # optimizer_state=copy
        assert target is not None and torch.equal(source["exp_avg"], target["exp_avg"])


def test_stacking_reset_rewarms_the_learning_rate(tiny_overrides, tmp_path):
    # NTNG grew the model without the schedule noticing; here the LR re-warms after a reset.
    class StateProbe(TrainingHook):
        def before_step(self, trainer):
            if trainer.step == 2:
                self.cleared = len(trainer.optimizer.state) == 0

    probe = StateProbe()
    cfg = config(tiny_overrides, *STACK, "method.stacking.optimizer_state=reset",
                 "method.stacking.rewarmup=0.25", "train.warmup=0", "train.scheduler=constant")
    run_pretraining(cfg, tmp_path, hooks=[probe])
    assert probe.cleared
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    peak = cfg.train.optim.lr
    progress = [s / 8 for s in range(8)]
    grown = [None, None, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5]
    expected = [peak * lr_factor(p, cfg.train) *
                (1.0 if g is None else min(1.0, (p - g) / 0.25))
                for p, g in zip(progress, grown)]
    assert lrs == pytest.approx(expected)
    assert lrs[2] == 0 and lrs[3] == pytest.approx(peak / 2) and lrs[6] == pytest.approx(peak)


def test_stacking_schedule_that_misses_the_depth_is_refused(tiny_overrides):
    with pytest.raises(ConfigError, match="arch.num_layers=4"):
        config(tiny_overrides, *STACK, "method.stacking.initial_layers=2")
    with pytest.raises(ConfigError, match="hf-bert"):
        config(tiny_overrides, "arch=hf-bert-tiny", "method=layer_drop")


def test_layer_drop_keep_probabilities_and_expected_fraction():
    cfg = config(["method=layer_drop", "method.layer_drop.theta_min=0.5",
                  "method.layer_drop.gamma=10"]).method.layer_drop
    assert theta(0.0, cfg) == 1.0 and theta(1.0, cfg) == pytest.approx(0.5 + 0.5 * 2.718 ** -10,
                                                                       rel=1e-3)
    probs = keep_probabilities(1.0, 4, cfg)
    drop = 1 - theta(1.0, cfg)
    assert probs == pytest.approx([1 - drop / 4, 1 - drop / 2, 1 - 3 * drop / 4, 1 - drop])

    layers = ActiveLayers(torch.nn.ModuleList(torch.nn.Identity() for _ in range(4)))
    layers.keep_probs, layers.generator = probs, torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        kept = list(layers)
        assert layers.last_active == len(kept)
        counts += torch.tensor([any(k is layer for k in kept) for layer in layers.all_layers()])
    assert (counts / 4000).tolist() == pytest.approx(probs, abs=0.03)
    layers.eval()
    assert len(list(layers)) == 4  # inactive at eval


def test_layer_drop_rescales_kept_layers():
    class AddOne(torch.nn.Module):
        def forward(self, x, mask=None):
            return x + 1

    layers = ActiveLayers(torch.nn.ModuleList([AddOne()]))
    layers.keep_probs, layers.rescale = [0.999999], True
    layers.generator = torch.Generator().manual_seed(0)
    layers.keep_probs = [0.5]
    outputs = set()
    for _ in range(50):
        x = torch.zeros(2)
        for layer in layers:
            x = layer(x)
        outputs.add(float(x[0]))
    assert outputs == {0.0, 2.0}  # skipped, or residual branch 1 / 0.5


def test_layer_drop_trains_and_logs_theta(tiny_overrides, tmp_path):
    cfg = config(tiny_overrides, "method=layer_drop", "budget=4", "train.validate_at_end=false")
    run_pretraining(cfg, tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # theta of the budget spent after each step, on the configured schedule (decaying)
    expected = [theta(step / 4, cfg.method.layer_drop) for step in (1, 2, 3, 4)]
    assert [r["theta"] for r in records] == pytest.approx(expected)
    assert expected[0] < 1 and expected == sorted(expected, reverse=True)
    # the first step runs at progress 0, where theta = 1 keeps every layer
    assert records[0]["active_layers"] == 2
    assert all(r["active_layers"] in (0, 1, 2) for r in records)
