"""SLURM through Hydra's submitit launcher: composed parameters, sbatch text, rendezvous env."""

import os

from cramming.backend.distributed import export_slurm_environment
from cramming.slurm import sbatch_script


def test_two_node_submission_has_one_task_per_gpu():
    script = sbatch_script(["hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
                            "hydra.launcher.partition=gpu", "name=big"])
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                 "--signal=USR2@120", "--time=1440", "--mem=64GB"):
        assert f"#SBATCH {line}" in script
    assert "srun" in script and "big/.submitit" in script


def test_slurm_tasks_become_torch_distributed_ranks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
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
