"""Pre-tokenized binary corpora: one flat token file plus a document index.

A corpus folder (written by ``python -m cramming.data.tokenize_corpus``) holds::

    tokens.bin     every document's token ids back to back (uint16, or uint32 for
                   vocabularies above 65536), without special tokens
    index.npy      int64 [documents + 1]: document d is tokens[index[d]:index[d + 1]]
    meta.json      dtype, counts, tokenizer and source description
    tokenizer/     the tokenizer that produced the ids (save_pretrained folder)

As a data source (``data.source=binary data.paths=[<folder>, ...]``) the documents are
packed like any text corpus (``[CLS]`` + tokens, ``[SEP]`` after each document) with the
folder's own tokenizer, so no text is re-tokenized.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from cramming.data.packing import RowWriter, token_dtype
from cramming.data.tokenizer import load_tokenizer
from cramming.errors import DataError

TOKENS, INDEX, META, TOKENIZER = "tokens.bin", "index.npy", "meta.json", "tokenizer"


def binary_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def write_binary_corpus(folder: str | Path, documents: Iterable[list[int]],
                        tokenizer: PreTrainedTokenizerFast, source: str = "") -> dict:
    """Write token-id documents as a corpus folder; returns the meta data written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = binary_dtype(len(tokenizer))
    offsets = [0]
    with open(folder / TOKENS, "wb") as handle:
        for ids in documents:
            np.asarray(ids, dtype=dtype).tofile(handle)
            offsets.append(offsets[-1] + len(ids))
    np.save(folder / INDEX, np.asarray(offsets, dtype=np.int64))
    tokenizer.save_pretrained(str(folder / TOKENIZER))
    meta = {"dtype": dtype.name, "documents": len(offsets) - 1, "tokens": offsets[-1],
            "vocab_size": len(tokenizer), "source": source}
    (folder / META).write_text(json.dumps(meta, indent=2))
    return meta


class BinaryCorpus:
    """A memory-mapped corpus folder: ``len`` documents, each an array of token ids."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        try:
            self.meta = json.loads((self.folder / META).read_text())
            self.index = np.load(self.folder / INDEX)
            self.tokens = np.memmap(self.folder / TOKENS, dtype=np.dtype(self.meta["dtype"]),
                                    mode="r") if self.meta["tokens"] else np.zeros(0, np.uint16)
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"{self.folder} is not a binary corpus folder (tokens.bin, "
                            f"index.npy, meta.json; build one with python -m "
                            f"cramming.data.tokenize_corpus): {error}") from None
        if len(self.index) != self.meta["documents"] + 1 or \
                self.index[-1] != len(self.tokens):
            raise DataError(f"Binary corpus {self.folder} is corrupt: index and token file "
                            f"disagree ({self.index[-1]} vs {len(self.tokens)} tokens).")

    def __len__(self) -> int:
        return len(self.index) - 1

    def document(self, number: int) -> np.ndarray:
        """Token ids of document ``number``."""
        return self.tokens[self.index[number]:self.index[number + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for number in range(len(self)):
            yield self.document(number)


def binary_tokenizer(paths: list[str]) -> PreTrainedTokenizerFast:
    """The tokenizer of the binary corpus folders (they must all share one)."""
    if not paths:
        raise DataError("data.source=binary needs data.paths=[<corpus folder>, ...].")
    tokenizers = [load_tokenizer(Path(p).expanduser() / TOKENIZER) for p in paths]
    vocab = tokenizers[0].get_vocab()
    if any(t.get_vocab() != vocab for t in tokenizers[1:]):
        raise DataError(f"The binary corpora {paths} were tokenized with different tokenizers.")
    return tokenizers[0]


def pack_token_documents(documents: Iterable[list[int]], work_dir: Path, seq_length: int,
                         tokenizer: PreTrainedTokenizerFast, max_documents: int | None = None
                         ) -> tuple[np.ndarray, dict[str, int]]:
    """Pack token-id documents into rows, like ``pack_documents`` does with text."""
    writer = RowWriter(work_dir / "packed.bin", seq_length, tokenizer.cls_token_id,
                       tokenizer.sep_token_id, token_dtype(len(tokenizer)))
    for document in itertools.islice(documents, max_documents):
        writer.add(document)
    rows = writer.close()
    return rows, {"documents": writer.documents, "tokens": writer.tokens, "rows": writer.rows}


def pack_binary_corpus(paths: list[str], work_dir: Path, seq_length: int,
                       tokenizer: PreTrainedTokenizerFast,
                       max_documents: int | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Pack the documents of the corpus folders into rows."""
    documents = (document.tolist() for path in paths for document in BinaryCorpus(path))
    return pack_token_documents(documents, work_dir, seq_length, tokenizer, max_documents)
