"""Reference System Time: tables, lookup errors, charging per method, resume, measuring."""

import json
from pathlib import Path

import pytest
import torch

from cramming.backend.checkpoint import latest_checkpoint
from cramming.backend.hooks import TrainingHook
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import CHOICES
from cramming.errors import ConfigError
from cramming.pretrain import run_pretraining
from rst import find_table, load_table
from rst.table import TABLES_DIR, arch_fields, arch_hash

# Known, simple numbers so every charge can be summed by hand.
TRAIN = {1: 0.010, 2: 0.016, 3: 0.022, 4: 0.028}
FORWARD = {1: 0.004, 2: 0.006, 3: 0.008, 4: 0.010}
STEP = 0.003


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def write_test_table(folder: Path, cfg, vocab_size: int = 2000) -> Path:
    """A table for ``cfg``'s arch on device 'testdev' with the numbers above."""
    folder.mkdir(parents=True, exist_ok=True)
    table = {"format": "cramming-rst-table", "version": 1, "device": "testdev",
             "arch": cfg.arch.name, "arch_hash": arch_hash(cfg.arch),
             "arch_fields": arch_fields(cfg.arch), "vocab_size": vocab_size,
             "seq_length": cfg.data.seq_length, "microbatch_size": cfg.impl.microbatch_size,
             "microbatch_scaling": "none", "num_layers": cfg.arch.num_layers,
             "seconds": {"train": {str(k): v for k, v in TRAIN.items()
                                   if k <= cfg.arch.num_layers},
                         "forward": {str(k): v for k, v in FORWARD.items()
                                     if k <= cfg.arch.num_layers}},
             "optimizer_step": {"*": STEP}}
    path = folder / f"testdev-{cfg.arch.num_layers}.json"
    path.write_text(json.dumps(table))
    return path


class Capture(TrainingHook):
    """Keeps a handle on the trainer (its method hooks and clock) for the assertions."""

    def on_train_start(self, trainer):
        self.trainer = trainer


def rst_run(tiny_overrides, tmp_path, *extra, budget_seconds=1.0):
    base = config(tiny_overrides, *extra)
    tables = write_test_table(tmp_path / "tables", base).parent
    cfg = config(tiny_overrides, "budget_kind=rst", f"budget={budget_seconds / 3600}",
                 "rst.device=testdev", f"rst.tables_dir={tables}",
                 "train.validate_at_end=false", *extra)
    capture = Capture()
    summary = run_pretraining(cfg, tmp_path / "run", hooks=[capture])
    return summary, capture.trainer


def test_ntng_table_has_the_7_layer_typo_corrected():
    table = load_table(TABLES_DIR / "rtx3090-bert-c5-ntng-v1.json")
    train = [table.seconds_by_kind["train"][n] for n in range(1, 17)]
    assert train[6] == pytest.approx(0.1052)  # published as 0.01052
    assert all(a < b for a, b in zip(train, train[1:]))
    increments = [b - a for a, b in zip(train, train[1:])]
    assert max(increments) - min(increments) < 0.003  # ~linear in depth, no outlier
    assert table.microbatch_seconds("forward", 16, 128) == pytest.approx(0.09285)
    assert table.microbatch_seconds("train", 16, 64) == pytest.approx(0.2253 / 2)


def test_ntng_table_is_found_for_bert_c5():
    # NTNG measured its bert-c5, whose Linear prediction head crammed-bert does not have.
    cfg = config(["arch=bert-c5", "budget_kind=rst", "budget=1", "rst.device=rtx3090",
                  "impl.microbatch_size=64", "data.paths=[x]"])
    table = find_table("rtx3090", cfg.arch, 128, 64, vocab_size=32768)
    assert table.device == "rtx3090"


def test_unknown_configuration_fails_loudly_at_startup():
    with pytest.raises(ConfigError, match="No RST table for device=rtx3090, arch=bert-tiny"):
        config(["arch=bert-tiny", "budget_kind=rst", "budget=1", "rst.device=rtx3090"])
    with pytest.raises(ConfigError, match="Available:"):
        config(["arch=bert-c5", "budget_kind=rst", "budget=1", "rst.device=my-gpu"])
    table = load_table(TABLES_DIR / "rtx3090-bert-c5-ntng-v1.json")
    with pytest.raises(ConfigError, match="covers"):
        table.microbatch_seconds("train", 17, 128)


def test_interpolation_between_measured_depths(tmp_path):
    cfg = config(["arch=bert-tiny", "arch.num_layers=4", "impl.microbatch_size=8"])
    path = write_test_table(tmp_path, cfg)
    data = json.loads(path.read_text())
    del data["seconds"]["train"]["2"], data["seconds"]["train"]["3"]
    path.write_text(json.dumps(data))
    table = load_table(path)
    assert table.microbatch_seconds("train", 2, 8) == pytest.approx(0.010 + (0.028 - 0.010) / 3)
    with pytest.raises(ConfigError, match="microbatch_size=8, not 16"):
        table.microbatch_seconds("train", 2, 16)


