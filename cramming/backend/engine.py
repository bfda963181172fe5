"""The one training loop: budgeted, accumulating, mixed precision, checkpointed, resumable.

Everything that varies between methods enters through :mod:`cramming.backend.hooks`,
the optimizer factory, or the budget clock; schedules read ``clock.progress()``.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from cramming.backend.checkpoint import (
    MODEL_WEIGHTS,
    check_weight_shapes,
    latest_checkpoint,
    new_checkpoint_staging,
    newest_good_checkpoint,
    read_state,
    save_checkpoint,
)
from cramming.backend.distributed import DistributedContext, agree_on_step, mean_across_ranks
from cramming.backend.hooks import TrainingHook
from cramming.backend.metrics import MetricsLogger, StepStatistics, sum_across_ranks
from cramming.backend.runtime import Runtime, rng_state, set_rng_state
from cramming.backend.strategies import build_strategy
from cramming.backend.strategy import Strategy
from cramming.backend.validation import PeriodicValidation
from cramming.budget import build_clock
from cramming.clock import BudgetClock, Work, active_layers
from cramming.config.schema import PretrainConfig
from cramming.data import PackedDataset
from cramming.data.identity import check_resume_data, data_identity
from cramming.data.keyed_random import TRAIN_STREAM as TRAIN_STREAM_ID
from cramming.data.keyed_random import stream_id
from cramming.data.masking import IGNORE_INDEX
from cramming.data.pipeline import DataPipeline, MicrobatchRequest
from cramming.errors import CheckpointError, ConfigError, TrainingError
from cramming.objectives import Microbatch, Objective
from cramming.schedules import batch_size_at, lr_factor

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


TRAIN_STREAM = "train"


def stream_number(name: str) -> int:
    """Mask/row-order stream of a named data stream (0 for the training rows)."""
    return TRAIN_STREAM_ID if name == TRAIN_STREAM else stream_id(name)


def _materialize(record: dict) -> dict:
    """The record with device scalars turned into Python floats (one sync for all)."""
    tensors = {key: value for key, value in record.items() if isinstance(value, torch.Tensor)}
    if tensors:
        values = torch.stack([value.detach().float().reshape(()) for value in tensors.values()])
        record = {**record, **dict(zip(tensors, values.cpu().tolist()))}
    return record


@contextmanager
def uncharged(clock: BudgetClock) -> Iterator[None]:
    """Nothing done inside spends the budget: the clock is put back as it was (every clock
    restarts its wall timer when it loads a state), so wall time inside is not counted."""
    state = clock.state_dict()
    try:
        yield
    finally:
        clock.load_state_dict(state)


class Trainer:
    """Trains ``model`` on ``train_data`` until the budget clock is spent."""

    resumed_from: Path | None = None  # checkpoint this session resumed from (never pruned)

    def __init__(self, cfg: PretrainConfig, model: nn.Module, train_data: PackedDataset,
                 objective: Objective, runtime: Runtime, run_dir: Path,
                 hooks: Sequence[TrainingHook] = (), logger: MetricsLogger | None = None,
                 context: DistributedContext | None = None,
                 validation: PeriodicValidation | None = None):
        self.cfg, self.runtime, self.run_dir = cfg, runtime, Path(run_dir)
        self.validation = validation  # held-out loss at fixed budget points
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
        self.hooks, self.logger = list(hooks), logger
        names = [hook.name for hook in self.hooks]
        if len(set(names)) != len(names):
            raise ConfigError(f"Training hooks need distinct names (their checkpoint state is "
                              f"keyed by name), got {names}.")
        self.clock = build_clock(cfg.budget_kind, cfg.budget, cfg, self.model)
        self.pipeline = DataPipeline(train_data, objective, cfg.seed,
                                     workers=cfg.impl.data_workers,
                                     prefetch=cfg.impl.prefetch_microbatches,
                                     pin_memory=runtime.device.type == "cuda")
        # the losses the objective produces, logged per kind when there are several
        self.kinds = tuple(getattr(objective, "kinds", (getattr(objective, "kind", "mlm"),)))
        decode = getattr(objective, "static_decode_fraction", None)
        fraction = decode(train_data.seq_length) if decode is not None else None
        if fraction is not None and hasattr(model, "set_static_decode"):
            model.set_static_decode(fraction)  # fixed count per row: static decode shape
        # draw position (global, all ranks) and microbatch count of every data stream
        self.streams: dict[str, dict[str, int]] = {TRAIN_STREAM: {"position": 0, "draws": 0}}
        self.data_wait = 0.0  # seconds this step waited for data
        self.step = 0
        self.microbatches = 0  # global microbatches (one per rank at a time)
        self.tokens = 0  # global training tokens
        self.train_seconds = 0.0  # wall time in training steps, over all sessions
        self.progress = 0.0  # budget progress, agreed by all ranks after each step
        self._stop_signal: int | None = None
        # what the data stream depends on: saved with every checkpoint, checked on resume
        self.data_identity = data_identity(cfg, getattr(train_data, "digests", {}),
                                           train_data.seq_length)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a resume needs; collective under DDP (RNG streams of every rank)."""
        return {
            "step": self.step, "microbatches": self.microbatches, "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            **self.strategy.state_dict(),  # optimizer (and loss scaler)
            "clock": self.clock.state_dict(),
            "streams": {name: dict(state) for name, state in self.streams.items()},
            "rng": self.context.gather_objects(rng_state()),
            "world_size": self.context.world_size,
            "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
            "data_identity": dict(self.data_identity),
            "validation": self.validation.state_dict() if self.validation else None,
        }

    def load_state_dict(self, state: dict) -> None:
        check_resume_data(state.get("data_identity"), self.data_identity,
                          self.cfg.resume_allow_data_change)
        self.step, self.microbatches = state["step"], state["microbatches"]
        self.tokens = state["tokens"]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.strategy.load_state_dict(state)
        self.clock.load_state_dict(state["clock"])
        self.streams = {name: {"position": int(value["position"]), "draws": int(value["draws"])}
                        for name, value in state["streams"].items()}
        saved_world = state.get("world_size", 1)
        if saved_world == self.context.world_size:
            set_rng_state(state["rng"][self.context.rank])
        elif self.context.is_main:
            log.warning("Checkpoint written with %d process(es), resumed with %d: weights, "
                        "optimizer, data order, masks and budget continue exactly; dropout "
                        "RNG streams restart from the seed.", saved_world,
                        self.context.world_size)
        saved = state["hooks"]
        missing = [hook.name for hook in self.hooks if hook.name not in saved]
        if missing:
            raise CheckpointError(f"The checkpoint has no state for hook(s) {missing} (it has "
                                  f"{sorted(saved)}): resume with the methods it was run with.")
        dropped = sorted(set(saved) - {hook.name for hook in self.hooks})
        if dropped and self.context.is_main:
            log.warning("The checkpoint holds state of hook(s) %s that this run does not use.",
                        dropped)
        for hook in self.hooks:
            hook.load_state_dict(saved[hook.name])
        if self.validation is not None:
            self.validation.load_state_dict(state.get("validation"), self.clock.progress())

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
                                     staging=None if staging is None else Path(staging),
                                     protect=[self.resumed_from] if self.resumed_from else [])
        self.context.barrier()
        return folder

    def model_weights(self) -> dict[str, torch.Tensor]:
        """Consolidated weights (collective when sharded; the same on every backend)."""
        return self.strategy.model_weights()

    def resume(self) -> bool:
        """Continue from the newest checkpoint that verifies, falling back past damaged ones
        (rank 0 checks and picks it for all); False when the run has none."""
        choice, state = None, None  # choice: ("folder", path) or ("error", message)
        if self.context.is_main:
            try:
                found = newest_good_checkpoint(self.run_dir)
            except CheckpointError as error:
                choice = ("error", str(error))
            else:
                if found is not None:
                    choice, state = ("folder", str(found[0])), found[1]
        choice = self.context.broadcast_object(choice)
        if choice is None:
            return False
        if choice[0] == "error":
            raise CheckpointError(choice[1])
        folder = Path(choice[1])
        if state is None:  # other ranks: rank 0 has verified the folder
            state = read_state(folder)
        check_weight_shapes(self.model, folder / MODEL_WEIGHTS)
        self.strategy.load_weights(folder, state.get("world_size", 1))
        try:
            self.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(
                f"Training state in {folder} does not fit this run: {error}") from None
        self.resumed_from = folder
        if self.logger is not None:
            self.logger.truncate_after(self.step)
        log.info("Resumed from %s at step %d (%s)", folder, self.step, self.clock.remaining_text())
        return True

    # ------------------------------------------------------------------ training

    @property
    def epoch(self) -> int:
        """Epoch of the training stream's next row."""
        return self.pipeline.order(TRAIN_STREAM_ID).epoch(self.streams[TRAIN_STREAM]["position"])

    def _request(self, stream: str, size: int, progress: float,
                 ahead: int = 0) -> MicrobatchRequest:
        """This rank's request for ``stream``'s microbatch ``ahead`` draws from now.

        A global microbatch covers ``size x world`` consecutive draw positions; rank r reads
        the r-th ``size`` of them, so N ranks see exactly what one process with an N times
        larger microbatch sees, and each rank reads and masks only its own rows.
        """
        state = self.streams.setdefault(stream, {"position": 0, "draws": 0})
        world, rank = self.context.world_size, self.context.rank
        start = state["position"] + (ahead * world + rank) * size
        return MicrobatchRequest(stream_number(stream), start, size, state["draws"] + ahead,
                                 progress)

    def draw_microbatch(self, size: int, progress: float, stream: str = TRAIN_STREAM
                        ) -> Microbatch:
        """This rank's share (``size`` rows) of the next microbatch of data stream ``stream``.

        Streams are named (a hook uses its own name); each has its own row order, position
        and mask keys, all saved in checkpoints, so extra draws never shift the training
        rows and every draw is reproduced exactly on resume.
        """
        batch, waited = self.pipeline.get(self._request(stream, size, progress))
        self.data_wait += waited
        state = self.streams[stream]
        state["position"] += size * self.context.world_size
        state["draws"] += 1
        return batch

    def train_step(self) -> dict:
        """One optimizer step over as many microbatches as the current batch size needs.

        Nothing in it waits for the device: losses stay device tensors in the returned
        record until :func:`_materialize` (at logging steps), and data comes prefetched.
        """
        started = time.perf_counter()
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
        # this step's microbatches and the next step's (same size and progress, a guess)
        self.pipeline.schedule([self._request(TRAIN_STREAM, micro, progress, ahead)
                                for ahead in range(2 * accumulation)])
        self.data_wait = 0.0
        device = self.runtime.device
        self.model.train()
        self.strategy.zero_grad()
        weighted, work, targets = [], [], []
        statistics = StepStatistics(self.kinds, device)
        stop_mid_step = (self.clock.may_stop_mid_step and not self.context.enabled
                         and self.strategy.can_stop_mid_step)
        done = 0
        for index in range(accumulation):
            batch = self.draw_microbatch(micro, progress)
            for hook in self.hooks:
                batch = hook.select_batch(self, batch)
            with self.strategy.microbatch_context(index == accumulation - 1):
                with self.runtime.autocast():
                    outputs = self.forward_model(
                        batch.input_ids.to(device, non_blocking=True),
                        labels=batch.labels.to(device, non_blocking=True),
                        **{key: value.to(device, non_blocking=True)
                           if isinstance(value, torch.Tensor) else value
                           for key, value in batch.model_kwargs.items()})
                    if train.token_weighted_loss:  # sum of token losses; normalised below
                        targets.append(int((batch.labels != IGNORE_INDEX).sum()))
                        loss = outputs["loss"] * (targets[-1] / accumulation)
                    else:
                        loss = outputs["loss"] * (batch.loss_weight / accumulation)
                self.strategy.backward(loss)
            weighted.append(loss.detach())
            statistics.add(batch.kind, outputs["loss"], outputs, batch.mask_rate)
            work.append(Work(sequences=batch.input_ids.shape[0], tokens=batch.input_ids.numel(),
                             active_layers=active_layers(self.model), replicas=world))
            self.tokens += batch.input_ids.numel() * world
            done = index + 1
            # Wall time spent mid-step (a large ramped batch on slow hardware): stop now
            # rather than overrun by a whole step. Virtual clocks always finish the step.
            if stop_mid_step and done < accumulation and self.clock.exhausted():
                break
        for item in work:
            self.clock.charge_microbatch(item)
        self.microbatches += done
        factor = accumulation / done  # finish with the mean gradient of what was computed
        if train.token_weighted_loss:  # sum of token losses / all ranks' targets in the step
            total = int(sum_across_ranks(torch.tensor(sum(targets), device=device), world))
            factor = world * accumulation / max(total, 1)
        if factor != 1:
            self.strategy.rescale_gradients(factor)
        # the loss of the (mean) gradient taken, loss weights included
        step_loss = torch.stack(weighted).float().sum() * factor
        step_loss = mean_across_ranks(step_loss, self.context)
        grad_norm = self.strategy.apply_gradients(train.gradient_clipping)
        self.clock.charge_step()
        self.step += 1
        # "progress" becomes the progress after this step (run loop); lr, batch size and mask
        # rate were set at "schedule_progress", the progress when the step began.
        record = {"step": self.step, "loss": step_loss, "lr": lr, "batch_size": batch_size,
                  **self.objective.log_values(progress), "progress": progress,
                  "schedule_progress": progress,
                  "tokens": self.tokens, "epoch": self.epoch}
        record.update(statistics.record(world))
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        record["data_wait_seconds"] = self.data_wait
        record["step_seconds"] = time.perf_counter() - started
        self.train_seconds += record["step_seconds"]
        for hook in self.hooks:
            hook.after_step(self, record)
        return record

    def _check_finite(self, records: list[dict]) -> list[dict]:
        """Materialize buffered step records; a non-finite loss stops training here."""
        records = [_materialize(record) for record in records]
        for record in records:
            if not math.isfinite(record["loss"]):
                kept = ("the last good checkpoint in " + str(self.run_dir / "checkpoints")
                        + " is kept") if latest_checkpoint(self.run_dir) else \
                    "no checkpoint had been written yet"
                raise TrainingError(
                    f"Loss became {record['loss']} at step {record['step']} (lr "
                    f"{record['lr']:.3g}). Training stopped; {kept}. Lower train.optim.lr, set "
                    f"train.gradient_clipping, or use impl.precision=fp32.")
        return records

    def _handle_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            if self._user_interrupts:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once, without a checkpoint
            self._user_interrupts += 1
            if self.context.is_main:
                log.warning("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again "
                            "stops at once, without one).")
        if self._stop_signal is None:
            self._stop_signal = signum

    def fit(self, max_steps: int | None = None) -> dict:
        """Train until the budget is spent (or ``max_steps``, or a stop signal).

        SIGINT (Ctrl-C), SIGTERM, SIGUSR1 and SIGUSR2 (SLURM's pre-timeout signal) finish
        the current step, write a checkpoint and return; a handler that was installed before
        (submitit's requeue; Python's for Ctrl-C, which raises KeyboardInterrupt) is then
        called, so preempted SLURM jobs requeue and resume. A second Ctrl-C stops at once.
        """
        cfg = self.cfg
        self._user_interrupts = 0
        previous = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}  # background jobs ignore ^C
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
        pending: list[dict] = []  # step records not yet logged (device values)
        stop = self.clock.exhausted()
        try:
            while not stop and (max_steps is None or self.step < max_steps):
                record = self.train_step()
                pending.append(record)
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
                log_due = self.step % cfg.train.log_every_steps == 0
                validate = self.validation is not None and self.validation.due(self.progress)
                if log_due or decision.save or decision.interrupted or stop or validate:
                    record = self._check_finite(pending)[-1]
                    if self.logger is not None and log_due:
                        self.logger.log(record)
                    pending = []
                    bar.set_postfix(loss=f"{record['loss']:.3f}",
                                    left=self.clock.remaining_text(), refresh=False)
                bar.n = int(1000 * self.progress)
                bar.update(0)
                if validate:  # before a checkpoint of this step, which then counts it
                    self.validate()
                    last_time = time.monotonic()
                if decision.save or decision.interrupted:
                    self.save()
                    last_save = time.monotonic()
                if decision.interrupted:
                    self._stop_signal = self._stop_signal or signal.SIGTERM
                    if self.context.is_main:
                        log.warning("Stop signal: checkpoint written at step %d; continue "
                                    "with resume=true.", self.step)
                    break
            if pending:
                record = self._check_finite(pending)[-1]
        finally:
            bar.close()
            self.pipeline.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.logger is not None and record and self.step % cfg.train.log_every_steps != 0:
            self.logger.log(record)
        if self._stop_signal is not None and callable(previous.get(self._stop_signal)):
            previous[self._stop_signal](self._stop_signal, None)
        return record

    def validate(self) -> dict:
        """Held-out loss at the budget point just reached, logged to metrics.jsonl.

        Every rank scores the same rows (sharded models need all ranks in the forward);
        the time it takes is not charged to the budget (:func:`uncharged`).
        """
        with uncharged(self.clock):
            scores = self.validation.run(self.model, self.runtime, self.progress)
        # where on the budget (its own unit), in tokens and in training wall time
        record = {"step": self.step, "progress": self.progress, "tokens": self.tokens,
                  "budget_spent": self.clock.spent(), "train_seconds": self.train_seconds,
                  **scores}
        if self.logger is not None:
            self.logger.log(record)
        if self.context.is_main:
            log.info("Validation at step %d (%.1f%% of the budget): loss %.4f, accuracy %.4f",
                     self.step, 100 * self.progress, scores["val_loss"], scores["val_accuracy"])
        return record

    @property
    def interrupted(self) -> bool:
        return self._stop_signal is not None
