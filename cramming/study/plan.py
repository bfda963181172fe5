"""A study's typed config and its cells: one pretraining run per (method, budget, seed).

Each cell is written as a Hydra config file ``<study>/cells/study_cell/<cell>.yaml`` (package
``_global_``) that picks the method's presets and values, so one multirun over
``+study_cell=<a>,<b>,...`` runs them all on any Hydra launcher, and any cell can be rerun by
hand: ``python pretrain_bert.py hydra.searchpath=[file://<study>/cells] +study_cell=<cell>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig

from cramming.config import CONFIG_DIR, to_typed
from cramming.errors import ConfigError
from cramming.evaluation.config import EvalSettings

CELL_GROUP = "study_cell"
IL_METHOD = "il_model"  # RHO-Loss's irreducible-loss model, trained once per seed


@dataclass
class StudySettings:
    """The ``study`` section: what is compared, at which budgets and seeds, and how it runs."""

    name: str = "demo"
    methods: list[str] = field(default_factory=lambda: ["baseline"])
    baseline: str = "baseline"
    budgets: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    pretrain: list[str] = field(default_factory=list)  # overrides of every pretraining cell
    finetune: list[str] = field(default_factory=list)  # overrides of every eval.py job
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    launcher: str | None = None  # hydra/launcher option for both multiruns
    processes: int = 1  # > 1: each pretraining cell on this many local processes (torchrun)
    validate_every_fraction: float | None = 0.1
    il_model_budget: float | None = None
    confidence: float = 0.95


@dataclass
class StudyConfig:
    """Root of ``python -m cramming.study`` (``cramming/config/study.yaml``)."""

    name: str = "study"
    base_dir: str = "outputs"
    budget_kind: str = "steps"
    study: StudySettings = field(default_factory=StudySettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


def load_study_config(cfg: DictConfig | Mapping) -> StudyConfig:
    """Typed, checked study config; ConfigError in one line naming the key."""
    typed = to_typed(cfg, StudyConfig)
    study = typed.study
    unknown = [m for m in [*study.methods, study.baseline] if m not in study.method_overrides]
    if unknown:
        raise ConfigError(f"study.methods: no definition for {unknown}; known: "
                          f"{sorted(study.method_overrides)} (add "
                          f"study.method_overrides.<name>=[group=option,key=value]).")
    if study.baseline not in study.methods:
        raise ConfigError(f"study.baseline={study.baseline} is not in study.methods="
                          f"{study.methods}: the study compares every method with it.")
    for key in ("methods", "budgets", "seeds"):
        values = getattr(study, key)
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"study.{key} must be a non-empty list without repeats, "
                              f"got {values}.")
    if any(b <= 0 for b in study.budgets):
        raise ConfigError(f"study.budgets must be positive, got {study.budgets}.")
    if study.processes < 1:
        raise ConfigError(f"study.processes must be >= 1, got {study.processes}.")
    if study.processes > 1 and study.launcher:
        raise ConfigError("study.processes starts local processes with torchrun; with "
                          "study.launcher set, ask the launcher for them instead (e.g. "
                          "hydra.launcher.tasks_per_node in study.pretrain).")
    if not 0 < study.confidence < 1:
        raise ConfigError(f"study.confidence must be in (0, 1), got {study.confidence}.")
    if not typed.name or "/" in typed.name or typed.name.startswith("."):
        raise ConfigError(f"name={typed.name!r}: the study needs a plain folder name.")
    return typed


@dataclass(frozen=True)
class Cell:
    """One pretraining run of the study."""

    method: str
    budget: float
    seed: int
    overrides: tuple[str, ...]  # the method's pretrain_bert.py overrides

    @property
    def key(self) -> str:
        return f"{self.method}-b{self.budget:g}-s{self.seed}"


def plan_cells(cfg: StudyConfig) -> tuple[list[Cell], list[Cell]]:
    """(irreducible-loss model cells, study cells); the first is empty without RHO-Loss.

    RHO-Loss cells read the irreducible losses of their seed's IL model, which the study
    trains and extracts once per seed (not once per cell).
    """
    study = cfg.study
    validation = ([f"train.validate_every_fraction={study.validate_every_fraction}"]
                  if study.validate_every_fraction else [])
    il_cells = []
    if any(is_rho_loss(study.method_overrides[m]) for m in study.methods):
        budget = study.il_model_budget or min(study.budgets)
        il_cells = [Cell(IL_METHOD, budget, seed, ("method=il_model",)) for seed in study.seeds]
    cells = []
    for method in study.methods:
        overrides = tuple(study.method_overrides[method])
        for budget in study.budgets:
            for seed in study.seeds:
                extra = (f"method.rho_loss.il_losses={il_losses_file(cfg, seed)}",) \
                    if is_rho_loss(overrides) else ()
                cells.append(Cell(method, budget, seed, (*overrides, *validation, *extra)))
    return il_cells, cells


def is_rho_loss(overrides: list[str] | tuple[str, ...]) -> bool:
    return "method=rho_loss" in overrides


def base_dir(cfg: StudyConfig) -> Path:
    """The resolved ``base_dir``: cells run from other working directories (launchers)."""
    return Path(cfg.base_dir).expanduser().resolve()


def study_dir(cfg: StudyConfig) -> Path:
    return base_dir(cfg) / cfg.name


def run_name(cfg: StudyConfig, cell: Cell) -> str:
    """The cell's run name: its runs live in ``<base_dir>/<study>/<cell>/pretrain/``."""
    return f"{cfg.name}/{cell.key}"


def il_losses_file(cfg: StudyConfig, seed: int) -> Path:
    return study_dir(cfg) / "il_losses" / f"seed-{seed}.npz"


def cell_config(cfg: StudyConfig, cell: Cell) -> dict:
    """The cell's Hydra config file: preset choices in ``defaults``, values as a tree."""
    defaults: list = []
    values: dict = {"name": run_name(cfg, cell), "budget": cell.budget,
                    "budget_kind": cfg.budget_kind, "seed": cell.seed}
    for override in cell.overrides:
        key, sep, value = override.partition("=")
        if not sep or key.startswith(("+", "~")) or not key:
            raise ConfigError(f"study method '{cell.method}': '{override}' is not "
                              f"group=option or key=value.")
        if "." not in key and (CONFIG_DIR / key).is_dir():
            defaults.append({f"override /{key}": value})
            continue
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"study method '{cell.method}': '{override}' sets below "
                                  f"a value.")
        node[leaf] = yaml.safe_load(value) if value else None
    return {"defaults": defaults, **values} if defaults else values


def write_cell_configs(cfg: StudyConfig, cells: list[Cell]) -> Path:
    """Write every cell's config file; returns the search-path folder (``<study>/cells``)."""
    folder = study_dir(cfg) / "cells"
    (folder / CELL_GROUP).mkdir(parents=True, exist_ok=True)
    for cell in cells:
        text = yaml.safe_dump(cell_config(cfg, cell), sort_keys=False)
        path = folder / CELL_GROUP / f"{cell.key}.yaml"
        path.write_text(f"# @package _global_\n# cell {cell.key} of study {cfg.name} "
                        f"(written by python -m cramming.study)\n{text}")
    return folder


def eval_tag(settings: EvalSettings) -> str:
    """Folder tag of a fine-tuning recipe: its preset name and a hash of all but the seeds."""
    recipe = {k: v for k, v in dataclasses.asdict(settings).items() if k != "seeds"}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return f"study-{settings.name}-{digest}"
