"""GPT-BERT's data files as they are (ltgoslo/gpt-bert).

* ``.bin``: what ``corpus_tokenization/tokenize_corpus.py`` writes, a ``torch.save``-d
  list with one ``int16`` tensor of token ids per document (no special tokens; ``int16``
  limits its vocabularies to 32768 entries). Read with ``weights_only=True``, so a crafted
  file runs no code, and checked against the tokenizer's size.
* ``tokenizer.json``: a ``tokenizers`` file from ``tokenizer_creation/create_tokenizer.py``
  with ``<unk> <s> </s> <pad> <mask>`` and ``<special_0..10>`` (ids 0..15). Loaded with
  ``<s>`` as ``[CLS]``, ``</s>`` as ``[SEP]`` and every ``<special_i>`` as a special token,
  so masking never selects ids below 16, as GPT-BERT's ``n_special_tokens=16``.
* JSONL whose lines are JSON strings: read by ``data.source=jsonl`` (see
  :func:`cramming.data.sources.read_jsonl`).

Use: ``data=gpt-bert data.paths=[train_100M_tokenized.bin]
data.pretrained_tokenizer=tokenizer_100M.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from cramming.errors import DataError

# role -> GPT-BERT's token (tokenizer_creation/create_tokenizer.py)
GPT_BERT_ROLES = {"unk_token": "<unk>", "cls_token": "<s>", "bos_token": "<s>",
                  "sep_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>",
                  "mask_token": "<mask>"}
_EXTRA_SPECIAL = re.compile(r"<special_\d+>")


def load_tokenizer_file(path: str | Path) -> PreTrainedTokenizerFast:
    """A ``tokenizers`` ``tokenizer.json`` file as a fast tokenizer with its special roles.

    GPT-BERT's tokens (``<s>``, ``</s>``, ``<mask>``, ``<pad>``, ``<unk>``, ``<special_i>``)
    and BERT's (``[CLS]``, ``[SEP]``, ``[MASK]``, ``[PAD]``, ``[UNK]``) are recognised;
    a file with neither set is refused in one line.
    """
    path = Path(path).expanduser()
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - missing file, bad JSON, unknown model alike
        reason = (str(error).splitlines() or [""])[0]
        raise DataError(f"Cannot load the tokenizer file {path}: {type(error).__name__}: "
                        f"{reason}") from None
    vocab = backend.get_vocab()
    bert = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "pad_token": "[PAD]", "mask_token": "[MASK]"}
    for roles in (GPT_BERT_ROLES, bert):
        if all(token in vocab for token in roles.values()):
            break
    else:
        raise DataError(f"Tokenizer file {path} has neither GPT-BERT's special tokens "
                        f"({', '.join(sorted(set(GPT_BERT_ROLES.values())))}) nor BERT's "
                        f"({', '.join(bert.values())}): masking and packing need them.")
    extra = sorted((token for token in vocab if _EXTRA_SPECIAL.fullmatch(token)),
                   key=vocab.__getitem__)
    return PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=extra,
                                   **roles)


def read_documents(path: str | Path, vocab_size: int) -> Iterator[list[int]]:
    """Token-id documents of a GPT-BERT ``.bin`` file, checked against ``vocab_size``.

    The whole file is read and checked before the first document is yielded, so a bad
    file fails before anything is written.
    """
    path = Path(path).expanduser()
    try:
        documents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refuses many things, all alike
        reason = (str(error).splitlines() or [""])[0]
        raise DataError(f"{path} is not a GPT-BERT .bin file (a torch.save-d list of int16 "
                        f"tensors, one per document): {type(error).__name__}: {reason}") from None
    if not isinstance(documents, (list, tuple)):
        raise DataError(f"{path} holds a {type(documents).__name__}, not GPT-BERT's list of "
                        f"token tensors (one per document).")
    arrays = []
    for number, document in enumerate(documents):
        if not isinstance(document, torch.Tensor) or document.dim() != 1 or \
                document.dtype.is_floating_point or document.dtype == torch.bool:
            kind = (f"a {document.dtype} tensor of shape {tuple(document.shape)}"
                    if isinstance(document, torch.Tensor) else type(document).__name__)
            raise DataError(f"{path}, document {number}: {kind}, not a 1-d integer tensor "
                            f"of token ids.")
        ids = document.numpy().astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise DataError(f"{path}, document {number}: token id {bad} is outside "
                            f"the tokenizer's {vocab_size} entries: was it made with another "
                            f"tokenizer? Set data.pretrained_tokenizer to the one it was.")
        arrays.append(ids)
    for ids in arrays:
        yield ids.tolist()
