"""Sophia-G's Hessian estimator passes, run every ``hessian_interval`` optimizer steps.

Gauss-Newton-Bartlett estimate (Liu et al. 2023, Alg. 2) for masked language modelling: on
an estimator batch the model's MLM logits at the *masked positions* (the model's output
distribution over the vocabulary, never hidden states) are used to sample labels
``y_hat ~ softmax(logits)``; the gradient ``g_hat`` of the mean cross-entropy against those
sampled labels, accumulated over the whole estimator batch, gives ``h_hat = B * g_hat**2``,
which :meth:`SophiaG.update_hessian` folds into its EMA; ``B`` is NTNG's fixed
``train.optim.hessian_scale`` (196,608) in the ``sophiag`` preset, else the number of
predicted positions. The passes are charged to the budget clock as ``hessian`` work.

NTNG (JeanKaddour/NoTrainNoGain, bert/pretrain_bert_sophia.py) sums the mean-loss gradients
of its 128-sequence microbatches; ``train.optim.hessian_mean_rows=128`` (the ``sophiag``
preset) does the same whatever ``impl.microbatch_size`` is; null: one mean over the batch.

``hessian_batch_size`` counts the rows of all processes together (as ``train.batch_size``):
on N processes each rank draws its share, and the estimate equals one process's with an N
times larger microbatch (:func:`estimate_hessian`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cramming.architectures import IGNORE_INDEX
from cramming.backend.distributed import DistributedContext
from cramming.backend.hooks import TrainingHook
from cramming.backend.optim import SophiaG
from cramming.clock import Work, active_layers
from cramming.config.schema import OptimConfig
from cramming.objectives import Microbatch
from efficient_training.common import ExtraBatches

if TYPE_CHECKING:
    from cramming.backend.hooks import HookContext


def masked_logits(outputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """The model's vocabulary logits at the predicted (masked) positions, [n, V]."""
    logits = outputs["logits"]
    if logits.dim() == 3:  # dense prediction: [B, L, V]
        return logits[labels != IGNORE_INDEX]
    return logits[: int(outputs["num_predictions"])]  # sparse: masked rows come first


def sample_labels(logits: torch.Tensor, generator: torch.Generator, offset: int = 0,
                  total: int | None = None) -> torch.Tensor:
    """One label per row drawn from ``softmax(logits)``.

    With ``total``, ``logits`` are rows ``offset, offset + 1, ...`` of ``total`` rows whose
    other rows other ranks sample with a generator in the same state: the labels are those
    one draw over all ``total`` rows gives these rows. ``torch.multinomial`` draws one
    sample per row as ``argmax(p / q)`` with ``q ~ Exp(1)`` over the whole ``[rows, V]``
    tensor, so every rank draws all of ``q`` and keeps its rows.
    """
    probs = torch.softmax(logits.detach().float(), dim=-1)
    if total is None or total == probs.shape[0]:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    noise = torch.empty((total, probs.shape[1]), dtype=probs.dtype, device=probs.device)
    noise.exponential_(1, generator=generator)
    return (probs / noise[offset:offset + probs.shape[0]]).argmax(dim=-1)


def prediction_weights(per_row: torch.Tensor, mean_rows: int | None) -> torch.Tensor:
    """Per-sequence weight of each prediction's loss in ``g_hat``, from the number of
    predictions of each row of the estimator batch (``per_row``, all ranks' rows).

    ``None``: one mean over every prediction of the estimator batch. ``mean_rows``: NTNG's
    accumulation, the sum over consecutive groups of ``mean_rows`` sequences (its 128-row
    microbatches) of each group's mean loss (JeanKaddour/NoTrainNoGain,
    bert/pretrain_bert_sophia.py: one ``backward()`` of the mean loss per microbatch).
    """
    per_row = per_row.double()
    if mean_rows is None:
        return torch.full_like(per_row, 1.0 / max(float(per_row.sum()), 1.0))
    group = torch.arange(per_row.numel()) // mean_rows
    totals = torch.zeros(int(group.max()) + 1, dtype=per_row.dtype).index_add_(0, group, per_row)
    return 1.0 / totals[group].clamp(min=1.0)