def test_plain_run_charges_train_passes_and_steps_and_stops_on_budget(tiny_overrides, tmp_path):
    summary, trainer = rst_run(tiny_overrides, tmp_path, budget_seconds=0.12)
    per_step = 2 * TRAIN[2] + STEP  # batch 16 = 2 microbatches of 8 on 2 layers
    steps = trainer.step
    assert steps == 4  # ceil(0.12 / 0.035)
    assert summary["budget_spent"] * 3600 == pytest.approx(steps * per_step)
    assert trainer.clock.charged["forward"] == 0 and trainer.clock.charged["hessian"] == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["rst_seconds"] == pytest.approx(steps * per_step)
    assert record["wall_seconds"] > 0 and record["speed_vs_reference"] > 0


def test_selective_backprop_charges_its_scoring_passes(tiny_overrides, tmp_path):
    summary, trainer = rst_run(tiny_overrides, tmp_path, "method=selective_backprop",
                               budget_seconds=0.12)
    (sb,) = [h for h in trainer.hooks if type(h).__name__ == "SelectiveBackpropHook"]
    steps = trainer.step
    hand = steps * (2 * TRAIN[2] + STEP) + sb.scored * FORWARD[2] / 8
    assert sb.scored > steps * 16  # more candidates scored than trained on
    assert summary["budget_spent"] * 3600 == pytest.approx(hand)


def test_free_scoring_passes_switch(tiny_overrides, tmp_path):
    _, trainer = rst_run(tiny_overrides, tmp_path, "method=selective_backprop",
                         "rst.charge_scoring_passes=false", budget_seconds=0.06)
    assert trainer.clock.charged["forward"] == 0
    assert trainer.clock.sequences["forward/2"] > 0  # the passes happened, just free


def test_sophia_charges_hessian_passes(tiny_overrides, tmp_path):
    _, trainer = rst_run(tiny_overrides, tmp_path, "train/optim=sophiag",
                         "train.optim.hessian_interval=2", "train.optim.hessian_batch_size=16",
                         budget_seconds=0.12)
    estimates = -(-trainer.step // 2)  # before steps 0, 2, 4, ...
    assert trainer.clock.charged["hessian"] == pytest.approx(estimates * 2 * TRAIN[2])
    assert trainer.clock.seconds() == pytest.approx(
        trainer.step * (2 * TRAIN[2] + STEP) + estimates * 2 * TRAIN[2])


def test_layer_drop_charges_the_active_layers(tiny_overrides, tmp_path):
    _, trainer = rst_run(tiny_overrides, tmp_path, "method=layer_drop", "arch.num_layers=4",
                         "method.layer_drop.theta_min=0.3", "method.layer_drop.gamma=5",
                         budget_seconds=0.12)
    counts = trainer.clock.sequences
    assert sum(counts.values()) == trainer.step * 16
    assert len(counts) > 1  # different depths happened
    seconds = {0: 2 * TRAIN[1] - TRAIN[2], **TRAIN}  # 0 layers: embedding and head still run
    hand = sum(seqs * seconds[int(key.split("/")[1])] / 8
               for key, seqs in counts.items()) + trainer.step * STEP
    assert trainer.clock.seconds() == pytest.approx(hand)


def test_resume_continues_the_same_rst_clock(tiny_overrides, tmp_path):
    class CrashAt(TrainingHook):
        def after_step(self, trainer, record):
            if trainer.step == 3:
                raise KeyboardInterrupt("simulated crash")

    base = config(tiny_overrides)
    tables = write_test_table(tmp_path / "tables", base).parent
    common = [*tiny_overrides, "budget_kind=rst", f"budget={0.18 / 3600}", "rst.device=testdev",
              f"rst.tables_dir={tables}", "train.validate_at_end=false",
              "train.checkpoint_every_steps=2", "method=selective_backprop"]
    straight = Capture()
    run_pretraining(config(common), tmp_path / "straight", hooks=[straight])
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(common), tmp_path / "crashed", hooks=[CrashAt()])
    state = torch.load(latest_checkpoint(tmp_path / "crashed") / "state.pt", weights_only=True)
    assert state["clock"]["charged"]["train"] == pytest.approx(2 * 2 * TRAIN[2])
    assert state["clock"]["table"].startswith("testdev/")
    resumed = Capture()
    run_pretraining(config(common, "resume=true"), tmp_path / "crashed", hooks=[resumed])
    assert resumed.trainer.step == straight.trainer.step
    assert resumed.trainer.clock.charged == pytest.approx(straight.trainer.clock.charged)


def test_measure_writes_a_versioned_table_that_is_found(tmp_path):
    from rst.measure import main

    args = ["arch=bert-tiny", "impl=cpu", "impl.microbatch_size=4", "data.seq_length=32",
            "data.vocab_size=500", "--layers", "1,2", "--repeats", "1", "--device-name",
            "testcpu", "--out", str(tmp_path)]
    first, second = main(args), main(args)
    assert first.name.endswith("-v1.json") and second.name.endswith("-v2.json")
    cfg = config(["arch=bert-tiny"])
    table = find_table("testcpu", cfg.arch, 32, 4, tables_dir=tmp_path, vocab_size=500)
    assert table.version == 2 and table.path.parent == tmp_path
    assert table.microbatch_seconds("train", 2, 4) > 0
    assert set(table.optimizer_step) == set(CHOICES["train.optim.name"])  # every optimizer
