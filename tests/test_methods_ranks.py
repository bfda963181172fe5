"""The efficient-training methods on two processes (torchrun, gloo) against one process.

Two ranks with microbatch m must train like one process with microbatch 2m: the same rows
(selected globally), the same layers run or skipped, the same Hessian estimates, the same
budget charges; so the same losses, budget progress and final weights up to the order of
float sums in DDP's all-reduce. Each run combines methods that touch different parts of
the loop, to keep the file fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cramming.backend.checkpoint import load_model_folder
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.data import prepare_data
from cramming.pretrain import data_cache_root, run_pretraining
from efficient_training.rho_loss import IrreducibleLosses
from efficient_training.sophia_hessian import sample_labels
from tests.ddp_worker import RecordExamples
from tests.test_distributed import NO_DROPOUT, seen, worker
from tests.test_rst_clock import write_test_table

STACKING = ["arch.num_layers=4", "method.stacking.enabled=true",
            "method.stacking.initial_layers=1", "method.stacking.at=[0.25,0.5]"]
LAYER_DROP = ["method.layer_drop.enabled=true", "method.layer_drop.theta_min=0.5",
              "method.layer_drop.gamma=20"]
SOPHIA = ["train/optim=sophiag", "train.optim.hessian_interval=2",
          "train.optim.hessian_batch_size=12", "train.optim.hessian_mean_rows=4",
          "train.optim.lr=1e-3"]


def config(overrides: list[str]):
    return load_pretrain_config(compose("pretrain", overrides))


def rst_table(tiny_overrides: list[str], folder: Path) -> list[str]:
    """RST budget overrides with a table for microbatch 8 that scales linearly, so the
    one-process run (8 rows) and each rank (4 rows) are charged by the same numbers."""
    path = write_test_table(folder, config([*tiny_overrides, "arch.num_layers=4"]))
    table = json.loads(path.read_text())
    path.write_text(json.dumps({**table, "microbatch_scaling": "linear"}))
    return ["budget_kind=rst", f"budget={0.5 / 3600}", "rst.device=testdev",
            f"rst.tables_dir={folder}"]


def one_and_two_processes(overrides: list[str], tmp_path: Path) -> tuple[Path, Path, dict]:
    """Train with one process (microbatch 8, in this process) and two (microbatch 4)."""
    recorder = RecordExamples()
    run_pretraining(config([*overrides, "impl.microbatch_size=8"]), tmp_path / "one",
                    hooks=[recorder])
    worker(tmp_path / "two", [*overrides, "impl.microbatch_size=4"], processes=2)
    return tmp_path / "one", tmp_path / "two", {"example_ids": recorder.example_ids,
                                                 "progress": recorder.progress}


def assert_same_training(one: Path, two: Path, keys: tuple[str, ...] = ("loss",)) -> None:
    """The same logged values at every step and the same final weights."""
    single, split = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert len(single) == len(split) >= 4
    for a, b in zip(single, split):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    weights = [load_model_folder(run / "model").model.state_dict() for run in (one, two)]
    for name, value in weights[0].items():
        assert (value - weights[1][name]).abs().max() < 1e-4, name


def global_rows(two: Path, micro: int = 4) -> list[int]:
    """The two ranks' trained rows interleaved back into one process's order."""
    per_rank = [np.array(seen(two, rank)["example_ids"]).reshape(-1, micro) for rank in (0, 1)]
    return np.concatenate([np.concatenate(pair) for pair in zip(*per_rank)]).tolist()


def assert_ranks_agree_on_the_clock(two: Path, one_progress: list[float]) -> None:
    ranks = [seen(two, rank) for rank in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == len(one_progress)
    assert ranks[0]["progress"] == ranks[1]["progress"]  # each rank charged the global work
    assert ranks[0]["progress"] == pytest.approx(one_progress, rel=1e-9)


def test_split_sampling_of_sophia_labels_equals_one_draw():
    logits = torch.randn(7, 50)
    whole = torch.multinomial(torch.softmax(logits, -1), 1,
                              generator=torch.Generator().manual_seed(4)).squeeze(1)
    parts = [sample_labels(logits[a:b], torch.Generator().manual_seed(4), a, 7)
             for a, b in ((0, 3), (3, 3), (3, 7))]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(sample_labels(logits, torch.Generator().manual_seed(4)), whole)


def test_stacking_layer_drop_and_sophia_under_rst(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *NO_DROPOUT, *STACKING, "method.stacking.optimizer_state=copy",
                 *LAYER_DROP, *SOPHIA, *rst_table(tiny_overrides, tmp_path / "tables"),
                 "train.validate_at_end=false"]
    one, two, reference = one_and_two_processes(overrides, tmp_path)
    assert_same_training(one, two, ("loss", "depth", "active_layers", "rst_seconds",
                                    "rst_train_seconds", "rst_hessian_seconds",
                                    "hessian_estimates"))
    records = read_jsonl(one / "metrics.jsonl")
    assert records[0]["depth"] == 1 and records[-1]["depth"] == 4
    assert min(r["active_layers"] for r in records if r["depth"] == 4) < 4  # layers dropped
    assert records[-1]["rst_hessian_seconds"] > 0
    assert_ranks_agree_on_the_clock(two, reference["progress"])


def test_selective_backprop_with_stacking_reset(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *NO_DROPOUT, "method=selective_backprop",
                 "method.selective_backprop.beta=2", *STACKING,
                 "method.stacking.optimizer_state=reset", "budget=4",
                 "train.validate_at_end=false"]
    one, two, reference = one_and_two_processes(overrides, tmp_path)
    assert_same_training(one, two, ("loss", "selected_fraction", "depth"))
    assert global_rows(two) == reference["example_ids"]  # the same rows selected
    assert 0 < read_jsonl(one / "metrics.jsonl")[-1]["selected_fraction"] < 1


def test_rho_loss_with_stacking_keep(tiny_overrides, tmp_path):
    cfg = config(tiny_overrides)
    ids = np.asarray(prepare_data(cfg.data, data_cache_root(cfg)).train.example_ids)
    il = IrreducibleLosses(ids, np.random.default_rng(0).uniform(0, 3, len(ids)))
    path = il.save(tmp_path / "il.npz")
    overrides = [*tiny_overrides, *NO_DROPOUT, "method=rho_loss",
                 f"method.rho_loss.il_losses={path}", *STACKING,
                 "method.stacking.optimizer_state=keep", "budget=4",
                 "train.validate_at_end=false"]
    one, two, reference = one_and_two_processes(overrides, tmp_path)
    assert_same_training(one, two, ("loss", "reducible_loss", "depth"))
    assert global_rows(two) == reference["example_ids"]


def test_irreducible_loss_model_trains_on_the_held_out_split(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *NO_DROPOUT, "method=il_model", "budget=4",
                 "train.validate_at_end=false"]
    one, two, reference = one_and_two_processes(overrides, tmp_path)
    assert_same_training(one, two)
    held_out = set(seen(two, 0)["train_ids"])
    cfg = config(tiny_overrides)
    assert held_out == set(np.asarray(prepare_data(cfg.data, data_cache_root(cfg))
                                      .val.example_ids).tolist())
    assert global_rows(two) == reference["example_ids"]
