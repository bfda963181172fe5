"""GPT-BERT's span masking: whole spans of 1..max_span tokens, one decision per span.

As GPT-BERT does it (ltgoslo/gpt-bert, pretraining/dataset.py ``SpanMaskingStrategy`` and
``MaskedDataset.apply_mask``): each row is cut into consecutive spans of uniform length
1..``max_span``; every span draws one score and one corruption draw shared by its tokens.
With ``n`` maskable tokens in the row, ``k = max(1, int(n * mask_prob + u))`` (``u``
uniform: stochastic rounding), and every maskable token whose span scores at most the
k-th smallest score is selected. Whole spans are taken, so slightly more than
``mask_prob`` of the tokens are selected (30.5% at 0.3, 15.5% at 0.15). A span's tokens
become ``[MASK]``, random tokens or stay as they are together. ``n`` counts a whole
packed row (GPT-BERT counts each document piece of a row on its own: the same expectation).

GPT-BERT also scales the scores by a softmax over how often each position of a stored
segment was masked before; our rows are streamed, not revisited per position, so that
history does not exist here (with uniform history the scaling changes nothing).
"""

from __future__ import annotations

import math

import torch

from cramming.data.keyed_random import RandomSource
from cramming.data.masking import KEEP, MASK, RANDOM, MLMMasker


class SpanMasker(MLMMasker):
    """An :class:`MLMMasker` that selects and corrupts whole spans (GPT-BERT's rule)."""

    def __init__(self, *args, max_span: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if max_span < 1:
            raise ValueError(f"max_span must be >= 1, got {max_span}")
        if self.exact_count or self.mask_special_tokens:
            raise ValueError("span masking has its own count rule and never masks special "
                             "tokens: exact_count and mask_special_tokens do not apply.")
        self.max_span = max_span

    def span_of_position(self, lengths: torch.Tensor) -> torch.Tensor:
        """Index of the span covering each position, for spans of ``lengths`` laid end to end."""
        rows, length = lengths.shape
        starts = torch.cumsum(lengths, dim=1) - lengths
        is_start = torch.zeros(rows, length + 1, dtype=torch.long, device=lengths.device)
        is_start.scatter_(1, starts.clamp(max=length), 1)
        return torch.cumsum(is_start[:, :length], dim=1) - 1

    def _plan(self, maskable: torch.Tensor, mask_prob: float,
              random: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(maskable.shape)
        device = maskable.device
        lengths = (random.randint(self.max_span, shape) + 1).to(device)
        span_scores = random.uniform(shape).to(device)
        span_draws = random.uniform(shape).to(device)
        rounding = random.uniform((shape[0], 1)).to(device).double()
        span = self.span_of_position(lengths)
        scores = span_scores.gather(1, span).masked_fill(~maskable, math.inf)
        actions = self._actions(span_draws.gather(1, span))
        maskable_count = maskable.sum(dim=1, keepdim=True)
        count = torch.floor(maskable_count.double() * mask_prob + rounding).long()
        count = torch.minimum(count.clamp(min=1), maskable_count)
        threshold = scores.sort(dim=1).values.gather(1, (count - 1).clamp(min=0))
        selected = (scores <= threshold) & maskable & (maskable_count > 0)
        return selected, actions

    def _actions(self, draws: torch.Tensor) -> torch.Tensor:
        # GPT-BERT's order: random below random_p, kept up to random_p + keep_p, else [MASK]
        keep_until = 1.0 - self.mask_token_prob
        actions = torch.full_like(draws, MASK, dtype=torch.long)
        actions[draws < keep_until] = KEEP
        actions[draws < self.random_token_prob] = RANDOM
        return actions
