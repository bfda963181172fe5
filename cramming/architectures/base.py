"""The interface every masked-LM model implements, and the shared MLM loss logic.

Subclasses provide :meth:`MaskedLMModel.encode` (final hidden states) and
:meth:`MaskedLMModel.predict` (hidden states -> vocabulary logits). ``forward`` selects
which positions to decode:

* dense (``sparse_prediction: false`` or no labels): every position, logits [B, L, V];
* sparse: only positions whose label is not -100, logits [n_masked, V] (data-dependent
  shape, one host sync);
* fixed (``sparse_prediction`` and a fixed fraction: ``arch.fixed_masked_fraction``, or
  the run-time override of :meth:`MaskedLMModel.set_static_decode`): exactly
  ``n = round(fraction * B * L)`` positions, logits [n, V] (static shape for
  torch.compile / CUDA graphs, no host sync). Masked positions come first in row-major
  order, the rest is filled with unmasked positions whose loss is ignored. If a batch has
  more than ``n`` masked positions, the ones beyond ``n`` (the last in row-major order)
  are dropped: the loss, ``num_predictions`` and ``per_example_loss`` then cover only the
  ``n`` decoded positions. Choose the fraction >= the masking rate to avoid this.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from cramming.architectures.flops import training_flops_per_token
from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError

IGNORE_INDEX = -100


class MaskedLMModel(nn.Module, metaclass=ABCMeta):
    """Base class: an encoder with an MLM head and the common forward/loss contract."""

    arch: ArchConfig
    vocab_size: int
    hidden_size: int
    # Run-time override of arch.fixed_masked_fraction (see set_static_decode); class default.
    static_decode_fraction: float | None = None

    def set_static_decode(self, fraction: float | None) -> None:
        """Decode exactly ``round(fraction * B * L)`` positions per batch (static shape).

        Overrides ``arch.fixed_masked_fraction`` at run time; ``None`` goes back to the arch
        setting. Meant for objectives that mask the same count in every row (then nothing
        is dropped when ``fraction`` is that count / L). No effect without sparse prediction.
        """
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigError(f"static decode fraction {fraction} must be in (0, 1] or None")
        self.static_decode_fraction = None if fraction is None else float(fraction)

    def decode_fraction(self) -> float | None:
        """The fixed fraction of positions decoded (None: exactly the masked ones)."""
        if self.static_decode_fraction is not None:
            return self.static_decode_fraction
        return self.arch.fixed_masked_fraction

    @abstractmethod
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, L, H] (after the final norm)."""

    @abstractmethod
    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states [..., H] -> [..., V]."""

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_per_example_loss: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        """MLM forward pass; see the module docstring for which positions are decoded.

        Returns ``loss`` (mean CE over predicted positions, None without labels),
        ``logits``, ``num_predictions``, ``num_correct`` and, if requested,
        ``per_example_loss`` ([B]: each row's CE sum / its predicted count, 0 if none).
        """
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return self.outputs_from_hidden(hidden, labels, return_per_example_loss)

    def outputs_from_hidden(self, hidden: torch.Tensor, labels: torch.Tensor | None,
                            return_per_example_loss: bool = False,
                            z_loss: float | None = None) -> dict[str, torch.Tensor | None]:
        """Decode (sparsely) and score final hidden states against ``labels``.

        With ``z_loss`` given, the z-loss term mean(logsumexp(logits)^2) is returned as
        ``z_loss`` and added to ``loss`` with that weight.
        """
        if labels is None:
            outputs = {"loss": None, "logits": self.predict(hidden), "num_predictions": None,
                       "num_correct": None, "per_example_loss": None}
            return outputs if z_loss is None else {**outputs, "z_loss": None}
        batch, seq_len = labels.shape
        flat_labels = labels.reshape(-1)
        if self.arch.sparse_prediction:
            positions = self._decode_positions(flat_labels)
            flat_labels = flat_labels[positions]
            logits = self.predict(hidden.reshape(batch * seq_len, -1)[positions])
            rows = torch.div(positions, seq_len, rounding_mode="floor")
        else:
            logits = self.predict(hidden)
            positions = rows = None
        flat_logits = logits.reshape(-1, logits.shape[-1])
        token_loss = F.cross_entropy(
            flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        valid = flat_labels != IGNORE_INDEX
        num_predictions = valid.sum()
        # sum / count instead of mean: a batch without masked tokens gives 0, not NaN.
        count = num_predictions.clamp(min=1)
        loss = token_loss.sum() / count
        z_term = None
        if z_loss is not None:
            z_term = (torch.logsumexp(flat_logits.float(), dim=-1).square() * valid).sum() / count
            if z_loss:
                loss = loss + z_loss * z_term
        with torch.no_grad():
            num_correct = ((flat_logits.argmax(dim=-1) == flat_labels) & valid).sum()
        per_example_loss = None
        if return_per_example_loss:
            if rows is None:
                rows = torch.arange(batch, device=labels.device).repeat_interleave(seq_len)
            loss_sum = token_loss.new_zeros(batch).index_add_(0, rows, token_loss)
            counts = token_loss.new_zeros(batch).index_add_(0, rows, valid.to(token_loss.dtype))
            per_example_loss = loss_sum / counts.clamp(min=1)
        outputs = {
            "loss": loss,
            "logits": logits,
            "num_predictions": num_predictions,
            "num_correct": num_correct,
            "per_example_loss": per_example_loss,
        }
        return outputs if z_term is None else {**outputs, "z_loss": z_term.detach()}

    def _decode_positions(self, flat_labels: torch.Tensor) -> torch.Tensor:
        """Flat indices (into B*L) of the positions to decode, in row-major order."""
        masked = flat_labels != IGNORE_INDEX
        fraction = self.decode_fraction()
        if fraction is None:  # data-dependent shape: a host sync (and a graph break)
            return masked.nonzero().squeeze(1)
        count = max(1, min(flat_labels.numel(), round(fraction * flat_labels.numel())))
        # Stable sort on "is unmasked": all masked positions first, each group in order.
        order = torch.argsort((~masked).to(torch.int8), stable=True)
        return order[:count]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters; optionally without the input embedding tables (nn.Embedding)."""
        excluded: set[int] = set()
        if exclude_embeddings:
            excluded = {
                id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
            }
        return sum(p.numel() for p in self.parameters() if id(p) not in excluded)

    def flops_per_token(self, seq_length: int, num_predicted_fraction: float) -> float:
        """Training (forward + backward) FLOPs per token; see :mod:`.flops`."""
        return training_flops_per_token(
            self.arch, self.vocab_size, seq_length, num_predicted_fraction
        )
