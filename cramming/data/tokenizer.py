"""Train a BERT-style tokenizer on the corpus, or load a saved / hub one.

Every tokenizer we build has ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3 and
``[MASK]`` = 4, BERT normalisation (clean text, optional lowercasing and accent stripping),
BERT pre-tokenisation (split on whitespace and punctuation), and a post-processor that
encodes ``[CLS] a [SEP]`` and pairs as ``[CLS] a [SEP] b [SEP]`` (token types 0 / 1).

WordPiece training is deterministic (same corpus, same tokenizer). The ``tokenizers``
trainers break ties in hash-map order, so BPE merges of equal count and Unigram scores can
differ slightly between runs; the data cache keeps the tokenizer a run actually used.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cramming.config.schema import DataConfig
from cramming.errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUBWORD_PREFIX = "##"


def _model_and_trainer(cfg: DataConfig) -> tuple[models.Model, trainers.Trainer]:
    common = dict(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=True)
    if cfg.tokenizer == "wordpiece":
        return (models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=SUBWORD_PREFIX),
                trainers.WordPieceTrainer(continuing_subword_prefix=SUBWORD_PREFIX, **common))
    if cfg.tokenizer == "bpe":
        # "##" continuation marks keep word boundaries, so the WordPiece decoder fits BPE too
        return (models.BPE(unk_token="[UNK]", continuing_subword_prefix=SUBWORD_PREFIX),
                trainers.BpeTrainer(continuing_subword_prefix=SUBWORD_PREFIX, **common))
    if cfg.tokenizer == "unigram":
        return models.Unigram(), trainers.UnigramTrainer(unk_token="[UNK]", **common)
    raise DataError(f"Cannot train a tokenizer of type '{cfg.tokenizer}': use wordpiece, bpe "
                    "or unigram (or tokenizer=pretrained with data.pretrained_tokenizer).")


def _canonical_ids(tokenizer: Tokenizer) -> Tokenizer:
    """Renumber the vocabulary deterministically.

    Trainers assign ids to equally ranked entries in hash-map order, which changes from run
    to run; re-training on the same corpus must give the same ids (and so the same cache).
    """
    state = json.loads(tokenizer.to_str())
    model = state["model"]
    if model["type"] == "Unigram":  # list of [piece, log-probability]; ids are positions
        special, rest = model["vocab"][:len(SPECIAL_TOKENS)], model["vocab"][len(SPECIAL_TOKENS):]
        model["vocab"] = special + sorted(rest, key=lambda entry: (-entry[1], entry[0]))
    else:  # WordPiece / BPE: token -> id; BPE merges are stored as strings
        rest = sorted(token for token in model["vocab"] if token not in SPECIAL_TOKENS)
        model["vocab"] = {token: i for i, token in enumerate(SPECIAL_TOKENS + rest)}
    return Tokenizer.from_str(json.dumps(state))


def train_tokenizer(documents: Iterable[str], cfg: DataConfig) -> PreTrainedTokenizerFast:
    """Train a ``cfg.tokenizer`` tokenizer with ``cfg.vocab_size`` entries on ``documents``.

    At most ``cfg.tokenizer_train_documents`` documents are used (all if None).
    """
    model, trainer = _model_and_trainer(cfg)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                   strip_accents=cfg.strip_accents, lowercase=cfg.lowercase),
    ])
    if cfg.tokenizer == "unigram":
        # Unigram pieces carry no continuation mark: keep word boundaries as metaspace "▁"
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace()])
        tokenizer.decoder = decoders.Metaspace()
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX)

    documents = itertools.islice(documents, cfg.tokenizer_train_documents)
    tokenizer.train_from_iterator(documents, trainer=trainer)
    tokenizer = _canonical_ids(tokenizer)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    if list(ids.values()) != list(range(len(SPECIAL_TOKENS))):
        raise DataError(f"Tokenizer training assigned unexpected special token ids {ids}.")
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise DataError("Tokenizer training found no text: the documents are empty.")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=cfg.seq_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a ``save_pretrained`` folder or, online, a hub name."""
    path = Path(name_or_path).expanduser()
    local = path.is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if local else str(name_or_path))
    except Exception as error:  # noqa: BLE001 - missing files, hub and network errors alike
        where = f"the folder {path}" if local else f"'{name_or_path}' (no such local folder; hub)"
        reason = (str(error).splitlines() or [""])[0]
        raise DataError(f"Unknown tokenizer: cannot load a tokenizer from {where}: "
                        f"{type(error).__name__}: {reason}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"Tokenizer '{name_or_path}' has no fast (Rust) implementation.")
    return tokenizer
