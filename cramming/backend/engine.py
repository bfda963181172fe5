"""The one training loop: budgeted, accumulating, mixed precision, checkpointed, resumable.

Everything that varies between methods enters through :mod:`cramming.backend.hooks`,
the optimizer factory, or the budget clock; schedules read ``clock.progress()``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cramming.backend.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    new_checkpoint_staging,
    save_checkpoint,
)
from cramming.backend.clock import Work, active_layers, build_clock
from cramming.backend.distributed import DistributedContext, agree_on_step, mean_across_ranks
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import MetricsLogger
from cramming.backend.runtime import Runtime, rng_state, set_rng_state
from cramming.backend.schedules import batch_size_at, lr_factor
from cramming.backend.strategy import Strategy, build_strategy
from cramming.config.schema import PretrainConfig
from cramming.data import PackedDataset
from cramming.errors import CheckpointError, ConfigError, TrainingError
from cramming.objectives import Microbatch, Objective

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class EpochSampler:
    """Row indices from a fresh seeded permutation each epoch; resumable by (epoch, position)."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows, self.seed = num_rows, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def take(self, count: int) -> np.ndarray:
        chunks = []
        while count > 0:
            if self.position >= self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            chunk = self._order[self.position : self.position + count]
            self.position += len(chunk)
            count -= len(chunk)
            chunks.append(chunk)
        return np.concatenate(chunks)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def _rank_slice(batch: Microbatch, rank: int, world: int) -> Microbatch:
    """Rank ``rank``'s contiguous share of a global microbatch (every per-row tensor)."""
    rows = batch.input_ids.shape[0]  # objectives may re-cut rows (sequence-length schedule)
    part = slice(rank * rows // world, (rank + 1) * rows // world)

    def cut(value):
        is_per_row = isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows
        return value[part] if is_per_row else value

    return dataclasses.replace(
        batch, input_ids=batch.input_ids[part], labels=batch.labels[part],
        example_ids=cut(batch.example_ids),
        model_kwargs={key: cut(value) for key, value in batch.model_kwargs.items()})


class Trainer:
    """Trains ``model`` on ``train_data`` until the budget clock is spent."""

    def __init__(self, cfg: PretrainConfig, model: nn.Module, train_data: PackedDataset,
                 objective: Objective, runtime: Runtime, run_dir: Path,
                 hooks: Sequence[TrainingHook] = (), logger: MetricsLogger | None = None,
                 context: DistributedContext | None = None):
        self.cfg, self.runtime, self.run_dir = cfg, runtime, Path(run_dir)
        self.context = context or DistributedContext()
        per_step = cfg.impl.microbatch_size * self.context.world_size
        if cfg.train.batch_size % per_step:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} must be a multiple of "
                f"impl.microbatch_size x processes = {cfg.impl.microbatch_size} x "
                f"{self.context.world_size}.")
        self.strategy: Strategy = build_strategy(cfg, model, runtime, self.context)
        self.model, self.forward_model = self.strategy.model, self.strategy.forward_model
        self.train_data, self.objective = train_data, objective
        self.hooks, self.logger = hooks, logger
        self.clock = build_clock(cfg.budget_kind, cfg.budget, cfg, self.model)
        self.sampler = EpochSampler(len(train_data), cfg.seed)
        self.step = 0
        self.microbatches = 0  # global microbatches (one per rank at a time)
        self.tokens = 0  # global training tokens
        self.progress = 0.0  # budget progress, agreed by all ranks after each step
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a resume needs; collective under DDP (RNG streams of every rank)."""
        return {
            "step": self.step, "microbatches": self.microbatches, "tokens": self.tokens,
            **self.strategy.state_dict(),  # optimizer (and loss scaler)
            "clock": self.clock.state_dict(), "sampler": self.sampler.state_dict(),
            "rng": self.context.gather_objects(rng_state()),
            "world_size": self.context.world_size,
            "hooks": [hook.state_dict() for hook in self.hooks],
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.microbatches = state["step"], state["microbatches"]
        self.tokens = state["tokens"]
        self.strategy.load_state_dict(state)
        self.clock.load_state_dict(state["clock"])
        self.sampler.load_state_dict(state["sampler"])
        saved_world = state.get("world_size", 1)
        if saved_world == self.context.world_size:
            set_rng_state(state["rng"][self.context.rank])
        elif self.context.is_main:
            log.warning("Checkpoint written with %d process(es), resumed with %d: weights, "
                        "optimizer, data order, masks and budget continue exactly; dropout "
                        "RNG streams restart from the seed.", saved_world,
                        self.context.world_size)
        for hook, hook_state in zip(self.hooks, state["hooks"]):
            hook.load_state_dict(hook_state)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.strategy.optimizer

    def save(self) -> Path:
        """Checkpoint (written by rank 0, plus each rank's shards on backends that have
        them); all ranks wait until it is complete."""
        state = self.state_dict()
        weights = self.model_weights()
        staging = None
        if self.strategy.writes_shards:
            staging = self.context.broadcast_object(
                str(new_checkpoint_staging(self.run_dir)) if self.context.is_main else None)
            self.strategy.save_shards(Path(staging))
            self.context.barrier()
        folder = self.run_dir / "checkpoints"
        if self.context.is_main:
            folder = save_checkpoint(self.run_dir, self.step, weights, state,
                                     keep=self.cfg.train.keep_checkpoints,
                                     staging=None if staging is None else Path(staging))
        self.context.barrier()
        return folder

    def model_weights(self) -> dict[str, torch.Tensor]:
        """Consolidated weights (collective when sharded; the same on every backend)."""
        return self.strategy.model_weights()

    def resume(self) -> bool:
        """Continue from the run folder's newest checkpoint; False when there is none."""
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return False
        state = load_checkpoint(folder, None)
        self.strategy.load_weights(folder, state.get("world_size", 1))
        try:
            self.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(
                f"Training state in {folder} does not fit this run: {error}") from None
        if self.logger is not None:
            self.logger.truncate_after(self.step)
        log.info("Resumed from %s at step %d (%s)", folder, self.step, self.clock.remaining_text())
        return True

    # ------------------------------------------------------------------ training

    def _microbatch(self, size: int, progress: float) -> Microbatch:
        """This rank's share of the next global microbatch (``size`` rows per rank).

        Every rank draws and masks the same global rows, then keeps its slice: each row
        is seen once per epoch across ranks, and N ranks reproduce one process whose
        microbatch is N times larger.
        """
        world, rank = self.context.world_size, self.context.rank
        rows = self.train_data.batch(self.sampler.take(size * world))
        batch = self.objective.microbatch(rows, progress, self.microbatches)
        if world > 1:
            batch = _rank_slice(batch, rank, world)
        for hook in self.hooks:
            batch = hook.select_batch(self, batch)
        return batch

    def train_step(self) -> dict:
        """One optimizer step over as many microbatches as the current batch size needs."""
        train, micro = self.cfg.train, self.cfg.impl.microbatch_size
        world = self.context.world_size
        progress = self.progress
        for hook in self.hooks:
            hook.before_step(self)
        lr = train.optim.lr * lr_factor(progress, train)
        lr *= math.prod(hook.lr_scale(self, progress) for hook in self.hooks)
        self.strategy.set_lr(lr)
        batch_size = batch_size_at(progress, train, micro * world)
        accumulation = max(batch_size // (micro * world), 1)
        device = self.runtime.device
        self.model.train()
        self.strategy.zero_grad()
        loss_sum = torch.zeros((), device=device)
        kind_sums: dict[str, list] = {}
        wall_clock = (self.cfg.budget_kind == "hours" and not self.context.enabled
                      and self.strategy.can_stop_mid_step)
        for index in range(accumulation):
            batch = self._microbatch(micro, progress)
            with self.strategy.microbatch_context(index == accumulation - 1):
                with self.runtime.autocast():
                    outputs = self.forward_model(
                        batch.input_ids.to(device, non_blocking=True),
                        labels=batch.labels.to(device, non_blocking=True), **batch.model_kwargs)
                    loss = outputs["loss"] * (batch.loss_weight / accumulation)
                self.strategy.backward(loss)
            loss_sum += loss.detach()
            kind_sum = kind_sums.setdefault(batch.kind, [torch.zeros((), device=device), 0])
            kind_sum[0] += outputs["loss"].detach()
            kind_sum[1] += 1
            tokens = batch.input_ids.numel()
            self.clock.charge_microbatch(Work(sequences=batch.input_ids.shape[0], tokens=tokens,
                                              active_layers=active_layers(self.model),
                                              replicas=world))
            self.microbatches += 1
            self.tokens += tokens * world
            done = index + 1
            # Wall time spent mid-step (a large ramped batch on slow hardware): stop now
            # rather than overrun by a whole step. Virtual clocks always finish the step.
            if wall_clock and done < accumulation and self.clock.exhausted():
                break
        if done < accumulation:  # finish with the mean gradient of what was computed
            self.strategy.rescale_gradients(accumulation / done)
            loss_sum *= accumulation / done
        step_loss = mean_across_ranks(loss_sum, self.context).item()
        if not math.isfinite(step_loss):
            raise TrainingError(
                f"Loss became {step_loss} at step {self.step + 1} (lr {lr:.3g}). Training stopped; "
                f"the last good checkpoint in {self.run_dir / 'checkpoints'} is kept. Lower "
                f"train.optim.lr, set train.gradient_clipping, or use impl.precision=fp32.")
        grad_norm = self.strategy.apply_gradients(train.gradient_clipping)
        self.clock.charge_step()
        self.step += 1
        record = {"step": self.step, "loss": step_loss, "lr": lr, "batch_size": batch_size,
                  **self.objective.log_values(progress), "progress": progress,
                  "tokens": self.tokens, "epoch": self.sampler.epoch}
        if len(kind_sums) > 1:
            for kind, (total, count) in kind_sums.items():
                record[f"loss_{kind}"] = total.item() / count
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        for hook in self.hooks:
            hook.after_step(self, record)
        return record

    def _handle_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def fit(self, max_steps: int | None = None) -> dict:
        """Train until the budget is spent (or ``max_steps``, or a stop signal).

        SIGTERM, SIGUSR1 and SIGUSR2 (SLURM's pre-timeout signal) finish the current step,
        write a checkpoint and return; a handler that was installed before (submitit's
        requeue) is then called, so preempted SLURM jobs requeue and resume.
        """
        cfg = self.cfg
        previous = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS}
        self.clock.start()
        self.progress = self.clock.progress()
        for hook in self.hooks:
            hook.on_train_start(self)
        show_bar = cfg.impl.progress_bar and self.context.is_main
        bar = tqdm(total=1000, desc="pretrain", unit="‰", disable=not show_bar,
                   initial=int(1000 * self.progress), dynamic_ncols=True)
        last_save, last_time, last_tokens = time.monotonic(), time.monotonic(), self.tokens
        every_steps = cfg.train.checkpoint_every_steps
        record: dict = {}
        stop = self.clock.exhausted()
        try:
            while not stop and (max_steps is None or self.step < max_steps):
                record = self.train_step()
                now = time.monotonic()
                save_due = bool(every_steps and self.step % every_steps == 0) or \
                    now - last_save >= 60 * cfg.train.checkpoint_every_minutes
                decision = agree_on_step(self.clock.progress(), self.clock.exhausted(), save_due,
                                         self._stop_signal is not None, self.context)
                self.progress, stop = decision.progress, decision.exhausted
                record["progress"] = self.progress
                record["tokens_per_second"] = (self.tokens - last_tokens) / max(now - last_time,
                                                                                1e-9)
                last_time, last_tokens = now, self.tokens
                if self.logger is not None and self.step % cfg.train.log_every_steps == 0:
                    self.logger.log(record)
                bar.n = int(1000 * self.progress)
                bar.set_postfix(loss=f"{record['loss']:.3f}", left=self.clock.remaining_text(),
                                refresh=False)
                bar.update(0)
                if decision.save or decision.interrupted:
                    self.save()
                    last_save = time.monotonic()
                if decision.interrupted:
                    self._stop_signal = self._stop_signal or signal.SIGTERM
                    if self.context.is_main:
                        log.warning("Stop signal: checkpoint written at step %d; continue "
                                    "with resume=true.", self.step)
                    break
        finally:
            bar.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self._stop_signal is not None and callable(previous.get(self._stop_signal)):
            previous[self._stop_signal](self._stop_signal, None)
        if self.logger is not None and record and self.step % cfg.train.log_every_steps != 0:
            self.logger.log(record)
        return record

    @property
    def interrupted(self) -> bool:
        return self._stop_signal is not None
