"""Pretraining job: typed config -> data -> model -> engine -> model folder.

``pretrain_bert.py`` (and the method-specific entry points) reach :func:`run_pretraining`
through :func:`cramming.cli.pretrain_main`; tests and tools call it directly with a typed
config and a run folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cramming.architectures import build_model
from cramming.backend.checkpoint import latest_checkpoint, save_model_folder
from cramming.backend.distributed import (
    DistributedContext,
    init_distributed,
    release_distributed,
)
from cramming.backend.ema import EMAHook
from cramming.backend.engine import Trainer
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import MetricsLogger, append_jsonl, plot_loss_curve
from cramming.backend.runlock import RunLock
from cramming.backend.runtime import (
    Runtime,
    describe_machine,
    resolve_runtime,
    seed_everything,
    write_git_info,
)
from cramming.backend.validation import PeriodicValidation, evaluate_objective
from cramming.config.checks import check_writable_dir
from cramming.config.schema import PretrainConfig
from cramming.data import MLMMasker, PreparedData, prepare_data
from cramming.errors import CheckpointError, RunInUseError
from cramming.objectives import build_objective
from efficient_training import build_hooks

log = logging.getLogger("cramming")

DRYRUN_STEPS = 2


def data_cache_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.base_dir).expanduser().resolve() / "data"


def _remove_launcher_leftovers(own_dir: Path, run_dir: Path) -> None:
    """A non-zero rank's launcher may have made its own (empty) run folder: drop it."""
    if own_dir == run_dir or not own_dir.is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in own_dir.iterdir()):
        shutil.rmtree(own_dir, ignore_errors=True)


@dataclasses.dataclass
class PretrainingRun:
    """Everything :func:`set_up` builds for one run and :func:`train` / :func:`export` use."""

    cfg: PretrainConfig
    run_dir: Path
    runtime: Runtime
    context: DistributedContext
    prepared: PreparedData
    trainer: Trainer
    logger: MetricsLogger | None
    ema: EMAHook | None
    resolved: dict
    lock: RunLock | None = None  # rank 0's hold of the run folder, released after the run


def run_pretraining(cfg: PretrainConfig, run_dir: Path,
                    hooks: Sequence[TrainingHook] = ()) -> dict:
    """Pretrain under ``cfg``'s budget in ``run_dir``; returns a summary dict.

    With ``cfg.resume`` true/auto and a checkpoint in ``run_dir``, training continues
    from it exactly (weights, optimizer, data cursor, RNG, budget clock). Under torchrun
    or SLURM every process calls this; rank 0 alone writes files.
    """
    run = None
    try:
        run = set_up(cfg, run_dir, hooks)
        if isinstance(run, dict):  # the run had already finished
            return run
        return _train_and_export(run)
    finally:
        if isinstance(run, PretrainingRun) and run.lock is not None:
            run.lock.release()
        release_distributed()  # a rank that exits with the group alive can abort


def _train_and_export(run: PretrainingRun) -> dict:
    cfg = run.cfg
    started = time.time()
    final = train(run)
    summary = {"name": cfg.name, "run_dir": str(run.run_dir), "steps": run.trainer.step,
               "tokens": run.trainer.tokens, "budget": cfg.budget,
               "budget_kind": cfg.budget_kind, "budget_spent": run.trainer.clock.spent(),
               "train_seconds": run.trainer.train_seconds,
               "final_loss": final.get("loss"), "seconds_this_session": time.time() - started,
               "arch": cfg.arch.name, "train": cfg.train.name,
               "optimizer": cfg.train.optim.name, "seed": cfg.seed}
    if run.trainer.interrupted:
        summary["interrupted"] = True
        return summary
    return export(run, summary)


def set_up(cfg: PretrainConfig, run_dir: Path,
           hooks: Sequence[TrainingHook] = ()) -> PretrainingRun | dict:
    """Processes, run folder, data, model, objective, hooks and trainer (resumed when asked).

    Returns the finished run's summary instead when ``run_dir`` already holds its model.
    """
    runtime = resolve_runtime(cfg.impl)
    context = init_distributed(runtime.device.type)
    if context.enabled and runtime.device.type == "cuda":
        runtime = dataclasses.replace(runtime, device=torch.device("cuda", context.local_rank))
    check_writable_dir(cfg.base_dir)  # data cache (and runs): writable, with room
    own_dir = Path(run_dir).resolve()
    run_dir = Path(context.broadcast_object(str(own_dir)))
    if not context.is_main:
        logging.getLogger("cramming").setLevel(logging.WARNING)
        _remove_launcher_leftovers(own_dir, run_dir)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_run_folder(run_dir, context)
    try:
        run = _build_run(cfg, run_dir, hooks, runtime, context)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if isinstance(run, dict):
        if lock is not None:
            lock.release()
    else:
        run.lock = lock
    return run


