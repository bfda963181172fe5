"""Fine-tuning loop (AdamW, warmup + decay per task) and batched prediction."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cramming.backend.optimizers import parameter_groups
from cramming.errors import TrainingError
from cramming.evaluation.config import EvalSettings
from cramming.evaluation.encoding import Instance, collate
from cramming.evaluation.heads import TaskModel, instance_outputs, task_loss
from cramming.evaluation.tasks import Task


@dataclass
class Plan:
    """Step counts of one task's fine-tuning run."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    drop_last: bool = False  # the last partial batch of an epoch is not trained on


def plan_steps(num_train: int, settings: EvalSettings, warmup_steps: int | None = None) -> Plan:
    """Steps from this task's size; a fractional warmup is a fraction of *these* steps.

    ``warmup_steps`` overrides that (Cramming's reuse of the first task's count).
    """
    drop_last = settings.drop_last and num_train >= settings.batch_size
    per_epoch = (num_train // settings.batch_size if drop_last
                 else max(math.ceil(num_train / settings.batch_size), 1))
    total = per_epoch * settings.epochs
    if warmup_steps is not None:
        warmup = warmup_steps
    elif settings.warmup < 1:
        warmup = int(round(settings.warmup * total))
    else:
        warmup = min(int(settings.warmup), total)
    return Plan(per_epoch, total, warmup, drop_last)


def first_task_warmup(num_train: int, settings: EvalSettings) -> int:
    """Cramming's warmup count: int(fraction x the first task's steps), then kept for all."""
    if settings.warmup >= 1:
        return int(settings.warmup)
    return int(settings.warmup * plan_steps(num_train, settings).total_steps)


def lr_multiplier(step: int, plan: Plan, scheduler: str) -> float:
    """Factor of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warmup reaches the peak at the last warmup step; then cosine / linear decay
    towards zero at the end of the task's steps, or constant.
    """
    if step < plan.warmup_steps:
        return (step + 1) / plan.warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = (step - plan.warmup_steps) / max(plan.total_steps - plan.warmup_steps, 1)
    if scheduler == "linear":
        return 1.0 - progress
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {scheduler}")


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def finetune(model: TaskModel, task: Task, train: Sequence[Instance], settings: EvalSettings,
             seed: int, device: torch.device, pad_id: int, microbatch_size: int,
             on_epoch_end: Callable[[], dict], precision: str = "fp32",
             progress: bool = True, desc: str = "", plan: Plan | None = None) -> list[dict]:
    """Train ``model`` on ``train``; after each epoch record loss + ``on_epoch_end()``."""
    plan = plan or plan_steps(len(train), settings)
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=settings.lr,
                                  betas=tuple(settings.betas), eps=settings.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, plan, settings.scheduler))
    generator = torch.Generator().manual_seed(seed)
    regression = task.kind in ("regression", "record")
    history = []
    bar = tqdm(total=plan.total_steps, desc=desc, disable=not progress, leave=False)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        losses = []
        for batch_ids in _chunks(order, settings.batch_size):
            if plan.drop_last and len(batch_ids) < settings.batch_size:
                break
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro_ids in _chunks(batch_ids, microbatch_size):
                batch = collate([train[i] for i in micro_ids], pad_id, regression).to(device)
                with _autocast(device, precision):
                    logits = model.run(batch)
                loss = task_loss(task, logits, batch.labels) * (len(micro_ids) / len(batch_ids))
                loss.backward()
                step_loss += loss.item()
            if not math.isfinite(step_loss):
                raise TrainingError(f"Fine-tuning {task.name} diverged (loss {step_loss}) in "
                                    f"epoch {epoch}; try a lower eval.lr.")
            if settings.gradient_clipping:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clipping)
            optimizer.step()
            scheduler.step()
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.4f}")
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                        **on_epoch_end()})
    bar.close()
    return history


@torch.no_grad()
def predict(model: TaskModel, task: Task, instances: Sequence[Instance], batch_size: int,
            device: torch.device, pad_id: int, precision: str = "fp32") -> np.ndarray:
    """Per-instance outputs (class ids, values or candidate scores), in input order."""
    was_training = model.training
    model.eval()
    # Length-sorted batches waste less padding; results are put back in input order.
    order = sorted(range(len(instances)), key=lambda i: len(instances[i].input_ids[0]))
    outputs: list = [None] * len(instances)
    for chunk in _chunks(order, batch_size):
        batch = collate([instances[i] for i in chunk], pad_id, with_labels=False).to(device)
        with _autocast(device, precision):
            logits = model.run(batch)
        values = instance_outputs(task, logits, len(chunk)).cpu().numpy()
        for i, value in zip(chunk, values):
            outputs[i] = value
    model.train(was_training)
    return np.asarray(outputs)
