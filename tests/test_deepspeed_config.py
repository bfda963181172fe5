"""DeepSpeed backend selection and config files: checked at start-up, with clear messages."""

import json
import os
import subprocess
import sys

import pytest

from cramming.backend.deepspeed_engine import engine_config
from cramming.config import compose, load_pretrain_config
from cramming.config.deepspeed_config import bundled_configs, read_deepspeed_config, zero_stage
from cramming.errors import ConfigError
from tests.conftest import REPO_ROOT


def typed(*overrides: str):
    return load_pretrain_config(compose("pretrain", ["train.batch_size=128", *overrides]))


def write_config(tmp_path, content) -> str:
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_impl_group_selects_deepspeed_and_each_bundled_zero_stage():
    assert {"zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"} <= set(
        bundled_configs())
    cfg = typed("impl=deepspeed")
    assert cfg.impl.distributed == "deepspeed" and cfg.impl.deepspeed_config == "zero2"
    assert typed("impl=fsdp").impl.distributed == "fsdp"
    stages = {name: zero_stage(read_deepspeed_config(name)) for name in bundled_configs()}
    assert stages["zero1"] == 1 and stages["zero2"] == stages["zero2_offload"] == 2
    assert stages["zero3"] == stages["zero3_offload"] == 3


def test_engine_config_takes_batch_clipping_from_the_cramming_config(tmp_path):
    path = write_config(tmp_path, {"zero_optimization": {"stage": 3}, "wall_clock_breakdown": 1})
    cfg = typed("impl=deepspeed", f"impl.deepspeed_config={path}", "impl.microbatch_size=16",
                "train.gradient_clipping=0.25")
    config = engine_config(cfg, world_size=4)
    assert config["train_micro_batch_size_per_gpu"] == 16
    assert config["train_batch_size"] == 64 and config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.25
    assert config["zero_optimization"] == {"stage": 3} and config["wall_clock_breakdown"] == 1


@pytest.mark.parametrize("content, message", [
    ({"train_batch_size": 64}, "train.batch_size"),
    ({"optimizer": {"type": "Adam"}}, "train/optim"),
    ({"bf16": {"enabled": True}}, "impl.precision"),
    ({"zero_optimization": {"stage": 4}}, "stage=4"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}}, "'gpu'"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "stage 3"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_bad_deepspeed_config_file_is_named_with_the_fix(tmp_path, content, message):
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError, match=message):
        typed("impl=deepspeed", f"impl.deepspeed_config={path}")


@pytest.mark.parametrize("overrides, message", [
    (["impl.deepspeed_config=zero5"], "zero1, zero2"),
    (["impl.precision=fp16"], "impl.precision=bf16"),
    (["method=stacking"], "impl.distributed=ddp"),
    (["impl.deepspeed_config=zero3", "train.ema_decay=0.999"], "zero2"),
])
def test_unsupported_combinations_fail_at_start_up(overrides, message):
    with pytest.raises(ConfigError, match=message):
        typed("impl=deepspeed", *overrides)


def test_missing_deepspeed_package_says_how_to_install_it(tmp_path):
    # The real CLI in a Python where deepspeed cannot be imported.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['deepspeed'] = None  # as if not installed\n")
    result = subprocess.run(
        [sys.executable, "pretrain_bert.py", "impl=deepspeed", f"base_dir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'cramming[deepspeed]'" in result.stderr
    assert not (tmp_path / "data").exists()