def _lock_run_folder(run_dir: Path, context: DistributedContext) -> RunLock | None:
    """Rank 0 locks the run folder; every rank raises the same one-line error if taken."""
    lock, refusal = None, None
    if context.is_main:
        try:
            lock = RunLock.acquire(run_dir)
        except RunInUseError as error:
            refusal = str(error)
    refusal = context.broadcast_object(refusal)
    if refusal is not None:
        raise RunInUseError(refusal)
    return lock


def _build_run(cfg: PretrainConfig, run_dir: Path, hooks: Sequence[TrainingHook],
               runtime: Runtime, context: DistributedContext) -> PretrainingRun | dict:
    resume = str(cfg.resume).lower()
    if resume != "false" and (run_dir / "model" / "arch.json").is_file():
        log.info("Run %s already finished; its model is in %s", run_dir, run_dir / "model")
        return json.loads((run_dir / "summary.json").read_text())
    if resume == "true" and latest_checkpoint(run_dir) is None:
        raise CheckpointError(f"resume=true but run '{cfg.name}' has no checkpoint in "
                              f"{run_dir / 'checkpoints'}; start it with resume=false.")

    resolved = dataclasses.asdict(cfg)
    if context.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        write_git_info(run_dir)
    seed_everything(cfg.seed)
    log.info("Run %s in %s on %s%s", cfg.name, run_dir, describe_machine(runtime),
             f", {context.world_size} processes" if context.enabled else "")

    if not context.is_main:
        context.barrier()  # rank 0 builds the data cache; the others then read it
    prepared = prepare_data(cfg.data, cache_root=data_cache_root(cfg),
                            progress=cfg.impl.progress_bar and context.is_main)
    if context.is_main:
        context.barrier()
    tokenizer = prepared.tokenizer
    model = build_model(cfg.arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if context.rank > 0:
        seed_everything(cfg.seed + context.rank)  # own dropout stream per rank
    log.info("Model %s: %.2fM parameters; %d training sequences of %d tokens",
             cfg.arch.name, model.num_parameters() / 1e6, len(prepared.train),
             prepared.train.seq_length)
    objective = build_objective(cfg, tokenizer)
    ema = EMAHook(cfg.train.ema_decay) if cfg.train.ema_decay else None
    hooks = [*hooks, ema] if ema is not None else hooks
    logger = MetricsLogger(run_dir, cfg.wandb, cfg.name, resolved) if context.is_main else None
    hooks = [*build_hooks(cfg, model, prepared, context.world_size), *hooks]  # cfg.method
    validation = PeriodicValidation.from_config(cfg, prepared.val, tokenizer)
    trainer = Trainer(cfg, model, prepared.train, objective, runtime, run_dir, hooks, logger,
                      context, validation)
    if resume != "false":
        trainer.resume()
    return PretrainingRun(cfg, run_dir, runtime, context, prepared, trainer, logger, ema,
                          resolved)


def train(run: PretrainingRun) -> dict:
    """Train until the budget is spent (or a dry run's steps); the last step's record."""
    try:
        return run.trainer.fit(max_steps=DRYRUN_STEPS if run.cfg.dryrun else None)
    finally:
        if run.logger is not None:
            run.logger.close()


def export(run: PretrainingRun, summary: dict) -> dict:
    """Final checkpoint, validation, loss plot, summary and the model folder(s)."""
    cfg, trainer, context, run_dir = run.cfg, run.trainer, run.context, run.run_dir
    tokenizer = run.prepared.tokenizer
    trainer.save()
    final_model = trainer.model
    if trainer.strategy.shards_parameters:  # gather into a plain model that eval.py loads
        weights = trainer.model_weights()
        if context.is_main:
            final_model = build_model(cfg.arch, vocab_size=len(tokenizer),
                                      pad_token_id=tokenizer.pad_token_id).to(run.runtime.device)
            final_model.load_state_dict(weights)
    if not context.is_main:
        return summary
    if cfg.train.validate_at_end and len(run.prepared.val) > 0:
        scores = evaluate_objective(final_model, run.prepared.val,
                                    MLMMasker.from_tokenizer(tokenizer), run.runtime,
                                    objective=cfg.train.objective,
                                    batch_size=cfg.train.val_batch_size
                                    or cfg.impl.microbatch_size,
                                    max_rows=cfg.train.val_rows,
                                    progress_bar=cfg.impl.progress_bar)
        scores.update(step=trainer.step, progress=trainer.clock.progress(), split="val")
        append_jsonl(run_dir / "validation.jsonl", scores)
        summary["val_loss"], summary["val_accuracy"] = scores["loss"], scores["accuracy"]
        log.info("Validation (%s): loss %.4f, accuracy %.4f", cfg.train.objective,
                 scores["loss"], scores["accuracy"])
    plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    save_model_folder(run_dir / "model", final_model, tokenizer, run.resolved)
    if run.ema is not None:
        save_model_folder(run_dir / "model-ema", run.ema.averaged_model(trainer.model),
                          tokenizer, run.resolved)
    log.info("Finished %d steps (%s). Model folder: %s", trainer.step,
             trainer.clock.remaining_text(), run_dir / "model")
    return summary
