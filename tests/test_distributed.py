"""Data parallelism with real processes (torchrun, gloo on CPU)."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from cramming.backend.checkpoint import load_model_folder
from cramming.backend.metrics import read_jsonl
from tests.conftest import REPO_ROOT

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
NO_DROPOUT = ["arch.dropout=0", "arch.attention_dropout=0"]


def worker_command(run_dir: Path, overrides: list[str], processes: int = 1) -> list[str]:
    launcher = [*TORCHRUN, f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    return [*launcher, "tests/ddp_worker.py", str(run_dir), *overrides]


def worker(run_dir: Path, overrides: list[str], processes: int = 1,
           succeed: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(worker_command(run_dir, overrides, processes), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=900)
    if succeed:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def interrupt_after(process: subprocess.Popen, run_dir: Path, steps: int) -> str:
    """SIGTERM every training process (as SLURM preemption does) once ``steps`` are logged."""
    deadline = time.time() + 600
    while time.time() < deadline and len(read_jsonl(run_dir / "metrics.jsonl")) < steps:
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True) or [process]
    for child in workers:
        child.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "checkpoint written" in stderr
    return stderr


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def seen(run_dir: Path, rank: int) -> dict:
    return json.loads((run_dir / f"seen_rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def small_corpus(tiny_overrides):
    """Few documents, so one epoch is a handful of steps."""
    return [*tiny_overrides, "data.max_documents=30", *NO_DROPOUT]


@pytest.fixture(scope="module")
def single_process_run(small_corpus, tmp_path_factory) -> Path:
    """The reference: one process, microbatch 8, 15 steps (more than one epoch)."""
    run_dir = tmp_path_factory.mktemp("single")
    worker(run_dir, [*small_corpus, "budget=15", "impl.microbatch_size=8"])
    return run_dir


def test_two_processes_equal_one_and_see_every_row_once(small_corpus, single_process_run,
                                                        tmp_path):
    worker(tmp_path / "ddp", [*small_corpus, "budget=15", "impl.microbatch_size=4"],
           processes=2)
    # Same global batch, same keyed masks, the same count per row: the same loss sequence
    # (up to the order of float sums in the gradient all-reduce).
    assert losses(tmp_path / "ddp") == pytest.approx(losses(single_process_run), rel=1e-5)

    ranks = [seen(tmp_path / "ddp", r) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 15
    train_ids = set(ranks[0]["train_ids"])
    # Interleave the ranks' microbatches back into the global order of rows.
    per_rank = [np.array(r["example_ids"]).reshape(-1, 4) for r in ranks]
    global_order = np.concatenate([np.concatenate(pair) for pair in zip(*per_rank)]).tolist()
    assert len(global_order) > len(train_ids), "the run must cover a whole epoch"
    epoch = global_order[: len(train_ids)]
    assert len(set(epoch)) == len(train_ids) and set(epoch) == train_ids
    assert global_order == seen(single_process_run, 0)["example_ids"]


def test_fsdp_equals_one_process_and_exports_a_plain_model(small_corpus, single_process_run,
                                                           tmp_path):
    worker(tmp_path, [*small_corpus, "budget=15", "impl.microbatch_size=4",
                      "impl.distributed=fsdp"], processes=2)
    assert_same_training(tmp_path, single_process_run)


def assert_same_training(run_dir: Path, reference_dir: Path) -> None:
    """Same losses, and a plain exported model (what eval.py loads) with the same weights."""
    assert losses(run_dir) == pytest.approx(losses(reference_dir), rel=5e-3)
    exported, plain = load_model_folder(run_dir / "model"), load_model_folder(
        reference_dir / "model")
    weights, reference = exported.model.state_dict(), plain.model.state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in reference.items()}
    for name, value in weights.items():
        # Adam turns float-level gradient differences into +-lr steps on rare tokens,
        # so compare on average rather than element by element.
        assert (value - reference[name]).abs().mean() < 5e-4, name
    validation = [read_jsonl(d / "validation.jsonl")[-1]["loss"] for d in (run_dir,
                                                                            reference_dir)]
    assert validation[0] == pytest.approx(validation[1], rel=2e-3)


@pytest.mark.parametrize("zero_config", ["zero2", "zero3_offload"])
def test_deepspeed_zero_equals_one_process_and_exports_a_plain_model(
        zero_config, small_corpus, single_process_run, tmp_path):
    worker(tmp_path, [*small_corpus, "budget=15", "impl.microbatch_size=4",
                      "impl.distributed=deepspeed", f"impl.deepspeed_config={zero_config}"],
           processes=2)
    assert_same_training(tmp_path, single_process_run)
    assert (tmp_path / "checkpoints" / "step-000000015" / "deepspeed").is_dir()


def test_deepspeed_sigterm_then_resume_on_the_same_or_another_world_size(
        small_corpus, single_process_run, tmp_path):
    common = [*small_corpus, "budget=15", "impl.distributed=deepspeed",
              "impl.deepspeed_config=zero3"]
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        worker_command(interrupted, [*common, "impl.microbatch_size=4"], processes=2),
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    interrupt_after(process, interrupted, steps=3)
    stopped_at = len(read_jsonl(interrupted / "metrics.jsonl"))
    assert 3 <= stopped_at < 15 and not (interrupted / "model").exists()
    reference = losses(single_process_run)

    # The same two processes load DeepSpeed's own files; one process re-partitions them
    # through DeepSpeed's universal checkpoint.
    for processes, micro in ((2, 4), (1, 8)):
        run_dir = tmp_path / f"resumed-{processes}"
        shutil.copytree(interrupted, run_dir)
        result = worker(run_dir, [*common, f"impl.microbatch_size={micro}", "resume=true"],
                        processes=processes)
        resumed = losses(run_dir)
        assert len(resumed) == 15
        assert resumed[:stopped_at] == losses(interrupted)
        assert resumed == pytest.approx(reference, rel=5e-3)
        if processes == 1:
            assert "universal format" in result.stderr


def test_wall_clock_budget_stops_all_ranks_on_the_same_step(small_corpus, tmp_path):
    worker(tmp_path, [*small_corpus, "budget_kind=hours", "budget=0.003",
                      "impl.microbatch_size=4", "train.validate_at_end=false"], processes=2)
    steps = [seen(tmp_path, r)["steps"] for r in (0, 1)]
    assert steps[0] == steps[1] >= 1
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == steps[0]


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_sigterm_then_resume_on_two_processes_continues_the_run(engine, small_corpus,
                                                               single_process_run, tmp_path):
    common = [*small_corpus, "budget=15"]
    reference = losses(single_process_run)

    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "tests/ddp_worker.py", str(run_dir), *common,
                                "impl.microbatch_size=8"], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    interrupt_after(process, run_dir, steps=3)
    stopped_at = len(read_jsonl(run_dir / "metrics.jsonl"))
    assert 3 <= stopped_at < 15 and not (run_dir / "model").exists()

    worker(run_dir, [*common, "impl.microbatch_size=4", "resume=true",
                     f"impl.distributed={engine}"], processes=2)
    resumed = losses(run_dir)
    assert len(resumed) == 15
    assert resumed[:stopped_at] == reference[:stopped_at]
    assert resumed == pytest.approx(reference, rel=5e-3)
