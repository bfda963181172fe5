"""Held-out MLM loss and accuracy with masks fixed by a seed (comparable across runs).

Causal and hybrid models are scored with :func:`evaluate_objective`: CLM loss, perplexity
and next-token accuracy, and for hybrid (GPT-BERT) models also MNTP (masked next token).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from cramming.backend.runtime import Runtime
from cramming.data import MLMMasker, PackedDataset
from cramming.data.keyed_random import KeyedRandom, stream_id

# Defaults shared by end-of-training validation and validate_bert.py, so every reported
# validation number is measured the same way, whatever masking rate the run trained with.
VALIDATION_MASK_PROB = 0.15
VALIDATION_SEED = 0
VALIDATION_STREAM = stream_id("validation")


@torch.no_grad()
def _score(model: nn.Module, data: PackedDataset, runtime: Runtime, batch_size: int,
           max_batches: int | None, make_batch: Callable[[torch.Tensor, torch.Tensor], tuple],
           model_kwargs: dict, desc: str, progress_bar: bool) -> dict:
    """Token-weighted loss and accuracy over rows read in order, in eval mode.

    ``make_batch(input_ids, row_indices) -> (inputs, labels)`` turns rows into a scored batch.
    """
    was_training = model.training
    model.eval()
    total_rows = len(data)
    num_batches = (total_rows + batch_size - 1) // batch_size
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    loss_sum, predictions, correct = 0.0, 0, 0
    for index in tqdm(range(num_batches), desc=desc, disable=not progress_bar):
        row_indices = torch.arange(index * batch_size, min((index + 1) * batch_size, total_rows))
        rows = data.batch(row_indices.numpy())
        input_ids, labels = make_batch(rows["input_ids"], row_indices)
        with runtime.autocast():
            out = model(input_ids.to(runtime.device), labels=labels.to(runtime.device),
                        **model_kwargs)
        count = int(out["num_predictions"])
        loss_sum += float(out["loss"]) * count
        predictions += count
        correct += int(out["num_correct"])
    model.train(was_training)
    return {"loss": loss_sum / max(predictions, 1), "accuracy": correct / max(predictions, 1),
            "predicted_tokens": predictions, "rows": min(num_batches * batch_size, total_rows)}


def _shift_left(labels: torch.Tensor) -> torch.Tensor:
    """Targets one position earlier (next-token prediction); the last position is ignored."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


def evaluate_mlm(model: nn.Module, data: PackedDataset, masker: MLMMasker, runtime: Runtime,
                 mask_prob: float = VALIDATION_MASK_PROB, batch_size: int = 64,
                 max_batches: int | None = None, seed: int = VALIDATION_SEED,
                 progress_bar: bool = True, next_token: bool = False,
                 model_kwargs: dict | None = None) -> dict:
    """Token-weighted MLM loss and accuracy over (up to ``max_batches``) validation rows.

    Rows are read in order and each row's mask is keyed by (seed, row index), so two
    checkpoints are scored on exactly the same masked tokens, whatever the batch size.
    ``next_token`` scores MNTP (each masked token predicted one position earlier);
    ``model_kwargs`` go to the forward (e.g. ``causal=False``).
    """

    def make_batch(input_ids: torch.Tensor, row_indices: torch.Tensor) -> tuple:
        random = KeyedRandom(seed, VALIDATION_STREAM, row_indices.numpy())
        inputs, labels = masker(input_ids, mask_prob, random)
        return inputs, _shift_left(labels) if next_token else labels

    scores = _score(model, data, runtime, batch_size, max_batches, make_batch,
                    model_kwargs or {}, "validate", progress_bar)
    scores["masked_tokens"] = scores.pop("predicted_tokens")
    return {**scores, "mask_prob": mask_prob, "seed": seed}


def evaluate_clm(model: nn.Module, data: PackedDataset, runtime: Runtime, batch_size: int = 64,
                 max_batches: int | None = None, progress_bar: bool = True) -> dict:
    """Token-weighted next-token loss, perplexity and accuracy with causal attention."""
    scores = _score(model, data, runtime, batch_size, max_batches,
                    lambda input_ids, rows: (input_ids, _shift_left(input_ids)),
                    {"causal": True}, "validate clm", progress_bar)
    return {**scores, "perplexity": math.exp(min(scores["loss"], 50.0))}


def evaluate_objective(model: nn.Module, data: PackedDataset, masker: MLMMasker,
                       runtime: Runtime, objective: str = "mlm",
                       mask_prob: float = VALIDATION_MASK_PROB, batch_size: int = 64,
                       max_batches: int | None = None, seed: int = VALIDATION_SEED,
                       progress_bar: bool = True) -> dict:
    """Validation scores for a model trained with ``objective`` (mlm, clm or hybrid).

    ``mlm``: exactly :func:`evaluate_mlm`. ``clm``: :func:`evaluate_clm`, as ``loss`` /
    ``accuracy`` / ``perplexity`` and again under ``clm_*``. ``hybrid``: MNTP (bidirectional,
    fixed masks) as ``loss`` / ``accuracy`` and ``mlm_*``, plus CLM as ``clm_*``.
    """
    if objective == "mlm":
        return evaluate_mlm(model, data, masker, runtime, mask_prob, batch_size, max_batches,
                            seed, progress_bar)
    scores: dict = {"objective": objective}
    clm = evaluate_clm(model, data, runtime, batch_size, max_batches, progress_bar)
    scores.update({f"clm_{key}": value for key, value in clm.items()})
    if objective == "clm":
        scores.update(loss=clm["loss"], accuracy=clm["accuracy"], perplexity=clm["perplexity"],
                      rows=clm["rows"])
        return scores
    mntp = evaluate_mlm(model, data, masker, runtime, mask_prob, batch_size, max_batches, seed,
                        progress_bar, next_token=True, model_kwargs={"causal": False})
    scores.update({f"mlm_{key}": value for key, value in mntp.items()})
    scores["mlm_perplexity"] = math.exp(min(mntp["loss"], 50.0))
    scores.update(loss=mntp["loss"], accuracy=mntp["accuracy"], rows=mntp["rows"],
                  mask_prob=mask_prob, seed=seed)
    return scores
