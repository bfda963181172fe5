"""Typed schema of ``eval.py``'s config (``cramming/config/eval.yaml`` + ``eval/*.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig

from cramming.config import to_typed
from cramming.config.schema import CHOICES, ImplConfig
from cramming.errors import ConfigError
from cramming.evaluation.tasks import get_task

EVAL_CHOICES: dict[str, tuple[str, ...]] = {
    "eval.scheduler": ("cosine", "linear", "constant"),
    "eval.source": ("auto", "files", "hub"),
    "eval.pooler": ("zero_index", "avg"),
    "eval.average": ("standard", "ntng"),
    "impl.device": CHOICES["impl.device"],
    "impl.precision": CHOICES["impl.precision"],
}


@dataclass
class EvalSettings:
    """A fine-tuning preset: which tasks, from where, and the recipe applied to each."""

    name: str = "GLUE_sane"
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    data_dir: str | None = None  # folder with glue/ and superglue/ (official layout)
    source: str = "auto"  # auto: files under data_dir when present, else the HF hub
    seeds: list[int] = field(default_factory=list)  # empty: [seed]
    # Defaults are Cramming's GLUE_sane (JonasGeiping/cramming, cramming/config/eval/GLUE_sane.yaml
    # and cramming/config/eval/optim/adam.yaml).
    lr: float = 4e-5
    batch_size: int = 16
    epochs: int = 5
    scheduler: str = "cosine"
    warmup: float = 0.1  # < 1: fraction of each task's own steps; >= 1: steps
    # Cramming turns the first task's warmup fraction into a step count and reuses that count
    # for every later task (cramming/backend/optimizers/schedulers.py rewrites the config).
    warmup_from_first_task: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    gradient_clipping: float | None = None
    # Drop each epoch's last partial batch, as Cramming's train loader (the presets set it);
    # off here so library users (bench/eval_throughput.py) train on every example.
    drop_last: bool = False
    # Head: pooler (first token or mean over real tokens) -> Linear to head_dim -> Tanh ->
    # dropout -> Linear; head_dim null = the encoder's width.
    pooler: str = "zero_index"
    head_dim: int | None = 1024
    classifier_dropout: float = 0.1
    # Dropout of the encoder while fine-tuning (hidden, embedding, attention); null keeps the
    # pretrained model's own values. Cramming fine-tunes with its arch dropout, 0.1.
    encoder_dropout: float | None = 0.1
    # Single-sentence tasks as Cramming tokenizes them: an empty second text, so the input
    # is [CLS] text [SEP] [SEP] (cramming/data/downstream_task_preparation.py).
    empty_second_segment: bool = True
    max_seq_length: int = 128
    eval_batch_size: int = 128
    # Caps for quick runs (demo, smoke tests); null means the full split.
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    predict_test: bool = True  # write leaderboard files for test splits that exist
    # Suite averages: standard (Cramming / leaderboard) or ntng (SuperGLUE without ReCoRD,
    # CB by F1, MultiRC by F1a).
    average: str = "standard"


@dataclass
class EvalConfig:
    name: str = "default"  # pretraining run to evaluate (and where results go)
    base_dir: str = "outputs"
    seed: int = 0
    model_path: str | None = None  # explicit model folder; else newest run of `name`
    eval: EvalSettings = field(default_factory=EvalSettings)
    impl: ImplConfig = field(default_factory=ImplConfig)


def validate_eval_config(cfg: DictConfig | Mapping) -> EvalConfig:
    """Typed, validated eval config; ConfigError naming the key (and unknown task names)."""
    typed = to_typed(cfg, EvalConfig, EVAL_CHOICES)
    settings = typed.eval
    typed.eval.tasks = [get_task(name).name for name in settings.tasks]
    if not settings.tasks:
        raise ConfigError("eval.tasks is empty: name at least one task.")
    for key in ("lr", "batch_size", "epochs", "max_seq_length", "eval_batch_size"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"eval.{key} must be positive, got {getattr(settings, key)}.")
    if settings.warmup < 0:
        raise ConfigError(f"eval.warmup must be >= 0, got {settings.warmup}.")
    if settings.head_dim is not None and settings.head_dim <= 0:
        raise ConfigError(f"eval.head_dim must be positive or null, got {settings.head_dim}.")
    for key in ("classifier_dropout", "encoder_dropout"):
        value = getattr(settings, key)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"eval.{key} must be in [0, 1), got {value}.")
    if not settings.seeds:
        settings.seeds = [typed.seed]
    return typed
