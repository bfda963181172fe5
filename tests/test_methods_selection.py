"""Selective backprop and RHO-Loss on the real engine; the IL pipeline; config composition."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.data import prepare_data
from cramming.errors import ConfigError
from cramming.pretrain import data_cache_root, run_pretraining
from efficient_training.extract_il_losses import extract
from efficient_training.rho_loss import IrreducibleLosses
from efficient_training.selective_backprop import SelectiveBackpropHook, selection_probabilities
from tests.conftest import REPO_ROOT


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


class SeenRows(TrainingHook):
    """Runs after the method hooks: records the example ids the engine trains on."""

    def __init__(self):
        self.ids = []

    def select_batch(self, trainer, batch):
        self.ids.append(batch.example_ids.clone())
        return batch


def test_selection_probability_is_the_loss_percentile_to_the_beta():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0])
    losses = torch.tensor([0.5, 2.0, 3.5, 9.0])
    assert selection_probabilities(losses, history, 1.0).tolist() == [0.0, 0.5, 0.75, 1.0]
    assert selection_probabilities(losses, history, 2.0).tolist() == [0.0, 0.25, 0.5625, 1.0]


def test_selective_backprop_selects_with_those_probabilities():
    cfg = config(["method=selective_backprop", "method.selective_backprop.beta=2",
                  "method.selective_backprop.history=4"]).method.selective_backprop
    hook = SelectiveBackpropHook(cfg, microbatch_size=8, seed=0)
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    counts = torch.zeros(4)
    for _ in range(3000):
        hook.history.clear()
        chosen = hook._select(losses)
        counts[chosen] += 1
    expected = torch.tensor([0.25, 0.5, 0.75, 1.0]) ** 2
    assert (counts / 3000).tolist() == pytest.approx(expected.tolist(), abs=0.03)


def test_selective_backprop_trains_full_microbatches_of_selected_rows(tiny_overrides, tmp_path):
    seen = SeenRows()
    run_pretraining(config(tiny_overrides, "method=selective_backprop", "budget=3",
                           "method.selective_backprop.beta=3", "train.validate_at_end=false"),
                    tmp_path, hooks=[seen])
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert 0 < records[-1]["selected_fraction"] < 0.6
    assert all(len(ids) == 8 for ids in seen.ids)  # full microbatches of selected rows
    assert len(torch.cat(seen.ids).unique()) == 48  # no row trained twice


def test_irreducible_losses_are_looked_up_by_id_not_position():
    ids = np.array([40, 7, 1000, 3])
    il = IrreducibleLosses(ids, np.array([0.4, 0.07, 10.0, 0.03]))
    order = torch.tensor([1000, 3, 40, 7])
    assert il.lookup(order).tolist() == pytest.approx([10.0, 0.03, 0.4, 0.07])
    with pytest.raises(Exception, match="No irreducible loss"):
        il.lookup(torch.tensor([5]))


@pytest.mark.parametrize("seed", [0, 1])
def test_rho_loss_selects_by_reducible_loss_under_any_shuffle(tiny_overrides, tmp_path, seed):
    cfg = config(tiny_overrides)
    train_ids = np.asarray(prepare_data(cfg.data, data_cache_root(cfg)).train.example_ids)
    favoured = train_ids % 4 == 0  # irreducible loss 0 -> large reducible loss
    il = IrreducibleLosses(train_ids, np.where(favoured, 0.0, 100.0)).save(tmp_path / "il.npz")
    seen = SeenRows()
    run_pretraining(config(tiny_overrides, "method=rho_loss", f"seed={seed}", "budget=2",
                           f"method.rho_loss.il_losses={il}", "train.validate_at_end=false"),
                    tmp_path / "run", hooks=[seen])
    trained = torch.cat(seen.ids)
    assert len(trained) == 32 and bool((trained % 4 == 0).all())


def test_il_model_extraction_and_rho_entry_point(tiny_overrides, pretrain_base_dir, tmp_path):
    # Regression: NTNG's pretrain_bert_rho_loss.py crashed; ours runs end to end.
    summary = run_pretraining(config(tiny_overrides, "method=il_model", "budget=2",
                                     "train.validate_at_end=false"), tmp_path / "il")
    assert summary["steps"] == 2
    path = extract(tmp_path / "il", tmp_path / "il.npz", batch_size=256, progress=False)
    il = IrreducibleLosses.load(path)
    cfg = config(tiny_overrides)
    prepared = prepare_data(cfg.data, data_cache_root(cfg))
    assert il.covers(np.asarray(prepared.train.example_ids)).all()
    assert il.fingerprint == prepared.fingerprint and np.isfinite(il.losses).all()

    args = [sys.executable, "pretrain_bert_rho_loss.py", *tiny_overrides, "name=rho-cli",
            "budget=2", f"method.rho_loss.il_losses={path}", "method.rho_loss.keep_fraction=0.5"]
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (pretrain_base_dir / "rho-cli" / "pretrain").glob("*_*")
    assert all(np.isfinite(r["reducible_loss"]) for r in read_jsonl(run / "metrics.jsonl"))

    missing = subprocess.run([*args[:-2], "method.rho_loss.il_losses=/nonexistent.npz"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_impossible_combinations_fail_at_startup(tiny_overrides):
    cases = {
        "needs method.rho_loss.il_losses": ["method=rho_loss"],
        "cannot also select": ["method=il_model", "method.selection=selective_backprop"],
        "not fp16": ["train/optim=sophiag", "impl.precision=fp16", "impl.device=cuda"],
        "keep_fraction": ["method=rho_loss", "method.rho_loss.il_losses=x",
                          "method.rho_loss.keep_fraction=0"],
        "Allowed values": ["method.selection=random"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match=message):
            config(tiny_overrides, *overrides)


def test_selective_backprop_lion_and_layer_drop_compose(tiny_overrides, tmp_path):
    summary = run_pretraining(config(tiny_overrides, "method=selective_backprop",
                                     "method.layer_drop.enabled=true", "train/optim=lion",
                                     "budget=2", "train.validate_at_end=false"), tmp_path)
    record = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert summary["steps"] == 2 and "theta" in record and "selected_fraction" in record


def test_methods_on_several_processes_need_ddp_and_even_row_counts():
    from efficient_training import build_hooks

    cfg = load_pretrain_config(compose("pretrain", ["method=selective_backprop"]))
    assert [hook.name for hook in build_hooks(cfg, None, None, world_size=2)] == \
        ["selective_backprop"]
    fsdp = load_pretrain_config(compose("pretrain", ["method=selective_backprop",
                                                     "impl.distributed=fsdp"]))
    with pytest.raises(ConfigError, match="impl.distributed=ddp"):
        build_hooks(fsdp, model=None, prepared=None, world_size=2)
    sophia = load_pretrain_config(compose("pretrain", ["train/optim=sophiag",
                                                       "train.optim.hessian_batch_size=9"]))
    with pytest.raises(ConfigError, match="multiple of 2"):
        build_hooks(sophia, model=None, prepared=None, world_size=2)
    plain = load_pretrain_config(compose("pretrain", ["impl.distributed=fsdp"]))
    assert build_hooks(plain, model=None, prepared=None, world_size=2) == []
