"""Preview the sbatch script Hydra's submitit launcher would submit for a pretraining run.

    python -m cramming.slurm hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=4 name=big

Uses the same parameter mapping as ``hydra_plugins.hydra_submitit_launcher`` and
submitit's own sbatch writer, so what is printed is what ``-m hydra/launcher=slurm``
sends to SLURM (the command line differs: submitit pickles the job instead).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cramming.config import CONFIG_DIR, register_resolvers

# Launcher settings that are not sbatch options (executor / array settings).
NOT_SBATCH = {"_target_", "submitit_folder", "max_num_timeout", "array_parallelism",
              "stderr_to_stdout"}


def sbatch_script(overrides: list[str], launcher: str = "slurm") -> str:
    """The sbatch file text for ``pretrain_bert.py`` with ``overrides`` on SLURM.

    ``hydra/launcher=<name>`` among the overrides (e.g. the plugin's own ``submitit_slurm``)
    replaces ``launcher``, the bundled preset.
    """
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    chosen = [arg for arg in overrides if arg.startswith("hydra/launcher=")]
    if chosen:
        launcher = chosen[-1].split("=", 1)[1]
        overrides = [arg for arg in overrides if arg not in chosen]
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("pretrain", [f"hydra/launcher={launcher}", *overrides],
                      return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    launcher_cfg.name = "pretrain_bert"
    params = OmegaConf.to_container(launcher_cfg, resolve=True)
    folder = str(Path(params["submitit_folder"]).absolute())  # as submitit writes it
    # Generic names -> sbatch names, exactly as submitit's SlurmExecutor converts them.
    renames = SlurmExecutor._equivalence_dict()
    sbatch = {renames.get(k, k): v for k, v in params.items() if k not in NOT_SBATCH}
    if sbatch.get("mem") is not None:
        sbatch["mem"] = _convert_mem(sbatch["mem"])
    sbatch = {k: v for k, v in sbatch.items() if v is not None}
    command = f"{sys.executable} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=folder, **sbatch)


if __name__ == "__main__":
    print(sbatch_script(sys.argv[1:]))
