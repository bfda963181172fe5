"""Checkpoint faults: nothing run from a file, nothing damaged used, nothing lost.

One straight and one crashed tiny run are shared by the module; each test copies the
crashed run folder, damages it and resumes (or validates) through the real entry points.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from cramming.backend.checkpoint import (
    MANIFEST,
    MODEL_WEIGHTS,
    TRAINING_STATE,
    list_checkpoints,
    load_model_folder,
    read_state,
    save_checkpoint,
    write_manifest,
)
from cramming.backend.metrics import read_jsonl
from cramming.cli import exit_on_error
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import SelectiveBackpropConfig
from cramming.errors import CheckpointError, ConfigError
from cramming.objectives import Microbatch
from cramming.pretrain import run_pretraining
from tests.test_engine import CrashAtStep

STEP3, STEP6 = "step-000000003", "step-000000006"


def config(overrides: list[str], *extra: str):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def flip_bytes(file: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of ``file`` (size unchanged)."""
    data = bytearray(file.read_bytes())
    start = len(data) // 2
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class WritesMarker:
    """Unpickling this would create ``path`` (what a crafted state file would do)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def common(tiny_overrides) -> list[str]:
    return [*tiny_overrides, "budget=8", "train.checkpoint_every_steps=3", "arch.dropout=0.1",
            "train.validate_at_end=false"]


@pytest.fixture(scope="module")
def straight(common, tmp_path_factory, single_thread) -> Path:
    """The uninterrupted run (reference losses and an exported model folder)."""
    run_dir = tmp_path_factory.mktemp("straight")
    run_pretraining(config(common), run_dir)
    reference = losses(run_dir)
    assert len(reference) == 8 and min(reference) > 1.0  # real losses, not a degenerate run
    return run_dir


@pytest.fixture(scope="module")
def crashed(common, tmp_path_factory, single_thread) -> Path:
    """Crashed after step 7: checkpoints step-3 and step-6, metrics up to step 7."""
    run_dir = tmp_path_factory.mktemp("crashed")
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(common), run_dir, hooks=[CrashAtStep(7)])
    assert [p.name for p in list_checkpoints(run_dir)] == [STEP6, STEP3]
    return run_dir


@pytest.fixture
def run_dir(crashed, tmp_path) -> Path:
    return Path(shutil.copytree(crashed, tmp_path / "run"))


def test_crafted_pickle_in_the_state_file_runs_nothing(common, run_dir, tmp_path, capsys):
    marker = tmp_path / "marker"
    for name in (STEP3, STEP6):  # the attacker also rewrites the manifests to match
        folder = run_dir / "checkpoints" / name
        torch.save({"step": 1, "payload": WritesMarker(marker)}, folder / TRAINING_STATE)
        write_manifest(folder)
    with pytest.raises(CheckpointError) as raised:
        read_state(run_dir / "checkpoints" / STEP6)
    assert "state.pt" in str(raised.value) and "GLOBAL exec" in str(raised.value)
    with pytest.raises(SystemExit) as stopped:
        exit_on_error(run_pretraining, config(common, "resume=true"), run_dir)
    assert stopped.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)  # the whole message on one line
    assert error.startswith("error: No usable checkpoint") and "state.pt" in error
    assert error.endswith("or start over in a new run folder.")
    assert not marker.exists()
    assert [p.name for p in list_checkpoints(run_dir)] == [STEP6, STEP3]


@pytest.mark.parametrize("damaged", [MODEL_WEIGHTS, TRAINING_STATE])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(common, straight, run_dir,
                                                               damaged, caplog):
    flip_bytes(run_dir / "checkpoints" / STEP6 / damaged)
    (run_dir / "checkpoints" / "LATEST").unlink()  # a lost pointer hides nothing either
    with caplog.at_level(logging.WARNING):
        run_pretraining(config(common, "resume=true"), run_dir)
    skipped = [r.getMessage() for r in caplog.records if "Skipped damaged" in r.getMessage()]
    assert len(skipped) == 1 and STEP6 in skipped[0] and damaged in skipped[0]
    assert STEP3 in skipped[0] and "\n" not in skipped[0]
    assert losses(run_dir) == losses(straight)  # bitwise
    # the checkpoint it resumed from survives pruning (keep=2: step-6 and step-8 are newer)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000000008", STEP6, STEP3]


def test_deleted_newest_folder_resumes_from_the_older_one(common, straight, run_dir):
    shutil.rmtree(run_dir / "checkpoints" / STEP6)
    run_pretraining(config(common, "resume=true"), run_dir)
    assert losses(run_dir) == losses(straight)  # bitwise


def test_every_checkpoint_damaged_with_resume_auto_is_an_error_and_deletes_nothing(
        common, run_dir):
    for name in (STEP3, STEP6):
        flip_bytes(run_dir / "checkpoints" / name / MODEL_WEIGHTS)
    before = sorted(p.relative_to(run_dir) for p in (run_dir / "checkpoints").rglob("*"))
    metrics = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="No usable checkpoint") as raised:
        run_pretraining(config(common, "resume=auto"), run_dir)
    assert "\n" not in str(raised.value) and "Nothing was deleted" in str(raised.value)
    for name in (STEP3, STEP6):
        assert f"{name}: Checksum mismatch" in str(raised.value)
    assert sorted(p.relative_to(run_dir) for p in (run_dir / "checkpoints").rglob("*")) == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def test_resume_with_another_hidden_size_names_the_tensor_and_both_shapes(common, run_dir):
    with pytest.raises(CheckpointError) as raised:
        run_pretraining(config(common, "resume=true", "arch.hidden_size=32",
                               "arch.intermediate_size=64"), run_dir)
    message = str(raised.value)
    assert "\n" not in message and "model.safetensors" in message
    assert re.search(r"\w has shape \[\d+, 64\] there but \[\d+, 32\] here", message)


def test_keep_checkpoints_zero_is_rejected_at_config_time(tiny_overrides):
    with pytest.raises(ConfigError, match=r"train.keep_checkpoints=0 must be >= 1"):
        config(tiny_overrides, "train.keep_checkpoints=0")


def test_validate_refuses_a_damaged_model_folder_and_loads_an_old_one(straight, tmp_path,
                                                                      capsys, caplog):
    from cramming.validate import main

    folder = Path(shutil.copytree(straight / "model", tmp_path / "model"))
    flip_bytes(folder / MODEL_WEIGHTS)
    with pytest.raises(SystemExit) as stopped:
        main(compose("validate", [f"model_path={folder}", f"base_dir={tmp_path}"]))
    assert stopped.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert f"{folder / MODEL_WEIGHTS} is damaged" in error and error.endswith("written with it).")

    legacy = Path(shutil.copytree(straight / "model", tmp_path / "legacy"))
    (legacy / MANIFEST).unlink()  # written before model folders had manifests
    with caplog.at_level(logging.WARNING):
        loaded = load_model_folder(legacy)
    assert loaded.arch.hidden_size == 64
    assert any("without verifying" in r.getMessage() for r in caplog.records)


def test_pruning_keeps_the_resumed_and_the_newest_checkpoint_and_newer_folders(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3, 9):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=3)
    # resumed from step-2 (step-3 damaged, step-9 newer than this timeline)
    resumed = tmp_path / "checkpoints" / "step-000000002"
    for step in (4, 5):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=1, protect=[resumed])
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-000000009", "step-000000005", "step-000000002"]
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 6, model, {"step": 6}, keep=0)
    with pytest.raises(TypeError, match=r"state\['hook'\] is a WritesMarker"):
        save_checkpoint(tmp_path, 7, model, {"hook": WritesMarker(tmp_path / "x")})


def test_selective_backprop_state_is_plain_and_restores_its_pool(tmp_path):
    from efficient_training.selective_backprop import SelectiveBackpropHook

    hook = SelectiveBackpropHook(SelectiveBackpropConfig(), microbatch_size=4, seed=0)
    hook.history.extend([1.0, 2.0])
    hook.pool.add(Microbatch(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3,
                             dtype=torch.long), torch.arange(2), loss_weight=0.5,
                             model_kwargs={"causal": False}))
    torch.save(hook.state_dict(), tmp_path / "hook.pt")
    restored = SelectiveBackpropHook(SelectiveBackpropConfig(), microbatch_size=4, seed=1)
    restored.load_state_dict(torch.load(tmp_path / "hook.pt", weights_only=True))
    (batch,) = restored.pool.batches
    assert torch.equal(batch.input_ids, hook.pool.batches[0].input_ids)
    assert batch.loss_weight == 0.5
    assert batch.model_kwargs == {"causal": False} and list(restored.history) == [1.0, 2.0]
    assert torch.equal(restored.generator.get_state(), hook.generator.get_state())


def test_deepspeed_files_that_need_more_than_plain_types_are_refused(tmp_path):
    pytest.importorskip("deepspeed")
    from cramming.backend.deepspeed_engine import check_pickles

    marker = tmp_path / "marker"
    shards = tmp_path / "deepspeed" / "state"
    shards.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}}, shards / "mp_rank_00_model_states.pt")
    check_pickles(tmp_path / "deepspeed")  # plain files pass
    torch.save({"x": WritesMarker(marker)}, shards / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match="optim_states.pt") as raised:
        check_pickles(tmp_path / "deepspeed")
    assert "\n" not in str(raised.value) and not marker.exists()
