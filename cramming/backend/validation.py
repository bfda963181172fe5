"""Held-out MLM loss and accuracy with masks fixed by a seed (comparable across runs)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from cramming.backend.runtime import Runtime
from cramming.data import MLMMasker, PackedDataset

# Defaults shared by end-of-training validation and validate_bert.py, so every reported
# validation number is measured the same way, whatever masking rate the run trained with.
VALIDATION_MASK_PROB = 0.15
VALIDATION_SEED = 0


@torch.no_grad()
def evaluate_mlm(model: nn.Module, data: PackedDataset, masker: MLMMasker, runtime: Runtime,
                 mask_prob: float = VALIDATION_MASK_PROB, batch_size: int = 64,
                 max_batches: int | None = None, seed: int = VALIDATION_SEED,
                 progress_bar: bool = True) -> dict:
    """Token-weighted MLM loss and accuracy over (up to ``max_batches``) validation rows.

    Rows are read in order and masked with generators seeded by (seed, batch index), so
    two checkpoints are scored on exactly the same masked tokens.
    """
    was_training = model.training
    model.eval()
    total_rows = len(data)
    num_batches = (total_rows + batch_size - 1) // batch_size
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    loss_sum, predictions, correct = 0.0, 0, 0
    for index in tqdm(range(num_batches), desc="validate", disable=not progress_bar):
        rows = data.batch(torch.arange(index * batch_size,
                                       min((index + 1) * batch_size, total_rows)).numpy())
        generator = torch.Generator().manual_seed(seed * 7919 + index)
        input_ids, labels = masker(rows["input_ids"], mask_prob, generator)
        with runtime.autocast():
            out = model(input_ids.to(runtime.device), labels=labels.to(runtime.device))
        count = int(out["num_predictions"])
        loss_sum += float(out["loss"]) * count
        predictions += count
        correct += int(out["num_correct"])
    model.train(was_training)
    return {
        "loss": loss_sum / max(predictions, 1),
        "accuracy": correct / max(predictions, 1),
        "masked_tokens": predictions,
        "rows": min(num_batches * batch_size, total_rows),
        "mask_prob": mask_prob,
        "seed": seed,
    }
