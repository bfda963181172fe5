"""Span masking: select whole spans of 1..max_span tokens instead of single tokens."""

from __future__ import annotations

import torch

from cramming.data.keyed_random import RandomSource
from cramming.data.masking import MLMMasker


class SpanMasker(MLMMasker):
    """An :class:`MLMMasker` whose selection covers contiguous spans.

    Span starts are drawn with probability ``mask_prob / mean_span`` and each span has a
    length uniform in ``1..max_span``, so about ``mask_prob`` of the tokens are selected
    (a little less where spans overlap or cross special tokens, which are never selected).
    Corruption of the selected tokens (``[MASK]`` / random / keep) is per token as in BERT.
    """

    def __init__(self, *args, max_span: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if max_span < 1:
            raise ValueError(f"max_span must be >= 1, got {max_span}")
        self.max_span = max_span

    def _select(self, maskable: torch.Tensor, mask_prob: float,
                random: RandomSource) -> torch.Tensor:
        shape = tuple(maskable.shape)
        mean_span = (self.max_span + 1) / 2
        starts = (random.uniform(shape) < mask_prob / mean_span).to(maskable.device)
        lengths = (random.randint(self.max_span, shape) + 1).to(maskable.device)
        selected = torch.zeros_like(maskable)
        for offset in range(self.max_span):
            covers = starts & (lengths > offset)
            selected[:, offset:] |= covers[:, : shape[1] - offset]
        return selected & maskable
