"""The one training loop: budgeted, accumulating, mixed precision, checkpointed, resumable.

Everything that varies between methods enters through :mod:`cramming.backend.hooks`,
the optimizer factory, or the budget clock; schedules read ``clock.progress()``.
"""

from __future__ import annotations

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

from cramming.backend.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cramming.backend.clock import Work, build_clock
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import MetricsLogger
from cramming.backend.optimizers import build_optimizer
from cramming.backend.runtime import Runtime, rng_state, set_rng_state
from cramming.backend.schedules import batch_size_at, lr_factor
from cramming.config.schema import PretrainConfig
from cramming.data import PackedDataset
from cramming.errors import CheckpointError, TrainingError
from cramming.objectives import Microbatch, Objective

log = logging.getLogger(__name__)


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


class Trainer:
    """Trains ``model`` on ``train_data`` until the budget clock is spent."""

    def __init__(self, cfg: PretrainConfig, model: nn.Module, train_data: PackedDataset,
                 objective: Objective, runtime: Runtime, run_dir: Path,
                 hooks: Sequence[TrainingHook] = (), logger: MetricsLogger | None = None):
        self.cfg, self.runtime, self.run_dir = cfg, runtime, Path(run_dir)
        self.model = model.to(runtime.device)
        self.forward_model = torch.compile(self.model, mode=cfg.impl.compile_mode) \
            if cfg.impl.compile else self.model
        self.train_data, self.objective = train_data, objective
        self.hooks, self.logger = hooks, logger
        self.optimizer = build_optimizer(self.model, cfg.train.optim, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type,
                                           enabled=runtime.needs_grad_scaler)
        self.clock = build_clock(cfg.budget_kind, cfg.budget)
        self.sampler = EpochSampler(len(train_data), cfg.seed)
        self.step = 0
        self.microbatches = 0
        self.tokens = 0
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "step": self.step, "microbatches": self.microbatches, "tokens": self.tokens,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "clock": self.clock.state_dict(), "sampler": self.sampler.state_dict(),
            "rng": rng_state(), "hooks": [hook.state_dict() for hook in self.hooks],
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.microbatches = state["step"], state["microbatches"]
        self.tokens = state["tokens"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.clock.load_state_dict(state["clock"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        for hook, hook_state in zip(self.hooks, state["hooks"]):
            hook.load_state_dict(hook_state)

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.model, self.state_dict(),
                               keep=self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        """Continue from the run folder's newest checkpoint; False when there is none."""
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return False
        state = load_checkpoint(folder, self.model)
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
        rows = self.train_data.batch(self.sampler.take(size))
        batch = self.objective.microbatch(rows, progress, self.microbatches)
        for hook in self.hooks:
            batch = hook.select_batch(self, batch)
        return batch

    def train_step(self) -> dict:
        """One optimizer step over as many microbatches as the current batch size needs."""
        train, micro = self.cfg.train, self.cfg.impl.microbatch_size
        progress = self.clock.progress()
        for hook in self.hooks:
            hook.before_step(self)
        lr = train.optim.lr * lr_factor(progress, train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch_size = batch_size_at(progress, train, micro)
        accumulation = max(batch_size // micro, 1)
        device = self.runtime.device
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        kind_sums: dict[str, list] = {}
        for _ in range(accumulation):
            batch = self._microbatch(micro, progress)
            with self.runtime.autocast():
                outputs = self.forward_model(batch.input_ids.to(device, non_blocking=True),
                                             labels=batch.labels.to(device, non_blocking=True),
                                             **batch.model_kwargs)
            loss = outputs["loss"] * (batch.loss_weight / accumulation)
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
            kind_sum = kind_sums.setdefault(batch.kind, [torch.zeros((), device=device), 0])
            kind_sum[0] += outputs["loss"].detach()
            kind_sum[1] += 1
            tokens = batch.input_ids.numel()
            self.clock.charge_microbatch(Work(sequences=batch.input_ids.shape[0], tokens=tokens))
            self.microbatches += 1
            self.tokens += tokens
        step_loss = loss_sum.item()
        if not math.isfinite(step_loss):
            raise TrainingError(
                f"Loss became {step_loss} at step {self.step + 1} (lr {lr:.3g}). Training stopped; "
                f"the last good checkpoint in {self.run_dir / 'checkpoints'} is kept. Lower "
                f"train.optim.lr, set train.gradient_clipping, or use impl.precision=fp32.")
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if train.gradient_clipping:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), train.gradient_clipping)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.clock.charge_step()
        self.step += 1
        record = {"step": self.step, "loss": step_loss, "lr": lr, "batch_size": batch_size,
                  **self.objective.log_values(progress), "progress": self.clock.progress(),
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
        """Train until the budget is spent (or ``max_steps``, or SIGTERM/SIGUSR1)."""
        cfg = self.cfg
        previous = {s: signal.signal(s, self._handle_signal)
                    for s in (signal.SIGTERM, signal.SIGUSR1)}
        self.clock.start()
        for hook in self.hooks:
            hook.on_train_start(self)
        bar = tqdm(total=1000, desc="pretrain", unit="‰", disable=not cfg.impl.progress_bar,
                   initial=int(1000 * self.clock.progress()), dynamic_ncols=True)
        last_save, last_time, last_tokens = time.monotonic(), time.monotonic(), self.tokens
        record: dict = {}
        try:
            while not self.clock.exhausted() and (max_steps is None or self.step < max_steps):
                record = self.train_step()
                now = time.monotonic()
                elapsed = max(now - last_time, 1e-9)
                record["tokens_per_second"] = (self.tokens - last_tokens) / elapsed
                last_time, last_tokens = now, self.tokens
                if self.logger is not None and self.step % cfg.train.log_every_steps == 0:
                    self.logger.log(record)
                bar.n = int(1000 * record["progress"])
                bar.set_postfix(loss=f"{record['loss']:.3f}", left=self.clock.remaining_text(),
                                refresh=False)
                bar.update(0)
                every_steps = cfg.train.checkpoint_every_steps
                if (every_steps and self.step % every_steps == 0) or \
                        now - last_save >= 60 * cfg.train.checkpoint_every_minutes:
                    self.save()
                    last_save = time.monotonic()
                if self._stop_signal is not None:
                    self.save()
                    log.warning("Received signal %d: checkpoint written at step %d; continue "
                                "with resume=true.", self._stop_signal, self.step)
                    break
        finally:
            bar.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.logger is not None and record and self.step % cfg.train.log_every_steps != 0:
            self.logger.log(record)
        return record

    @property
    def interrupted(self) -> bool:
        return self._stop_signal is not None
