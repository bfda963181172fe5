"""Examples -> token ids: ``[CLS] field1 [SEP] field2 [SEP] ... [SEP]``, every field kept.

Fields are tokenized separately (so character spans map to tokens exactly) and the
longest ones are shortened first when the sequence is too long. Position 0 is always
[CLS], which the pooler reads, even for single-sentence tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cramming.errors import DataError
from cramming.evaluation.tasks import Task


@dataclass
class Instance:
    """What the model sees for one training / scoring unit.

    ``sequences`` holds one token sequence, or one per choice (COPA). ``spans`` lists the
    [start, end) token ranges to pool, per sequence. ``example`` is the index of the
    source example (ReCoRD: several candidates share it).
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    spans: list[list[tuple[int, int]]]
    label: Any
    example: int
    candidate: str | None = None  # ReCoRD: the entity this sequence scores
    extra: dict = field(default_factory=dict)


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Longest-first truncation: the largest cap c with sum(min(len, c)) <= budget."""
    if sum(lengths) <= budget:
        return list(lengths)
    low, high = 0, max(lengths)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            low = mid
        else:
            high = mid - 1
    kept = [min(n, low) for n in lengths]
    # Hand leftover room to the earliest fields that were cut.
    room = budget - sum(kept)
    for i, n in enumerate(lengths):
        if room <= 0:
            break
        if n > kept[i]:
            kept[i] += 1
            room -= 1
    return kept


class FieldEncoder:
    """Tokenizes field texts once (cached) and assembles them into model inputs."""

    def __init__(self, tokenizer: Any, max_length: int, empty_second_segment: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        # One field -> [CLS] text [SEP] [SEP], as a pair with an empty second text.
        self.empty_second_segment = empty_second_segment
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        if self.cls_id is None or self.sep_id is None:
            raise DataError("The checkpoint's tokenizer has no [CLS] / [SEP] token; "
                            "fine-tuning needs both (cls_token and sep_token).")
        self._cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}

    def prepare(self, texts: Sequence[str]) -> None:
        """Tokenize all new ``texts`` in one fast batch call."""
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if not new:
            return
        # The Rust tokenizer directly: no special tokens, no length warning (we truncate).
        encodings = self.tokenizer.backend_tokenizer.encode_batch(new, add_special_tokens=False)
        for text, encoding in zip(new, encodings):
            self._cache[text] = (list(encoding.ids), list(encoding.offsets))

    def encode(self, fields: Sequence[str],
               char_spans: Sequence[tuple[int, int, int]] = ()) -> tuple[list[int], list[int],
                                                                          list[tuple[int, int]]]:
        """Token ids, token types and the token range of each (field, start, end) char span."""
        self.prepare(fields)
        pieces = [self._cache[text] for text in fields]
        empty = self.empty_second_segment and len(fields) == 1
        budget = self.max_length - len(fields) - 1 - empty  # [CLS] + one [SEP] per field
        if budget < len(fields):
            raise DataError(f"max_seq_length={self.max_length} is too short for "
                            f"{len(fields)} fields.")
        kept = fit_lengths([len(ids) for ids, _ in pieces], budget)
        input_ids, token_types, starts = [self.cls_id], [0], []
        for number, ((ids, _), keep) in enumerate(zip(pieces, kept)):
            starts.append(len(input_ids))
            input_ids += ids[:keep] + [self.sep_id]
            token_types += [0 if number == 0 else 1] * (keep + 1)
        if empty:
            input_ids.append(self.sep_id)
            token_types.append(1)
        spans = []
        for field_index, char_start, char_end in char_spans:
            offsets = pieces[field_index][1][:kept[field_index]]
            hits = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
            if hits:
                first, last = hits[0], hits[-1] + 1
            else:  # span truncated away (or empty): fall back to the field's last kept token
                first = max(kept[field_index] - 1, 0)
                last = first + 1
            spans.append((starts[field_index] + first, starts[field_index] + last))
        return input_ids, token_types, spans


def _single(encoder: FieldEncoder, fields: Sequence[str], label: Any, index: int,
            char_spans=()) -> Instance:
    ids, types, spans = encoder.encode(fields, char_spans)
    return Instance([ids], [types], [spans], label, index)


def encode_examples(task: Task, examples: Sequence[dict], tokenizer: Any,
                    max_length: int, encoder: FieldEncoder | None = None) -> list[Instance]:
    """Turn a split's examples into instances for ``task.kind``."""
    encoder = encoder or FieldEncoder(tokenizer, max_length)
    encoder.prepare([t for e in examples for t in e.get("texts", [])])
    instances: list[Instance] = []
    for index, example in enumerate(examples):
        if task.kind == "choice":
            sequences = [encoder.encode([*example["texts"], choice]) for choice in
                         example["choices"]]
            instances.append(Instance([s[0] for s in sequences], [s[1] for s in sequences],
                                      [s[2] for s in sequences], example["label"], index))
        elif task.kind == "record":
            gold = set(example.get("answers") or [])
            for entity in example["entities"]:
                query = example["query"].replace("@placeholder", entity)
                instance = _single(encoder, [example["passage"], query],
                                   float(entity in gold), index)
                instance.candidate = entity
                instances.append(instance)
        else:
            instances.append(_single(encoder, example["texts"], example["label"], index,
                                     example.get("spans", ())))
    return instances


def num_spans(task: Task) -> int:
    """Span representations the head concatenates to [CLS] (WiC: 2, WSC: 2)."""
    return 2 if task.kind == "span" else 0


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, L] N = sequences (instances x choices)
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    span_weights: torch.Tensor | None  # [N, S, L], rows sum to 1
    labels: torch.Tensor | None  # per instance

    def to(self, device: torch.device) -> Batch:
        tensors = (self.input_ids, self.attention_mask, self.token_type_ids, self.span_weights,
                   self.labels)
        return Batch(*(None if t is None else t.to(device, non_blocking=True) for t in tensors))


def collate(instances: Sequence[Instance], pad_id: int, regression: bool = False,
            with_labels: bool = True) -> Batch:
    """Pad to the longest sequence in the batch; choices are flattened in order."""
    sequences = [(ids, types, spans) for inst in instances
                 for ids, types, spans in zip(inst.input_ids, inst.token_type_ids, inst.spans)]
    length = max(len(ids) for ids, _, _ in sequences)
    n = len(sequences)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    token_types = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    n_spans = max(len(spans) for _, _, spans in sequences)
    weights = torch.zeros((n, n_spans, length)) if n_spans else None
    for row, (ids, types, spans) in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        token_types[row, :len(types)] = torch.tensor(types)
        mask[row, :len(ids)] = 1
        for s, (start, end) in enumerate(spans):
            weights[row, s, start:end] = 1.0 / max(end - start, 1)
    labels = None
    if with_labels and all(inst.label is not None for inst in instances):
        dtype = torch.float if regression else torch.long
        labels = torch.tensor([inst.label for inst in instances], dtype=dtype)
    return Batch(input_ids, mask, token_types, weights, labels)
