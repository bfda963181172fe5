"""Held-out MLM loss and accuracy with masks fixed by a seed (comparable across runs).

Causal and hybrid models are scored with :func:`evaluate_objective`: CLM loss, perplexity
and next-token accuracy, and for hybrid (GPT-BERT) models also MNTP (masked next token).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from cramming.backend.runtime import Runtime
from cramming.data import MLMMasker, PackedDataset
from cramming.data.keyed_random import KeyedRandom, stream_id
from cramming.errors import ConfigError

# Defaults shared by end-of-training validation and validate_bert.py, so every reported
# validation number is measured the same way, whatever masking rate the run trained with.
VALIDATION_MASK_PROB = 0.15
VALIDATION_SEED = 0
VALIDATION_STREAM = stream_id("validation")


@contextmanager
def exact_decoding(model: nn.Module) -> Iterator[Callable[[torch.Tensor], None]]:
    """Make a fixed-count sparse head decode exactly a batch's labelled positions.

    A static decode count (``arch.fixed_masked_fraction`` or the trainer's
    ``set_static_decode``) drops labelled positions beyond it, so which tokens are scored
    would depend on how rows are grouped into batches. Yields ``fit(labels)``, to call
    before each forward; the model's own setting is restored on exit.
    """
    if not hasattr(model, "set_static_decode") or not hasattr(model, "decode_fraction"):
        yield lambda labels: None
        return
    previous = model.static_decode_fraction
    fixed = model.decode_fraction() is not None

    def fit(labels: torch.Tensor) -> None:
        if fixed:  # count = round(fraction * numel) = exactly the labelled positions
            model.set_static_decode(max(int((labels != -100).sum()), 1) / labels.numel())

    try:
        yield fit
    finally:
        model.set_static_decode(previous)


@torch.no_grad()
def _score(model: nn.Module, data: PackedDataset, runtime: Runtime, batch_size: int,
           max_rows: int | None, make_batch: Callable[[torch.Tensor, torch.Tensor], tuple],
           model_kwargs: dict, desc: str, progress_bar: bool) -> dict:
    """Token-weighted loss and accuracy over the first ``max_rows`` rows, in eval mode.

    ``make_batch(input_ids, row_indices) -> (inputs, labels)`` turns rows into a scored batch.
    Which rows and tokens are scored never depends on ``batch_size``.
    """
    if batch_size < 1 or (max_rows is not None and max_rows < 1):
        raise ConfigError(f"validation batch_size={batch_size} and max_rows={max_rows} must "
                          f"be >= 1.")
    was_training = model.training
    model.eval()
    total_rows = len(data) if max_rows is None else min(len(data), max_rows)
    loss_sum, predictions, correct = 0.0, 0, 0
    with exact_decoding(model) as fit_decoding:
        for start in tqdm(range(0, total_rows, batch_size), desc=desc, disable=not progress_bar):
            row_indices = torch.arange(start, min(start + batch_size, total_rows))
            rows = data.batch(row_indices.numpy())
            input_ids, labels = make_batch(rows["input_ids"], row_indices)
            fit_decoding(labels)
            with runtime.autocast():
                out = model(input_ids.to(runtime.device), labels=labels.to(runtime.device),
                            **model_kwargs)
            count = int(out["num_predictions"])
            loss_sum += float(out["loss"]) * count
            predictions += count
            correct += int(out["num_correct"])
    model.train(was_training)
    return {"loss": loss_sum / max(predictions, 1), "accuracy": correct / max(predictions, 1),
            "predicted_tokens": predictions, "rows": total_rows}


def _shift_left(labels: torch.Tensor) -> torch.Tensor:
    """Targets one position earlier (next-token prediction); the last position is ignored."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


def evaluate_mlm(model: nn.Module, data: PackedDataset, masker: MLMMasker, runtime: Runtime,
                 mask_prob: float = VALIDATION_MASK_PROB, batch_size: int = 64,
                 max_rows: int | None = None, seed: int = VALIDATION_SEED,
                 progress_bar: bool = True, next_token: bool = False,
                 model_kwargs: dict | None = None) -> dict:
    """Token-weighted MLM loss and accuracy over the first ``max_rows`` validation rows.

    Rows are read in order and each row's mask is keyed by (seed, row index), so two
    checkpoints are scored on exactly the same masked tokens, whatever the batch size.
    ``next_token`` scores MNTP (each masked token predicted one position earlier);
    ``model_kwargs`` go to the forward (e.g. ``causal=False``).
    """

    def make_batch(input_ids: torch.Tensor, row_indices: torch.Tensor) -> tuple:
        random = KeyedRandom(seed, VALIDATION_STREAM, row_indices.numpy())
        inputs, labels = masker(input_ids, mask_prob, random)
        return inputs, _shift_left(labels) if next_token else labels

    scores = _score(model, data, runtime, batch_size, max_rows, make_batch,
                    model_kwargs or {}, "validate", progress_bar)
    scores["masked_tokens"] = scores.pop("predicted_tokens")
    return {**scores, "mask_prob": mask_prob, "seed": seed}


