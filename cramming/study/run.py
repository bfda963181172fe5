"""Run a study: irreducible-loss models (RHO-Loss), pretraining cells, fine-tuning, report.

Every stage is a Hydra multirun of the ordinary entry points (``python -m cramming pretrain``
/ ``eval``), so the study runs on the basic launcher, submitit's local executor or SLURM
(``study.launcher``). Cells run in fixed folders with ``resume=auto``: rerunning a study skips
finished cells and fine-tuning jobs and resumes interrupted pretraining from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from cramming.config import CONFIG_DIR, check_override_keys, compose, load_pretrain_config
from cramming.errors import CheckpointError, ConfigError, CrammingError
from cramming.evaluation.config import EvalSettings, validate_eval_config
from cramming.study.plan import (
    CELL_GROUP,
    Cell,
    StudyConfig,
    base_dir,
    eval_tag,
    il_losses_file,
    load_study_config,
    plan_cells,
    run_name,
    study_dir,
    write_cell_configs,
)

log = logging.getLogger("cramming.study")
MANIFEST = "study.json"
# one fixed folder per cell (<name>/pretrain/<stamp>_job0), found again by resume=auto
CELL_SUBDIR = "'${cramming_sweep_subdir:${base_dir},${name},pretrain,0,${resume}}'"


class StudyError(CrammingError):
    """A stage of the study stopped; rerunning the same command continues it."""


@dataclasses.dataclass
class Study:
    """A composed study: its config and how its fine-tuning jobs are called."""

    cfg: StudyConfig
    eval_choice: str  # the eval preset (cramming/config/eval/<choice>.yaml)
    eval_overrides: list[str]  # eval.* overrides given for it (all but eval.seeds)
    finetune: EvalSettings  # the fine-tuning recipe as eval.py will compose it

    @property
    def folder(self) -> Path:
        return study_dir(self.cfg)

    @property
    def finetune_seeds(self) -> list[int]:
        return list(self.finetune.seeds)


def compose_study(arguments: list[str]) -> Study:
    """Compose ``study.yaml`` with ``arguments``; check the study, its cells and its eval."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    check_override_keys(arguments, StudyConfig)
    GlobalHydra.instance().clear()
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            raw = hydra_compose(config_name="study", overrides=arguments,
                                return_hydra_config=True)
    except HydraException as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{first} (quote list items that hold '=': "
                          f"study.pretrain=['arch=bert-small','impl=cpu']).") from None
    choice = str(raw.hydra.runtime.choices["eval"])
    raw = OmegaConf.masked_copy(raw, [k for k in raw.keys() if k != "hydra"])
    cfg = load_study_config(raw)
    eval_overrides = [a for a in arguments if a.startswith("eval.")
                      and not a.startswith("eval.seeds=")]
    seeds = [a for a in arguments if a.startswith("eval.seeds=")]
    typed = validate_eval_config(compose("eval", [f"eval={choice}", *eval_overrides, *seeds,
                                                  *cfg.study.finetune, "name=study-check"]))
    return Study(cfg, choice, eval_overrides, typed.eval)


def _launcher(cfg: StudyConfig) -> list[str]:
    return [f"hydra/launcher={cfg.study.launcher}"] if cfg.study.launcher else []


def finished_model(cfg: StudyConfig, cell: Cell) -> Path | None:
    """The cell's model folder once its pretraining has finished, else None."""
    from cramming.backend.checkpoint import find_model_folder

    try:
        return find_model_folder(base_dir(cfg), name=run_name(cfg, cell))
    except CheckpointError:
        return None


def finetune_folder(study: Study, cell: Cell, seed: int) -> Path:
    return (base_dir(study.cfg) / run_name(study.cfg, cell) / "eval"
            / f"{eval_tag(study.finetune)}-seed{seed}")


def _run(command: list[str], stage: str, study: Study) -> None:
    log.info("%s: %s", stage, " ".join(command[1:]))
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        raise StudyError(f"{stage} stopped (exit {returncode}); see the messages above and the "
                         f"cell logs under {study.folder}. Rerun the same study command to "
                         f"continue: finished cells are kept, interrupted ones resume.")


def check_cells(study: Study, cells: list[Cell], search_path: Path) -> None:
    """Compose one cell per method as its pretraining job will: bad settings fail now."""
    seen = set()
    for cell in cells:
        if cell.method in seen:
            continue
        seen.add(cell.method)
        try:
            load_pretrain_config(compose("pretrain", [
                f"hydra.searchpath=['file://{search_path}']", f"+{CELL_GROUP}={cell.key}",
                f"base_dir={base_dir(study.cfg)}", *study.cfg.study.pretrain]))
        except CrammingError as error:
            raise ConfigError(f"study cell {cell.key}: {error}") from None


