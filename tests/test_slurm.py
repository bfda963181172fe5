"""Launchers: SLURM via Hydra's submitit plugin (sbatch text, rendezvous), submitit's local
executor and the basic launcher's multirun sweeps, each through the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

from cramming.backend.distributed import export_slurm_environment
from cramming.slurm import sbatch_script
from tests.conftest import REPO_ROOT


def test_two_node_submission_has_one_task_per_gpu():
    script = sbatch_script(["hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
                            "hydra.launcher.partition=gpu", "name=big"])
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                 "--signal=USR2@120", "--time=1440", "--mem=64GB"):
        assert f"#SBATCH {line}" in script
    assert "srun" in script and "/outputs/.submitit/%j" in script  # hydra.sweep.dir


def test_slurm_tasks_become_torch_distributed_ranks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so the values set below are undone after
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu17,gpu18")
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol here: parse the list
    export_slurm_environment()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == \
        ("5", "8", "1")
    assert os.environ["MASTER_ADDR"] == "gpu17"
    assert os.environ["MASTER_PORT"] == str(20000 + 4242)


def test_plugin_launcher_name_from_the_issue_composes_too():
    script = sbatch_script(["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2",
                            "hydra.launcher.tasks_per_node=2"])
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=2" in script


def run_sweep(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pretrain_bert.py", "-m", *overrides], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def summaries(base_dir: Path, name: str) -> list[dict]:
    return [json.loads(path.read_text())
            for path in sorted((base_dir / name / "pretrain").glob("*/summary.json"))]


def test_multirun_sweep_on_the_basic_launcher(tiny_overrides, tmp_path):
    result = run_sweep(*tiny_overrides, "name=sweep", "budget=2", f"base_dir={tmp_path}",
                       "train/optim=adamw,lion", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = summaries(tmp_path, "sweep")
    assert sorted((r["optimizer"], r["seed"]) for r in runs) == [
        ("adamw", 0), ("adamw", 1), ("lion", 0), ("lion", 1)]
    assert all(r["steps"] == 2 and "val_loss" in r for r in runs)


def test_submitit_local_executor_runs_a_two_task_job(tiny_overrides, tmp_path):
    """The submitit launcher itself (local executor): two tasks rendezvous as two ranks."""
    result = run_sweep("hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                       *tiny_overrides, "name=local", "budget=3", "impl.microbatch_size=4",
                       f"base_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = summaries(tmp_path, "local")
    assert run["steps"] == 3 and run["tokens"] == 3 * 16 * 64  # global batch of 16 rows
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*/*_log.*"))
    assert "Process 0 of 2" in logs and "Process 1 of 2" in logs
    results = sorted((tmp_path / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2


def test_preempted_job_is_requeued_and_resumes_in_its_own_folder(tiny_overrides, tmp_path):
    """submitit's pre-timeout signal (USR2, 30 s before a 1-minute limit) interrupts the run;
    it checkpoints, submitit requeues it, and the requeued job resumes in the same folder."""
    budget_seconds = 32.4  # more training than fits before the signal, less than two windows
    result = run_sweep("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1",
                       *tiny_overrides, "name=preempt", "budget_kind=hours",
                       f"budget={budget_seconds / 3600}", "resume=auto",
                       "train.validate_at_end=false", f"base_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*/*_log.*"))
    assert "Requeued job" in logs and "Resumed from" in logs
    (run_dir,) = (tmp_path / "preempt" / "pretrain").iterdir()
    (run,) = summaries(tmp_path, "preempt")
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert run["budget_spent"] >= budget_seconds / 3600
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(1, run["steps"] + 1))  # one continuous run, no step twice
