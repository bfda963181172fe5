"""Checkpoints are atomic and corrupt files give clear errors."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from cramming.backend.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from cramming.errors import CheckpointError
from tests.conftest import REPO_ROOT


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))


def test_roundtrip_and_pruning(tmp_path):
    model = small_model(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=2)
    folders = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert folders == ["step-000000002", "step-000000003"]
    restored = small_model(1)
    state = load_checkpoint(latest_checkpoint(tmp_path), restored)
    assert state["step"] == 3
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_truncated_weights_raise_checkpoint_error(tmp_path):
    folder = save_checkpoint(tmp_path, 1, small_model(), {"step": 1})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(folder, small_model())


def test_truncated_state_raises_checkpoint_error(tmp_path):
    folder = save_checkpoint(tmp_path, 1, small_model(), {"step": 1, "x": torch.ones(1000)})
    state = folder / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="state.pt"):
        load_checkpoint(folder, small_model())


def test_weights_of_another_model_are_rejected(tmp_path):
    folder = save_checkpoint(tmp_path, 1, small_model(), {"step": 1})
    with pytest.raises(CheckpointError, match="arch"):
        load_weights(nn.Linear(3, 3), folder / "model.safetensors")


WRITER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from cramming.backend.checkpoint import save_checkpoint
    run_dir = sys.argv[1]
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    save_checkpoint(run_dir, 1, small, {"step": 1})
    print("first", flush=True)
    big = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(4096, 4096))
    big[0].load_state_dict(small[0].state_dict())
    for step in range(2, 1000):
        save_checkpoint(run_dir, step, big, {"step": step, "pad": torch.zeros(2**26)})
    """
)


def test_sigkill_during_write_keeps_a_readable_checkpoint(tmp_path):
    """Kill the writer repeatedly mid-write: LATEST always names a complete checkpoint."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(script), str(run_dir)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert process.stdout.readline().strip() == "first"
    time.sleep(1.5)  # well inside the second, ~300 MB write
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = latest_checkpoint(run_dir)
    assert folder is not None
    step = int(folder.name.split("-")[1])
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    if step > 1:
        model.append(nn.Linear(4096, 4096))
    state = load_checkpoint(folder, model)
    assert state["step"] == step
