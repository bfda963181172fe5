"""Config composition and start-up validation: bad overrides fail fast and say why."""

import subprocess
import sys

import pytest

from cramming.config import compose, load_pretrain_config
from cramming.config.schema import PretrainConfig
from cramming.errors import ConfigError
from tests.conftest import REPO_ROOT


def typed(*overrides: str) -> PretrainConfig:
    return load_pretrain_config(compose("pretrain", overrides))


def test_default_config_is_crammed_bert_o4():
    cfg = typed()
    assert cfg.arch.name == "crammed-bert" and cfg.arch.num_layers == 16
    assert cfg.train.name == "bert-o4" and cfg.train.optim.name == "adamw"
    assert cfg.train.optim.betas == [0.9, 0.98] and cfg.train.gradient_clipping == 0.5
    assert cfg.budget == 24 and cfg.budget_kind == "hours"


def test_overrides_reach_the_typed_config():
    cfg = typed("name=run1", "budget=3", "train=bert-o3", "train/optim=adam",
                "impl.microbatch_size=64", "arch=bert-base")
    assert (cfg.name, cfg.budget, cfg.train.batch_size) == ("run1", 3.0, 1536)
    assert cfg.train.optim.name == "adam" and cfg.impl.microbatch_size == 64
    assert cfg.arch.name == "bert-base"


@pytest.mark.parametrize(
    "override, message",
    [
        ("+arch.hiden_size=3", "arch.hiden_size"),
        ("+foo=1", "foo"),
        ("budget=abc", "budget"),
        ("impl.microbatch_size=256", "microbatch_size"),
        ("budget=0", "budget"),
        ("impl.precision=fp8", "fp32, bf16, fp16"),
        ("train.mask_prob=1.5", "train.mask_prob"),
        ("budget_kind=days", "hours, steps, tokens"),
        ("data.seq_length=1024", "arch.max_seq_length"),
    ],
)
def test_invalid_settings_name_the_key(override, message):
    overrides = ["train.batch_size=128", override]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        typed(*overrides)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pretrain_bert.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_typo_in_group_option_lists_the_options(tmp_path):
    result = run_cli("arch=crammed-bertt", f"base_dir={tmp_path}")
    assert result.returncode != 0
    assert "crammed-bertt" in result.stderr and "crammed-bert" in result.stderr
    assert not any(tmp_path.iterdir())


def test_invalid_value_fails_before_any_work(tmp_path):
    result = run_cli("impl.microbatch_size=100000", f"base_dir={tmp_path}")
    assert result.returncode == 2
    assert "impl.microbatch_size=100000" in result.stderr
    assert not (tmp_path / "data").exists()
