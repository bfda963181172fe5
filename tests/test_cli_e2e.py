"""End to end through the real command lines: pretrain, SIGKILL + resume, validate_bert."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cramming.backend.metrics import read_jsonl
from tests.conftest import REPO_ROOT


def cli(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, script, *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def printed_json(stdout: str) -> dict:
    return json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])[0]


def run_dirs(base: Path, name: str) -> list[Path]:
    return sorted((base / name / "pretrain").glob("*_*"))


def test_pretrain_then_validate_bert(tiny_overrides, pretrain_base_dir):
    cli("pretrain_bert.py", *tiny_overrides, "name=e2e", "budget=12")
    (run_dir,) = run_dirs(pretrain_base_dir, "e2e")
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 12

    result = cli("validate_bert.py", "name=e2e", f"base_dir={pretrain_base_dir}",
                 "impl=cpu", "impl.progress_bar=false", "max_batches=4")
    printed = printed_json(result.stdout)
    assert 0 < printed["loss"] < 10 and 0 <= printed["accuracy"] <= 1
    assert printed["masked_tokens"] > 0
    records = read_jsonl(run_dir / "validation.jsonl")
    assert records[-1]["loss"] == pytest.approx(printed["loss"])

    again = cli("validate_bert.py", "name=e2e", f"base_dir={pretrain_base_dir}",
                "impl=cpu", "impl.progress_bar=false", "max_batches=4")
    assert printed_json(again.stdout)["loss"] == printed["loss"]


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_overrides, pretrain_base_dir):
    common = [*tiny_overrides, "budget=16", "train.checkpoint_every_steps=4"]
    cli("pretrain_bert.py", *common, "name=straight")
    (straight,) = run_dirs(pretrain_base_dir, "straight")
    reference = [r["loss"] for r in read_jsonl(straight / "metrics.jsonl")]

    process = subprocess.Popen([sys.executable, "pretrain_bert.py", *common, "name=killed"],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        dirs = run_dirs(pretrain_base_dir, "killed")
        if dirs and (dirs[0] / "checkpoints" / "LATEST").is_file():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = run_dirs(pretrain_base_dir, "killed")
    assert not (killed / "model").exists(), "killed too late: the run had already finished"

    cli("pretrain_bert.py", *common, "name=killed", "resume=true")
    assert run_dirs(pretrain_base_dir, "killed") == [killed]
    resumed = [r["loss"] for r in read_jsonl(killed / "metrics.jsonl")]
    assert resumed == pytest.approx(reference, rel=1e-5, abs=1e-6)
