"""Masked-language-model corruption of packed rows (BERT's 80/10/10 recipe)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

from cramming.data.keyed_random import RandomSource, as_random

IGNORE_INDEX = -100  # label of positions that are not predicted


class MLMMasker:
    """Select positions to predict and corrupt them; special tokens are never selected.

    Of the selected positions, ``mask_token_prob`` become ``[MASK]``, ``random_token_prob``
    a random non-special token, and the rest keep their token. With ``exact_count`` each row
    gets exactly ``round(mask_prob * row length)`` selections among its maskable positions
    (fewer only if the row has fewer maskable tokens), as Cramming's collator does
    (JonasGeiping/cramming, cramming/backend/utils.py); otherwise each token is selected
    independently with probability ``mask_prob``. All randomness comes from the given source
    (a :class:`~cramming.data.keyed_random.KeyedRandom` keyed by row, or a
    ``torch.Generator``), so equal sources give equal outputs.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, special_token_ids: Iterable[int],
                 mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                 exact_count: bool = False):
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
            raise ValueError(f"Invalid mask_token_prob={mask_token_prob}, "
                             f"random_token_prob={random_token_prob}: need p >= 0, sum <= 1.")
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.special_ids = torch.tensor(sorted(set(special_token_ids) | {mask_token_id}))
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob
        self.exact_count = exact_count
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[self.special_ids[self.special_ids < vocab_size]] = True
        self.random_candidates = torch.nonzero(~is_special).flatten()

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, **kwargs) -> MLMMasker:
        """Masker for ``tokenizer``'s vocabulary, ``[MASK]`` and special tokens."""
        return cls(len(tokenizer), tokenizer.mask_token_id, tokenizer.all_special_ids, **kwargs)

    def count_per_row(self, mask_prob: float, seq_length: int) -> int | None:
        """Selections per row in exact-count mode (None: random count)."""
        return round(mask_prob * seq_length) if self.exact_count else None

    def _select(self, maskable: torch.Tensor, mask_prob: float,
                random: RandomSource) -> torch.Tensor:
        scores = random.uniform(tuple(maskable.shape)).to(maskable.device)
        if not self.exact_count:
            return maskable & (scores < mask_prob)
        # the k lowest-scoring maskable positions per row; unmaskable ones score last
        scores = scores.masked_fill(~maskable, 2.0)
        count = self.count_per_row(mask_prob, maskable.shape[1])
        ranks = scores.argsort(dim=1, stable=True).argsort(dim=1)
        return (ranks < count) & maskable

    def __call__(self, input_ids: torch.Tensor, mask_prob: float,
                 random: RandomSource | torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupted ``input_ids`` and ``labels`` (-100 except at selected positions)."""
        random = as_random(random)
        device = input_ids.device
        shape = tuple(input_ids.shape)
        maskable = ~torch.isin(input_ids, self.special_ids.to(device))
        selected = self._select(maskable, mask_prob, random)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

        kind = random.uniform(shape).to(device)
        use_mask = selected & (kind < self.mask_token_prob)
        use_random = selected & ~use_mask & (kind < self.mask_token_prob + self.random_token_prob)
        pick = random.randint(len(self.random_candidates), shape)
        random_tokens = self.random_candidates[pick].to(device)

        masked = input_ids.masked_fill(use_mask, self.mask_token_id)
        masked = torch.where(use_random, random_tokens.to(input_ids.dtype), masked)
        return masked, labels
