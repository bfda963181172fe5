"""Tokenize documents and pack them into fixed-length rows, then shuffle and split.

Documents are concatenated with ``[SEP]`` after each one and cut into rows of exactly
``seq_length`` tokens: ``[CLS]`` followed by ``seq_length - 1`` content tokens. The last
partial row is dropped. A row's example id is its index in this unshuffled order, so it
identifies the same tokens however the rows are later shuffled or split.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from cramming.errors import DataError

COPY_CHUNK_ROWS = 1 << 16


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest array dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


@contextlib.contextmanager
def _tokenizers_parallelism():
    """Let the Rust tokenizer use every core here, then restore the previous setting.

    Left unset afterwards, a later ``fork`` (e.g. DataLoader workers) makes tokenizers
    disable its thread pool in the child instead of deadlocking.
    """
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def tokenize_documents(documents: Iterable[str], tokenizer: PreTrainedTokenizerFast,
                       batch_size: int = 1000) -> Iterator[list[int]]:
    """Token ids of every document, without special tokens (batched, multi-threaded)."""
    backend = tokenizer.backend_tokenizer
    documents = iter(documents)
    with _tokenizers_parallelism():
        while batch := list(itertools.islice(documents, batch_size)):
            for encoding in backend.encode_batch(batch, add_special_tokens=False):
                yield encoding.ids


class RowWriter:
    """Packs token streams into ``[CLS] + (L-1) tokens`` rows appended to a raw binary file."""

    def __init__(self, path: Path, seq_length: int, cls_id: int, sep_id: int, dtype: np.dtype):
        if seq_length < 2:
            raise DataError(f"data.seq_length must be at least 2, got {seq_length}.")
        self.path, self.seq_length, self.dtype = path, seq_length, dtype
        self.cls_id, self.sep_id = cls_id, sep_id
        self.rows = self.documents = self.tokens = 0
        self._pending: list[int] = []
        self._file = open(path, "wb")

    def add(self, ids: list[int]) -> None:
        """Append one document (its ``[SEP]`` is added here)."""
        self._pending.extend(ids)
        self._pending.append(self.sep_id)
        self.documents += 1
        self.tokens += len(ids) + 1
        width = self.seq_length - 1
        full = len(self._pending) // width
        if full >= 64 or (full and len(self._pending) > 1 << 20):
            self._flush(full * width)

    def _flush(self, count: int) -> None:
        content = np.asarray(self._pending[:count], dtype=np.int64).reshape(-1, self.seq_length - 1)
        rows = np.empty((len(content), self.seq_length), dtype=self.dtype)
        rows[:, 0] = self.cls_id
        rows[:, 1:] = content
        rows.tofile(self._file)
        self.rows += len(rows)
        del self._pending[:count]

    def close(self) -> np.memmap | np.ndarray:
        """Flush complete rows, drop the partial one and return all rows ``[N, L]``."""
        width = self.seq_length - 1
        full = len(self._pending) // width
        if full:
            self._flush(full * width)
        self._pending = []
        self._file.close()
        if self.rows == 0:
            return np.zeros((0, self.seq_length), dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.rows, self.seq_length))


def split_rows(num_rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled example ids of the training and validation rows.

    The validation split has ``round(val_fraction * num_rows)`` rows, at least 1 when
    ``val_fraction > 0``. Raises :class:`DataError` if that leaves no training row.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
    order = np.random.default_rng(seed).permutation(num_rows).astype(np.int64)
    num_val = max(1, round(val_fraction * num_rows)) if val_fraction > 0 else 0
    if num_rows - num_val < 1:
        raise DataError(f"{num_rows} packed rows cannot give a training row and "
                        f"{num_val} validation rows.")
    return order[num_val:], order[:num_val]


def rows_needed(val_fraction: float) -> int:
    """Fewest packed rows that give at least one training (and validation) row."""
    return 2 if val_fraction > 0 else 1


def write_split(path_prefix: Path, rows: np.ndarray, example_ids: np.ndarray) -> None:
    """Write ``rows[example_ids]`` to ``<prefix>_input_ids.npy``, ids to ``_example_ids.npy``."""
    out = np.lib.format.open_memmap(f"{path_prefix}_input_ids.npy", mode="w+", dtype=rows.dtype,
                                    shape=(len(example_ids), rows.shape[1]))
    for start in range(0, len(example_ids), COPY_CHUNK_ROWS):
        chunk = example_ids[start:start + COPY_CHUNK_ROWS]
        out[start:start + len(chunk)] = rows[chunk]
    out.flush()
    del out
    np.save(f"{path_prefix}_example_ids.npy", example_ids)


def pack_documents(documents: Iterable[str], tokenizer: PreTrainedTokenizerFast, work_dir: Path,
                   seq_length: int, batch_size: int = 1000,
                   progress: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """Tokenize and pack ``documents``; returns the rows ``[N, seq_length]`` and counts.

    The rows live in ``work_dir/packed.bin`` (a memmap), which the caller may delete after use.
    """
    writer = RowWriter(work_dir / "packed.bin", seq_length, tokenizer.cls_token_id,
                       tokenizer.sep_token_id, token_dtype(len(tokenizer)))
    stream = tokenize_documents(documents, tokenizer, batch_size)
    for ids in tqdm(stream, desc="tokenizing", unit=" docs", disable=not progress):
        writer.add(ids)
    rows = writer.close()
    return rows, {"documents": writer.documents, "tokens": writer.tokens, "rows": writer.rows}