def evaluate_clm(model: nn.Module, data: PackedDataset, runtime: Runtime, batch_size: int = 64,
                 max_rows: int | None = None, progress_bar: bool = True) -> dict:
    """Token-weighted next-token loss, perplexity and accuracy with causal attention."""
    scores = _score(model, data, runtime, batch_size, max_rows,
                    lambda input_ids, rows: (input_ids, _shift_left(input_ids)),
                    {"causal": True}, "validate clm", progress_bar)
    return {**scores, "perplexity": math.exp(min(scores["loss"], 50.0))}


def evaluate_objective(model: nn.Module, data: PackedDataset, masker: MLMMasker,
                       runtime: Runtime, objective: str = "mlm",
                       mask_prob: float = VALIDATION_MASK_PROB, batch_size: int = 64,
                       max_rows: int | None = None, seed: int = VALIDATION_SEED,
                       progress_bar: bool = True) -> dict:
    """Validation scores for a model trained with ``objective`` (mlm, clm or hybrid).

    ``mlm``: exactly :func:`evaluate_mlm`. ``clm``: :func:`evaluate_clm`, as ``loss`` /
    ``accuracy`` / ``perplexity`` and again under ``clm_*``. ``hybrid``: MNTP (bidirectional,
    fixed masks) as ``loss`` / ``accuracy`` and ``mlm_*``, plus CLM as ``clm_*``.
    """
    if objective == "mlm":
        return evaluate_mlm(model, data, masker, runtime, mask_prob, batch_size, max_rows,
                            seed, progress_bar)
    scores: dict = {"objective": objective}
    clm = evaluate_clm(model, data, runtime, batch_size, max_rows, progress_bar)
    scores.update({f"clm_{key}": value for key, value in clm.items()})
    if objective == "clm":
        scores.update(loss=clm["loss"], accuracy=clm["accuracy"], perplexity=clm["perplexity"],
                      rows=clm["rows"])
        return scores
    mntp = evaluate_mlm(model, data, masker, runtime, mask_prob, batch_size, max_rows, seed,
                        progress_bar, next_token=True, model_kwargs={"causal": False})
    scores.update({f"mlm_{key}": value for key, value in mntp.items()})
    scores["mlm_perplexity"] = math.exp(min(mntp["loss"], 50.0))
    scores.update(loss=mntp["loss"], accuracy=mntp["accuracy"], rows=mntp["rows"],
                  mask_prob=mask_prob, seed=seed)
    return scores


# Progress within this of a point counts as reaching it (a step budget of 3 steps reaches
# 1/3 as 0.333..., which must not wait one more step).
_POINT_TOLERANCE = 1e-9


class PeriodicValidation:
    """Held-out loss at fixed points of the budget, measured during pretraining.

    Points are every ``interval`` of budget progress (``train.validate_every_fraction``, or
    ``train.validate_every_hours`` / budget hours). The first ``rows`` held-out rows are
    scored exactly as ``validate_bert.py`` scores them (:func:`evaluate_objective` with the
    fixed validation masks), so a point logs the number ``validate_bert.py`` reports for
    the same weights, whatever ``batch_size``. ``points_done`` is checkpointed by the
    trainer, so a resumed run validates at the same points.
    """

    def __init__(self, data: PackedDataset, masker: MLMMasker, interval: float, rows: int,
                 batch_size: int, objective: str = "mlm"):
        self.data, self.masker, self.interval = data, masker, interval
        self.rows, self.batch_size, self.objective = rows, batch_size, objective
        self.points_done = 0

    @classmethod
    def from_config(cls, cfg, data: PackedDataset, tokenizer) -> PeriodicValidation | None:
        """The run's periodic validation (``cfg``: a PretrainConfig), or None when off."""
        train = cfg.train
        if train.validate_every_fraction is not None:
            interval = train.validate_every_fraction
        elif train.validate_every_hours is not None:
            interval = train.validate_every_hours / cfg.budget
        else:
            return None
        if len(data) == 0:
            raise ConfigError("train.validate_every_* needs held-out rows, but the validation "
                              "split is empty: set data.val_fraction > 0.")
        return cls(data, MLMMasker.from_tokenizer(tokenizer), min(interval, 1.0),
                   train.val_rows, train.val_batch_size or cfg.impl.microbatch_size,
                   train.objective)

    def due(self, progress: float) -> bool:
        """Whether ``progress`` has reached the next point."""
        return progress + _POINT_TOLERANCE >= (self.points_done + 1) * self.interval

    def run(self, model: nn.Module, runtime: Runtime, progress: float) -> dict:
        """Score ``model`` and move past every point ``progress`` has reached."""
        started = time.perf_counter()
        scores = evaluate_objective(model, self.data, self.masker, runtime, self.objective,
                                    batch_size=self.batch_size, max_rows=self.rows,
                                    progress_bar=False)
        self.points_done = max(self.points_done + 1,
                               math.floor((progress + _POINT_TOLERANCE) / self.interval))
        record = {f"val_{key}": value for key, value in scores.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)}
        record.update(val_point=self.points_done, val_seconds=time.perf_counter() - started)
        return record

    def state_dict(self) -> dict:
        return {"points_done": self.points_done}

    def load_state_dict(self, state: dict | None, progress: float) -> None:
        """Restore; a checkpoint from before periodic validation counts the points passed."""
        if state is None:
            self.points_done = math.floor((progress + _POINT_TOLERANCE) / self.interval)
        else:
            self.points_done = int(state["points_done"])