def estimate_hessian(model: nn.Module, optimizer: SophiaG, batches: list[Microbatch],
                     generator: torch.Generator, device: torch.device,
                     autocast: object | None = None, mean_rows: int | None = None,
                     context: DistributedContext | None = None) -> int:
    """Accumulate ``g_hat`` over ``batches``, fold ``B * g_hat**2`` into ``optimizer``.

    ``g_hat`` is the gradient of the mean sampled-label loss, or with ``mean_rows`` the sum
    of the means over groups of that many sequences (:func:`prediction_weights`). Leaves
    the gradients cleared; returns the number of predicted positions.

    With a multi-process ``context``, ``batches`` are this rank's shares of the estimator
    batch's microbatches (rank ``r``'s rows after rank ``r - 1``'s in each): weights and
    sampled labels are those of the whole batch, and the gradients are summed over ranks
    before the update, so every rank folds in what one process would.
    """
    context = context or DistributedContext()
    counts = [(b.labels != IGNORE_INDEX).sum(1) for b in batches]
    every = context.all_gather_objects(counts)  # [rank][microbatch] -> predictions per row
    world, rank = context.world_size, context.rank
    per_row = torch.cat([every[r][i] for i in range(len(batches)) for r in range(world)])
    total = int(per_row.sum())
    optimizer.zero_grad(set_to_none=True)
    if total == 0:
        return 0
    weights, offset = prediction_weights(per_row, mean_rows), 0
    # torch.autograd.grad, not backward(): DDP's hooks on the parameters would take the
    # layers of this pass for layers used by the next training step
    params = [p for p in model.parameters() if p.requires_grad]
    sums: list[torch.Tensor | None] = [None] * len(params)
    for index, batch in enumerate(batches):
        sizes = [len(every[r][index]) for r in range(world)]
        predictions = [int(every[r][index].sum()) for r in range(world)]
        row_offset = offset + sum(sizes[:rank])
        labels = batch.labels.to(device)
        context_manager = autocast() if autocast is not None else torch.autocast(
            device.type, enabled=False)
        with context_manager:
            outputs = model(batch.input_ids.to(device), labels=labels, **batch.model_kwargs)
        logits = masked_logits(outputs, labels)
        sampled = sample_labels(logits, generator, sum(predictions[:rank]), sum(predictions))
        # predictions are in row-major order: the row of each one gives its weight
        rows = (batch.labels != IGNORE_INDEX).nonzero()[: logits.shape[0], 0] + row_offset
        losses = F.cross_entropy(logits.float(), sampled, reduction="none")
        loss = (losses * weights[rows].to(device=device, dtype=losses.dtype)).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sums = [g if s is None else s if g is None else s + g for s, g in zip(sums, grads)]
        offset += sum(sizes)
    # the same layers ran on every rank (layer dropping draws alike), so the same grads exist
    context.sum_in_place([g for g in sums if g is not None])
    for param, grad in zip(params, sums):
        param.grad = grad
    optimizer.update_hessian(total)
    optimizer.zero_grad(set_to_none=True)
    return total


class SophiaHessianHook(TrainingHook):
    """Refreshes the Sophia-G Hessian estimate before every ``hessian_interval``-th step."""

    name = "sophia_hessian"

    def __init__(self, cfg: OptimConfig, microbatch_size: int, seed: int, world_size: int = 1):
        self.interval = cfg.hessian_interval
        self.batch_size = cfg.hessian_batch_size or microbatch_size * world_size
        self.mean_rows = cfg.hessian_mean_rows
        self.microbatch_size = microbatch_size * world_size  # global microbatch
        self.extra = ExtraBatches(self.name)
        self.seed = seed + 15485863
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None
        self.estimates = 0

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
        return self._generator

    def before_step(self, trainer: HookContext) -> None:
        if trainer.step % self.interval:
            return
        progress, batches, remaining = trainer.progress, [], self.batch_size
        world = trainer.context.world_size
        while remaining > 0:
            size = min(self.microbatch_size, remaining)
            batches.append(self.extra.draw(trainer, size // world, progress))  # this rank's
            remaining -= size
        device = trainer.runtime.device
        trainer.model.train()
        estimate_hessian(trainer.model, trainer.optimizer, batches, self.generator(device),
                         device, trainer.runtime.autocast, self.mean_rows, trainer.context)
        for batch in batches:
            trainer.clock.charge_microbatch(Work(
                sequences=batch.input_ids.shape[0], tokens=batch.input_ids.numel(),
                kind="hessian", active_layers=active_layers(trainer.model), replicas=world))
        self.estimates += 1

    def after_step(self, trainer: HookContext, record: dict) -> None:
        record["hessian_estimates"] = self.estimates

    def state_dict(self) -> dict:
        generator = self._generator.get_state() if self._generator is not None else None
        return {"generator": generator,
                "estimates": self.estimates}

    def load_state_dict(self, state: dict) -> None:
        self.estimates = int(state["estimates"])
        if state["generator"] is not None:
            if self._generator is not None:
                self._generator.set_state(state["generator"])
            else:
                self._pending_state = state["generator"]
