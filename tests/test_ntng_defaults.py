"""NTNG's method defaults: every preset value against the NTNG file it comes from, and the
behaviours behind them (optimizer state on growth, RHO's mega-batch selection) on a tiny run."""

import copy

import numpy as np
import pytest
import torch

import efficient_training.rho_loss as rho_loss_module
from cramming.backend.hooks import TrainingHook
from cramming.config import compose, load_pretrain_config
from cramming.data import prepare_data
from cramming.pretrain import data_cache_root, run_pretraining
from efficient_training.rho_loss import IrreducibleLosses, mega_batch_size

NTNG = "JeanKaddour/NoTrainNoGain"
O3 = "bert/cramming/config/train/bert-o3.yaml"
C5 = "bert/cramming/config/arch/bert-c5.yaml"

# (our key, NTNG's value, (repository, file): NTNG's key or code)
DEFAULTS = [
    ("method.stacking.initial_layers", 4, (NTNG, O3), "stacking.num_initial_layers: 4"),
    ("method.stacking.growth", "double", (NTNG, O3), "stacking.doubling: true"),
    ("method.stacking.at", [0.125, 0.3], (NTNG, O3), "stacking.step_fractions: [0.125, 0.3]"),
    ("method.stacking.optimizer_state", "keep", (NTNG, O3),
     "copy_optim_states: false; reset_optim never passed on (backend/torch_default.py)"),
    ("method.stacking.rewarmup", 0.0, (NTNG, O3), "stacking.adjust_lr: false"),
    ("method.layer_drop.theta_min", 0.5, (NTNG, C5), "layer_drop.max_theta: 0.5"),
    ("method.layer_drop.gamma", 100.0, (NTNG, C5), "layer_drop.gamma_factor: 100"),
    ("method.layer_drop.rescale", False, (NTNG, "bert/efficient_training/layer_drop.py"),
     "kept layers run unscaled"),
    ("method.selective_backprop.beta", 1.0, (NTNG, O3), "sb.scale: 1.0"),
    ("method.selective_backprop.history", 5000, (NTNG, "bert/pretrain_bert_sb.py"),
     "deque(maxlen=5000)"),
    ("method.rho_loss.keep_fraction", 0.1, (NTNG, O3),
     "batch_size 1536 of rho_loss.mega_batch_size 15360"),
]


def config(*overrides):
    return load_pretrain_config(compose("pretrain", list(overrides)))


@pytest.mark.parametrize("preset", ["none", "stacking", "layer_drop", "selective_backprop"])
@pytest.mark.parametrize(("key", "value", "source", "ntng_key"), DEFAULTS,
                         ids=[row[0] for row in DEFAULTS])
def test_method_presets_carry_ntng_defaults(preset, key, value, source, ntng_key):
    cfg = config(f"method={preset}")
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value, f"{key}={node!r}; NTNG: {value!r} ({', '.join(source)}: {ntng_key})"


def test_ntng_stacking_grows_4_8_16_and_rho_mega_batch_is_ntngs():
    cfg = config("method=stacking", "arch=bert-c5", "train=bert-o3")
    from efficient_training.stacking import depth_schedule

    assert [4, *depth_schedule(cfg.method.stacking, cfg.arch.num_layers)] == [4, 8, 16]
    # NTNG: 15360 rows scored for a batch of 1536 (JeanKaddour/NoTrainNoGain, bert-o3.yaml)
    assert mega_batch_size(cfg.method.rho_loss, 1536) == 15360
    assert cfg.train.batch_size == 1536


class OptimStateProbe(TrainingHook):
    """Optimizer state of every layer after step 4 and right after the growth before step 5."""

    name = "probe"

    def __init__(self):
        self.before = self.after = self.after_step5 = None

    def _state(self, trainer):
        state = trainer.optimizer.state
        return [[copy.deepcopy(state.get(p)) for p in layer.parameters()]
                for layer in trainer.model.layers.all_layers()]

    def after_step(self, trainer, record):
        if trainer.step == 4:
            self.before = self._state(trainer)
        if trainer.step == 5:
            self.after_step5 = self._state(trainer)

    def before_step(self, trainer):
        if trainer.step == 4:
            self.after = self._state(trainer)


def test_keep_leaves_old_layers_moments_and_starts_new_layers_fresh(tiny_overrides, tmp_path):
    probe = OptimStateProbe()
    run_pretraining(config(*tiny_overrides, "arch.num_layers=4", "method=stacking",
                           "method.stacking.initial_layers=1", "method.stacking.at=[0.25,0.5]",
                           "budget=8", "train.validate_at_end=false"),
                    tmp_path, hooks=[probe])
    for old in (0, 1):  # grown 2 -> 4 before step 5: layers 0, 1 keep their moments
        for before, after in zip(probe.before[old], probe.after[old]):
            assert torch.equal(before["exp_avg"], after["exp_avg"])
            assert torch.equal(before["exp_avg_sq"], after["exp_avg_sq"])
    for new in (2, 3):  # new layers: no state at the growth, one fresh step after it
        assert all(state is None for state in probe.after[new])
        assert all(float(state["step"]) == 1 for state in probe.after_step5[new])
    assert all(float(state["step"]) == 5 for state in probe.after_step5[0])


class TrainedRows(TrainingHook):
    name = "trained_rows"

    def __init__(self):
        self.ids = []

    def select_batch(self, trainer, batch):
        self.ids.append(batch.example_ids.clone())
        return batch


def test_rho_loss_keeps_the_top_batch_of_each_mega_batch(tiny_overrides, tmp_path, monkeypatch):
    cfg = config(*tiny_overrides)
    train_ids = np.asarray(prepare_data(cfg.data, data_cache_root(cfg)).train.example_ids)
    rng = np.random.default_rng(0)
    il_values = rng.normal(0, 5, len(train_ids)).astype(np.float32)
    il_file = IrreducibleLosses(train_ids, il_values).save(tmp_path / "il.npz")
    il = IrreducibleLosses.load(il_file)

    scored = []  # (example ids, training losses) of every scoring pass, in order
    real_score = rho_loss_module.score_globally

    def recording_score(trainer, batch):
        losses = real_score(trainer, batch)
        scored.append((batch.example_ids.clone(), losses.clone()))
        return losses

    monkeypatch.setattr(rho_loss_module, "score_globally", recording_score)
    trained = TrainedRows()
    run_pretraining(config(*tiny_overrides, "method=rho_loss", "budget=2",
                           f"method.rho_loss.il_losses={il_file}",
                           "method.rho_loss.mega_batch_size=48", "train.validate_at_end=false"),
                    tmp_path / "run", hooks=[trained])
    ids = torch.cat([i for i, _ in scored])
    reducible = torch.cat([loss for _, loss in scored]) - il.lookup(ids)
    assert len(ids) == 2 * 48  # one mega-batch of 48 rows per optimizer step
    for step in range(2):
        window = slice(48 * step, 48 * (step + 1))
        top = ids[window][torch.topk(reducible[window], 16).indices]
        chosen = torch.cat(trained.ids[2 * step: 2 * step + 2])  # two microbatches of 8
        assert sorted(chosen.tolist()) == sorted(top.tolist())
