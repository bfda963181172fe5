"""Masked-language-model corruption of packed rows (BERT's 80/10/10 recipe)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label of positions that are not predicted


class MLMMasker:
    """Select positions to predict and corrupt them; special tokens are never selected.

    Of the selected positions, ``mask_token_prob`` become ``[MASK]``, ``random_token_prob``
    a random non-special token, and the rest keep their token. With ``exact_count`` each row
    gets exactly ``round(mask_prob * maskable tokens in the row)`` selections, otherwise each
    token is selected independently with probability ``mask_prob``. All randomness comes from
    the given ``torch.Generator``, so equal generator states give equal outputs.
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

    def _select(self, maskable: torch.Tensor, mask_prob: float,
                generator: torch.Generator) -> torch.Tensor:
        scores = torch.rand(maskable.shape, generator=generator, device=generator.device)
        scores = scores.to(maskable.device)
        if not self.exact_count:
            return maskable & (scores < mask_prob)
        # the k lowest-scoring maskable positions per row; unmaskable ones score last
        scores = scores.masked_fill(~maskable, 2.0)
        counts = torch.round(maskable.sum(dim=1) * mask_prob).long()
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return ranks < counts[:, None]

    def __call__(self, input_ids: torch.Tensor, mask_prob: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupted ``input_ids`` and ``labels`` (-100 except at selected positions)."""
        device = input_ids.device
        maskable = ~torch.isin(input_ids, self.special_ids.to(device))
        selected = self._select(maskable, mask_prob, generator)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

        kind = torch.rand(input_ids.shape, generator=generator, device=generator.device).to(device)
        use_mask = selected & (kind < self.mask_token_prob)
        use_random = selected & ~use_mask & (kind < self.mask_token_prob + self.random_token_prob)
        pick = torch.randint(len(self.random_candidates), input_ids.shape, generator=generator,
                             device=generator.device)
        random_tokens = self.random_candidates.to(generator.device)[pick].to(device)

        masked = input_ids.masked_fill(use_mask, self.mask_token_id)
        masked = torch.where(use_random, random_tokens.to(input_ids.dtype), masked)
        return masked, labels
