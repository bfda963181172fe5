"""The background data pipeline: determinism, per-rank shares, no host syncs, named hooks."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import TrainConfig
from cramming.data import MLMMasker, PackedDataset
from cramming.data.pipeline import DataPipeline, MicrobatchRequest, RowOrder
from cramming.errors import CheckpointError
from cramming.objectives import MaskedLanguageModeling
from cramming.pretrain import run_pretraining

VOCAB, MASK = 500, 4
SPECIAL = [0, 1, 2, 3, 4]


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def dataset(rows: int = 40, length: int = 32) -> PackedDataset:
    ids = np.random.default_rng(0).integers(5, VOCAB, (rows, length)).astype(np.uint16)
    ids[:, 0] = 2
    return PackedDataset(ids, np.arange(rows) + 1000)


def objective(exact: bool = True, mask_prob_end: float | None = None) -> MaskedLanguageModeling:
    train = TrainConfig(exact_mask_count=exact, mask_prob_end=mask_prob_end)
    return MaskedLanguageModeling(MLMMasker(VOCAB, MASK, SPECIAL, exact_count=exact), train,
                                  seed=3)


def as_tuple(batch) -> tuple:
    return batch.input_ids, batch.labels, batch.example_ids


def test_row_order_is_a_fresh_permutation_per_epoch():
    order = RowOrder(10, seed=1)
    first, second = order.rows(0, 10), order.rows(10, 10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    assert np.array_equal(order.rows(7, 6), np.concatenate([first[7:], second[:3]]))
    assert not np.array_equal(RowOrder(10, seed=1, stream=5).rows(0, 10), first)


@pytest.mark.parametrize("exact", [True, False])
def test_microbatches_do_not_depend_on_workers_or_order(exact):
    """Same masks whatever the worker count and the order the work is done in."""
    requests = [MicrobatchRequest(0, start, 6, index, 0.4)
                for index, start in enumerate(range(0, 120, 6))]  # three epochs of 40 rows
    reference = [as_tuple(DataPipeline(dataset(), objective(exact), 7, workers=0).build(r))
                 for r in requests]
    for workers, prefetch in ((1, 2), (3, 8)):
        pipeline = DataPipeline(dataset(), objective(exact), 7, workers, prefetch)
        shuffled = list(requests)
        random.Random(workers).shuffle(shuffled)
        pipeline.schedule(shuffled)
        got = {r: as_tuple(pipeline.get(r)[0]) for r in reversed(requests)}
        pipeline.close()
        for request, expected in zip(requests, reference):
            assert all(torch.equal(a, b) for a, b in zip(got[request], expected))


def test_rank_shares_equal_one_process_with_a_larger_microbatch():
    pipeline = DataPipeline(dataset(), objective(), 7, workers=0)
    whole = pipeline.build(MicrobatchRequest(0, 36, 8, 5, 0.2))  # crosses an epoch
    shares = [pipeline.build(MicrobatchRequest(0, 36 + rank * 4, 4, 5, 0.2)) for rank in (0, 1)]
    for part in range(3):
        assert torch.equal(torch.cat([as_tuple(s)[part] for s in shares]), as_tuple(whole)[part])


def test_a_schedule_change_rebuilds_instead_of_serving_stale_masks():
    pipeline = DataPipeline(dataset(), objective(mask_prob_end=0.05), 7, workers=1)
    early = MicrobatchRequest(0, 0, 8, 0, 0.0)
    pipeline.schedule([early])
    late = MicrobatchRequest(0, 0, 8, 0, 1.0)  # same rows, lower masking rate
    batch, _ = pipeline.get(late)
    pipeline.close()
    assert torch.equal(batch.labels, pipeline.build(late).labels)
    assert (batch.labels != -100).sum() < (pipeline.build(early).labels != -100).sum()


class SyncRecorder(TorchFunctionMode):
    """Records calls that make the host wait for the device, on the thread it is entered."""

    SYNCS = {"item", "tolist", "nonzero", "__bool__", "__float__", "__int__", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.thread = threading.get_ident()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.SYNCS and threading.get_ident() == self.thread:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


class RecordSyncs(TrainingHook):
    """Enters the recorder for the steps after the first (compile and warm-up excluded)."""

    name = "record_syncs"

    def __init__(self):
        self.recorder: SyncRecorder | None = None
        self.calls: list[str] = []

    def before_step(self, trainer):
        if trainer.step >= 1:
            self.recorder = SyncRecorder()
            self.recorder.__enter__()
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("error")

    def after_step(self, trainer, record):
        if self.recorder is not None:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode(0)
            self.recorder.__exit__(None, None, None)
            self.calls += self.recorder.calls
            self.recorder = None


def test_training_steps_never_wait_for_the_device(tiny_overrides, tmp_path):
    """No .item() / .tolist() / nonzero / bool() of a tensor on the training thread between
    logging steps (CPU check); on CUDA the step also runs under sync debug mode 'error'."""
    hook = RecordSyncs()
    overrides = [*tiny_overrides, "budget=4", "train.log_every_steps=100",
                 "train.gradient_clipping=0.5"]
    if torch.cuda.is_available():
        overrides = [o for o in overrides if o != "impl=cpu"] + ["impl.device=cuda"]
    run_pretraining(config(overrides), tmp_path, hooks=[hook])
    assert hook.calls == [], hook.calls


class Counter(TrainingHook):
    """A hook with state: counts its steps."""

    def __init__(self, name: str, step: int = 0):
        self.name, self.count = name, step

    def after_step(self, trainer, record):
        self.count += 1
        record[f"count_{self.name}"] = self.count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


def test_hook_state_is_keyed_by_name_and_survives_reordering(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    base = [*tiny_overrides, "budget=6", "train.checkpoint_every_steps=3"]
    first, second = Counter("a"), Counter("b", step=100)

    class StopAt3(TrainingHook):
        name = "stop"

        def after_step(self, trainer, record):
            if trainer.step == 3:
                trainer._stop_signal = 15  # as a SIGTERM would

    run_pretraining(config(base), run, hooks=[first, second, StopAt3()])
    assert (first.count, second.count) == (3, 103)
    with pytest.raises(CheckpointError, match="no state for hook"):
        run_pretraining(config(base, "resume=true"), run, hooks=[Counter("c"), StopAt3()])
    resumed = [Counter("b"), Counter("a")]  # other order, fresh state
    run_pretraining(config(base, "resume=true"), run, hooks=[*resumed, StopAt3()])
    assert (resumed[1].count, resumed[0].count) == (6, 106)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["count_a"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_data_wait_is_logged_and_resume_is_exact_with_workers(tiny_overrides, tmp_path):
    """Workers on, 0 workers, and a resumed run: one loss sequence, data wait logged."""
    base = [*tiny_overrides, "budget=6", "train.checkpoint_every_steps=2", "seed=4"]
    threaded, inline = tmp_path / "threaded", tmp_path / "inline"
    run_pretraining(config(base, "impl.data_workers=2", "impl.prefetch_microbatches=3"),
                    threaded)
    run_pretraining(config(base, "impl.data_workers=0"), inline)
    records = read_jsonl(threaded / "metrics.jsonl")
    assert [r["loss"] for r in records] == [r["loss"] for r in read_jsonl(inline / "metrics.jsonl")]
    assert all(0 <= r["data_wait_seconds"] <= r["step_seconds"] for r in records)

    class Crash(TrainingHook):
        name = "crash"

        def after_step(self, trainer, record):
            if trainer.step == 4:
                raise KeyboardInterrupt("simulated crash")

    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(base), crashed, hooks=[Crash()])
    run_pretraining(config(base, "resume=true"), crashed)
    assert [r["loss"] for r in read_jsonl(crashed / "metrics.jsonl")] == \
        [r["loss"] for r in records]
    summary = json.loads(Path(crashed / "summary.json").read_text())
    assert summary["steps"] == 6
