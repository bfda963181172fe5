"""Masked-language-model corruption of packed rows (BERT's 80/10/10 recipe)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

from cramming.data.keyed_random import RandomSource, as_random

IGNORE_INDEX = -100  # label of positions that are not predicted
# What a selected position becomes (see MLMMasker._plan).
MASK, RANDOM, KEEP = 0, 1, 2


class MLMMasker:
    """Select positions to predict and corrupt them.

    Of the selected positions, ``mask_token_prob`` become ``[MASK]``, ``random_token_prob``
    a random non-special token, and the rest keep their token. With ``exact_count`` each row
    gets exactly ``round(mask_prob * row length)`` selections among its maskable positions
    (fewer only if the row has fewer maskable tokens), split by fixed counts: the first
    ``round(0.8 k)`` of them ``[MASK]``, up to ``round(0.9 k)`` random, the rest kept, as
    Cramming's collator does (JonasGeiping/cramming, cramming/backend/utils.py);
    otherwise each token is selected, and its corruption chosen, independently.

    Special tokens are never selected nor drawn as random replacements, unless
    ``mask_special_tokens``: then every position may be selected and replacements come
    from the whole vocabulary, which is what Cramming's collator does (it ignores the
    special-tokens mask, so ``[CLS]``/``[SEP]``/``[PAD]`` become prediction targets).

    All randomness comes from the given source (a
    :class:`~cramming.data.keyed_random.KeyedRandom` keyed by row, or a
    ``torch.Generator``), so equal sources give equal outputs.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, special_token_ids: Iterable[int],
                 mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                 exact_count: bool = False, mask_special_tokens: bool = False):
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
            raise ValueError(f"Invalid mask_token_prob={mask_token_prob}, "
                             f"random_token_prob={random_token_prob}: need p >= 0, sum <= 1.")
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.special_ids = torch.tensor(sorted(set(special_token_ids) | {mask_token_id}))
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob
        self.exact_count = exact_count
        self.mask_special_tokens = mask_special_tokens
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        if not mask_special_tokens:
            is_special[self.special_ids[self.special_ids < vocab_size]] = True
        self.random_candidates = torch.nonzero(~is_special).flatten()

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, **kwargs) -> MLMMasker:
        """Masker for ``tokenizer``'s vocabulary, ``[MASK]`` and special tokens."""
        return cls(len(tokenizer), tokenizer.mask_token_id, tokenizer.all_special_ids, **kwargs)

    def count_per_row(self, mask_prob: float, seq_length: int) -> int | None:
        """Selections per row in exact-count mode (None: random count)."""
        return round(mask_prob * seq_length) if self.exact_count else None

    def maskable(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions that may be selected (bool, like ``input_ids``)."""
        if self.mask_special_tokens:
            return torch.ones_like(input_ids, dtype=torch.bool)
        return ~torch.isin(input_ids, self.special_ids.to(input_ids.device))

    def _plan(self, maskable: torch.Tensor, mask_prob: float,
              random: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected positions and what each becomes (``MASK`` / ``RANDOM`` / ``KEEP``)."""
        shape = tuple(maskable.shape)
        scores = random.uniform(shape).to(maskable.device)
        if not self.exact_count:
            selected = maskable & (scores < mask_prob)
            return selected, self._actions(random.uniform(shape).to(maskable.device))
        # the k lowest-scoring maskable positions per row; unmaskable ones score last
        scores = scores.masked_fill(~maskable, 2.0)
        count = self.count_per_row(mask_prob, shape[1])
        ranks = scores.argsort(dim=1, stable=True).argsort(dim=1)
        selected = (ranks < count) & maskable
        # fixed counts by rank among the selected: round(0.8 c) [MASK], to round(0.9 c) random
        counts = selected.sum(dim=1)
        bounds = {int(c): (round(self.mask_token_prob * int(c)),
                           round((self.mask_token_prob + self.random_token_prob) * int(c)))
                  for c in counts.unique()}
        first = torch.tensor([bounds[int(c)][0] for c in counts], device=maskable.device)
        second = torch.tensor([bounds[int(c)][1] for c in counts], device=maskable.device)
        actions = torch.full(shape, KEEP, dtype=torch.long, device=maskable.device)
        actions[ranks < second[:, None]] = RANDOM
        actions[ranks < first[:, None]] = MASK
        return selected, actions

    def _actions(self, draws: torch.Tensor) -> torch.Tensor:
        """``MASK`` below ``mask_token_prob``, then ``RANDOM``, the rest ``KEEP``."""
        actions = torch.full_like(draws, KEEP, dtype=torch.long)
        actions[draws < self.mask_token_prob + self.random_token_prob] = RANDOM
        actions[draws < self.mask_token_prob] = MASK
        return actions

    def __call__(self, input_ids: torch.Tensor, mask_prob: float,
                 random: RandomSource | torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupted ``input_ids`` and ``labels`` (-100 except at selected positions)."""
        random = as_random(random)
        device = input_ids.device
        shape = tuple(input_ids.shape)
        selected, actions = self._plan(self.maskable(input_ids), mask_prob, random)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        pick = random.randint(len(self.random_candidates), shape)
        random_tokens = self.random_candidates[pick].to(device)
        masked = input_ids.masked_fill(selected & (actions == MASK), self.mask_token_id)
        masked = torch.where(selected & (actions == RANDOM), random_tokens.to(input_ids.dtype),
                             masked)
        return masked, labels