def check_manifest(study: Study, cells: list[Cell]) -> None:
    """Refuse to continue a study whose cells were run with other settings."""
    path = study.folder / MANIFEST
    if not path.is_file():
        return
    try:
        previous = {c["key"]: c for c in json.loads(path.read_text()).get("cells", [])}
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{path} is unreadable: move the study folder away or fix it.") \
            from None
    now = _manifest(study, cells)["cells"]
    for entry in now:
        old = previous.get(entry["key"])
        if old is not None and (old["overrides"], old["pretrain"], old["budget_kind"]) != \
                (entry["overrides"], entry["pretrain"], entry["budget_kind"]):
            raise ConfigError(
                f"Study '{study.cfg.name}' ran cell {entry['key']} with other settings "
                f"({old['overrides'] + old['pretrain']}, budget_kind={old['budget_kind']}); "
                f"now {entry['overrides'] + entry['pretrain']}, budget_kind="
                f"{entry['budget_kind']}. Use a new study name.")


def _manifest(study: Study, cells: list[Cell], il_cells: list[Cell] = ()) -> dict:
    cfg = study.cfg

    def entry(cell: Cell) -> dict:
        return {"key": cell.key, "method": cell.method, "budget": cell.budget,
                "seed": cell.seed, "run_name": run_name(cfg, cell),
                "overrides": list(cell.overrides), "pretrain": list(cfg.study.pretrain),
                "budget_kind": cfg.budget_kind}

    return {"name": cfg.name, "preset": cfg.study.name, "base_dir": str(base_dir(cfg)),
            "budget_kind": cfg.budget_kind, "baseline": cfg.study.baseline,
            "methods": cfg.study.methods, "budgets": cfg.study.budgets,
            "seeds": cfg.study.seeds, "confidence": cfg.study.confidence,
            "finetune": {"preset": study.eval_choice, "overrides": study.eval_overrides,
                         "tag": eval_tag(study.finetune), "seeds": study.finetune_seeds,
                         "settings": dataclasses.asdict(study.finetune)},
            "cells": [entry(c) for c in cells], "il_cells": [entry(c) for c in il_cells]}


def pretrain(study: Study, cells: list[Cell], search_path: Path, stage: str) -> None:
    """One multirun over the cells whose model does not exist yet.

    With ``study.processes`` > 1 each cell is its own torchrun (one after another): a
    process group lives for one run, so the ranks of a multirun cannot share one torchrun.
    """
    remaining = [c for c in cells if finished_model(study.cfg, c) is None]
    log.info("%s: %d of %d cells to run", stage, len(remaining), len(cells))
    common = [f"hydra.searchpath=['file://{search_path}']", f"base_dir={base_dir(study.cfg)}",
              "resume=auto", *study.cfg.study.pretrain]
    processes = study.cfg.study.processes
    if processes > 1:
        for cell in remaining:
            _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={processes}", "-m", "cramming", "pretrain",
                  f"+{CELL_GROUP}={cell.key}", *common], f"{stage} ({cell.key})", study)
    elif remaining:
        _run([sys.executable, "-m", "cramming", "pretrain", "-m",
              f"+{CELL_GROUP}={','.join(c.key for c in remaining)}",
              f"hydra.sweep.subdir={CELL_SUBDIR}", *_launcher(study.cfg), *common], stage, study)


def extract_il_losses(study: Study, il_cells: list[Cell]) -> None:
    """Irreducible losses of each seed's IL model, once per study and seed."""
    from efficient_training.extract_il_losses import extract

    for cell in il_cells:
        out = il_losses_file(study.cfg, cell.seed)
        if not out.is_file():
            log.info("Irreducible losses of %s -> %s", cell.key, out)
            extract(finished_model(study.cfg, cell), out, base_dir=str(base_dir(study.cfg)),
                    seed=cell.seed)


def finetune(study: Study, cells: list[Cell]) -> None:
    """One eval multirun per fine-tuning seed over the cells without its results."""
    tag = eval_tag(study.finetune)
    for seed in study.finetune_seeds:
        remaining = [c for c in cells
                     if not (finetune_folder(study, c, seed) / "results.json").is_file()]
        log.info("Fine-tuning seed %d: %d of %d cells to run", seed, len(remaining), len(cells))
        if not remaining:
            continue
        _run([sys.executable, "-m", "cramming", "eval", "-m",
              f"name={','.join(run_name(study.cfg, c) for c in remaining)}",
              f"eval={study.eval_choice}", *study.eval_overrides, f"eval.seeds=[{seed}]",
              f"base_dir={base_dir(study.cfg)}", f"hydra.sweep.dir={base_dir(study.cfg)}",
              f"hydra.sweep.subdir=${{name}}/eval/{tag}-seed{seed}",
              *_launcher(study.cfg), *study.cfg.study.finetune], f"Fine-tuning seed {seed}", study)


def run_study(study: Study) -> Path:
    """Every stage of the study, skipping what is done; returns the report's Markdown file."""
    from cramming.study.report import write_report

    il_cells, cells = plan_cells(study.cfg)
    check_manifest(study, cells)
    search_path = write_cell_configs(study.cfg, [*il_cells, *cells])
    check_cells(study, [*il_cells, *cells], search_path)
    study.folder.mkdir(parents=True, exist_ok=True)
    (study.folder / MANIFEST).write_text(json.dumps(_manifest(study, cells, il_cells), indent=2))
    if il_cells:
        pretrain(study, il_cells, search_path, "Irreducible-loss models")
        extract_il_losses(study, il_cells)
    pretrain(study, cells, search_path, "Pretraining")
    finetune(study, cells)
    return write_report(study.folder)
