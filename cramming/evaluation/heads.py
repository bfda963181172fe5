"""Task heads on top of the pretrained encoder.

[CLS] hidden state -> pooler (dense + tanh, as BERT) -> dropout -> linear. Span tasks
concatenate the mean hidden state of each marked span to the pooled [CLS].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cramming.evaluation.encoding import Batch
from cramming.evaluation.tasks import Task


class TaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, num_outputs: int, num_spans: int = 0,
                 dropout: float = 0.1, init_std: float = 0.02):
        super().__init__()
        hidden = encoder.hidden_size
        self.encoder = encoder
        self.use_token_types = getattr(getattr(encoder, "arch", None), "type_vocab_size", 0) > 0
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (1 + num_spans), num_outputs)
        for layer in (self.pooler[0], self.head):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                span_weights: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask=attention_mask,
                                     token_type_ids=token_type_ids if self.use_token_types
                                     else None)
        features = [self.pooler(hidden[:, 0])]
        if span_weights is not None:
            features.append((span_weights.to(hidden.dtype) @ hidden).flatten(1))
        return self.head(self.dropout(torch.cat(features, dim=-1)))

    def run(self, batch: Batch) -> torch.Tensor:
        return self(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                    batch.span_weights)


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
