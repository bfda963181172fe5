"""Task heads on top of the pretrained encoder.

Pooled hidden state (first token, or the mean over real tokens) -> Linear to ``head_dim``
-> Tanh -> dropout -> Linear, as Cramming's classification head (JonasGeiping/cramming,
cramming/architectures/components.py ``PoolingComponent`` and crammed_bert.py
``ScriptableLMForSequenceClassification``). Span tasks concatenate the mean hidden state of
each marked span to the pooled features.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from cramming.errors import CheckpointError
from cramming.evaluation.encoding import Batch
from cramming.evaluation.tasks import Task


class TaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, num_outputs: int, num_spans: int = 0,
                 dropout: float = 0.1, init_std: float = 0.02, pooler: str = "zero_index",
                 head_dim: int | None = None):
        super().__init__()
        hidden = encoder.hidden_size
        head_dim = head_dim or hidden
        self.encoder = encoder
        self.pool_scheme = pooler
        self.use_token_types = getattr(getattr(encoder, "arch", None), "type_vocab_size", 0) > 0
        self.pooler = nn.Sequential(nn.Linear(hidden, head_dim), nn.Tanh())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(head_dim + hidden * num_spans, num_outputs)
        for layer in (self.pooler[0], self.head):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                span_weights: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask=attention_mask,
                                     token_type_ids=token_type_ids if self.use_token_types
                                     else None)
        if self.pool_scheme == "avg":
            # Mean over real tokens; Cramming's mean also counts padding, which would make a
            # prediction depend on the other sequences of its batch.
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            first = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
        else:
            first = hidden[:, 0]
        features = [self.pooler(first)]
        if span_weights is not None:
            features.append((span_weights.to(hidden.dtype) @ hidden).flatten(1))
        return self.head(self.dropout(torch.cat(features, dim=-1)))

    def run(self, batch: Batch) -> torch.Tensor:
        return self(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                    batch.span_weights)


def set_encoder_dropout(encoder: nn.Module, p: float) -> None:
    """Every dropout of ``encoder`` (hidden, embedding, attention probabilities) to ``p``."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p


def load_cramming_head(model: TaskModel, extra: Mapping[str, torch.Tensor]) -> None:
    """Copy Cramming's classifier tensors (``pooler.dense.*``, ``head.*``) into ``model``."""
    dense = model.pooler[0]
    names = {"pooler.dense.weight": dense.weight, "pooler.dense.bias": dense.bias,
             "head.weight": model.head.weight, "head.bias": model.head.bias}
    missing = sorted(set(names) - set(extra))
    if missing:
        raise CheckpointError(f"Cramming classifier weights lack {', '.join(missing)}.")
    with torch.no_grad():
        for name, parameter in names.items():
            if tuple(extra[name].shape) != tuple(parameter.shape):
                raise CheckpointError(f"Cramming {name} has shape {tuple(extra[name].shape)}, "
                                      f"this head {tuple(parameter.shape)}: set eval.head_dim.")
            parameter.copy_(extra[name])


def task_loss(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss for ``task.kind`` (logits per sequence, labels per instance)."""
    logits = logits.float()
    if task.kind == "regression":
        return F.mse_loss(logits.squeeze(-1), labels)
    if task.kind == "record":
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)
    if task.kind == "choice":
        return F.cross_entropy(logits.view(labels.shape[0], -1), labels)
    return F.cross_entropy(logits, labels)


def instance_outputs(task: Task, logits: torch.Tensor, num_instances: int) -> torch.Tensor:
    """Per-instance outputs: class ids, regression values or candidate scores."""
    logits = logits.float()
    if task.kind in ("regression", "record"):
        return logits.squeeze(-1)
    if task.kind == "choice":
        return logits.view(num_instances, -1).argmax(-1)
    return logits.argmax(-1)
