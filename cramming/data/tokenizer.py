"""Train a BERT-style tokenizer on the corpus, or load a saved / hub one.

Every tokenizer we build has ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3 and
``[MASK]`` = 4, BERT normalisation (clean text, optional lowercasing and accent stripping),
BERT pre-tokenisation (split on whitespace and punctuation), and a post-processor that
encodes ``[CLS] a [SEP]`` and pairs as ``[CLS] a [SEP] b [SEP]`` (token types 0 / 1).

Training is reproducible: the same documents give the same ``tokenizer.json`` bytes in
every process. The ``tokenizers`` BPE / WordPiece trainer numbers the ``##c`` continuation
characters in hash-map order (seeded at random per process) and breaks ties between merges
of equal count by those numbers; we register the ``##c`` entries up front, in sorted order,
so the numbering and every tie-break are fixed. The Unigram trainer sums floating-point
statistics in hash-map order; its scores are rounded and its ids sorted afterwards (see
:func:`_canonical_ids`). The data cache keeps the tokenizer a run used, and checkpoints
record its digest (:mod:`cramming.data.identity`).
"""

from __future__ import annotations

import itertools
import json
import logging
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from cramming.errors import CrammingError, DataError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUBWORD_PREFIX = "##"
UNIGRAM_SCORE_DECIMALS = 6
UNIGRAM_PENALTY_STEP = 1e-4  # tokenizers' UnigramTrainer::finalize


def _model_and_trainer(cfg: DataConfig, registered: Sequence[str] = ()
                       ) -> tuple[models.Model, trainers.Trainer]:
    """Model and trainer; ``registered`` entries are numbered right after the special tokens."""
    common = dict(vocab_size=cfg.vocab_size, special_tokens=[*SPECIAL_TOKENS, *registered],
                  show_progress=True)
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


def _never_continues(char: str) -> bool:
    """Whether the BERT pre-tokenizer always splits ``char`` off (space, punctuation, CJK)."""
    code = ord(char)
    return (char.isspace() or unicodedata.category(char).startswith("P")
            or (code < 128 and not char.isalnum())
            or any(low <= code <= high for low, high in _CJK_RANGES))


# Code points BertNormalizer surrounds with spaces (handle_chinese_chars).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


class ReadAgain:
    """A re-iterable view of a document stream: ``make()`` is called for every pass."""

    def __init__(self, make: Callable[[], Iterable[str]]):
        self.make = make

    def __iter__(self) -> Iterator[str]:
        return iter(self.make())


class CharacterScan:
    """Characters of the training words, collected while the documents stream to the trainer.

    ``characters``: every character of the normalized text (spaces aside); ``continuing``:
    those seen inside a word (not first), for which BPE / WordPiece training makes a ``##c``
    entry. A document is pre-tokenized only while it holds a character not yet resolved,
    so after the first documents the scan costs one normalization per document.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.normalizer, self.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        self.characters: set[str] = set()
        self.continuing: set[str] = set()
        self._resolved: set[str] = set()

    def scan(self, documents: Iterable[str]) -> Iterator[str]:
        """Yield ``documents`` unchanged, noting their characters on the way."""
        for document in documents:
            text = self.normalizer.normalize_str(document)
            present = set(text)
            self.characters |= present
            unresolved = present - self._resolved
            if unresolved:
                self._resolved |= {char for char in unresolved if _never_continues(char)}
                if unresolved - self._resolved:
                    for word, _ in self.pre_tokenizer.pre_tokenize_str(text):
                        self.continuing.update(word[1:])
                    self._resolved |= self.continuing
            yield document

    def minimum_vocab_size(self, kind: str) -> int:
        """Entries the special tokens and the characters alone need for a ``kind`` tokenizer."""
        characters = {char for char in self.characters if not char.isspace()}
        # unigram: "▁", and one more (its trainer keeps every piece when the vocabulary
        # would hold exactly the special tokens and the characters)
        extra = len(self.continuing) if kind in ("wordpiece", "bpe") else 2
        return len(SPECIAL_TOKENS) + len(characters) + extra


def _sorted_penalties(pieces: list[list]) -> list[list]:
    """Hand out the Unigram trainer's penalty scores in sorted order of the characters.

    Characters that EM dropped are put back with the lowest score plus 0, 1e-4, 2e-4, ...
    in hash-set order. The single characters on that ladder (plus any that share a rung)
    are the same in every run: give them the ladder's scores in alphabetical order.
    """
    if not pieces:
        return pieces
    lowest = min(score for _, score in pieces)
    singles = [(piece, score) for piece, score in pieces if len(piece) == 1]
    run: list[tuple[str, float]] = []
    for rung in itertools.count():
        target = lowest + rung * UNIGRAM_PENALTY_STEP
        found = [entry for entry in singles if abs(entry[1] - target) <= 2e-6]
        if not found:
            break
        run.extend(found)
    scores = sorted(score for _, score in run)
    new_scores = dict(zip(sorted(piece for piece, _ in run), scores))
    return [[piece, new_scores.get(piece, score)] for piece, score in pieces]


def _canonical_ids(tokenizer: Tokenizer) -> Tokenizer:
    """Renumber the vocabulary deterministically.

    Trainers assign ids to equally ranked entries in hash-map order, which changes from run
    to run; re-training on the same corpus must give the same ids (and so the same cache).
    """
    state = json.loads(tokenizer.to_str())
    # entries registered only to fix their numbering are ordinary vocabulary, not special
    state["added_tokens"] = [added for added in state["added_tokens"]
                             if added["content"] in SPECIAL_TOKENS]
    model = state["model"]
    if model["type"] == "Unigram":  # list of [piece, log-probability]; ids are positions
        special, rest = model["vocab"][:len(SPECIAL_TOKENS)], model["vocab"][len(SPECIAL_TOKENS):]
        # scores carry float noise from summation order: keep 6 decimals
        rest = [[piece, round(score, UNIGRAM_SCORE_DECIMALS)] for piece, score in rest]
        rest = _sorted_penalties(rest)
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

    limit = cfg.tokenizer_train_documents
    scan = CharacterScan(tokenizer)
    if cfg.tokenizer in ("wordpiece", "bpe"):
        # Fix the numbering of the "##c" entries (see the module docstring): learn them in
        # a first pass, then train with them registered first. A one-pass iterator is kept
        # in memory; pass a re-iterable (e.g. :class:`ReadAgain`) to read twice instead.
        if iter(documents) is documents:
            documents = list(itertools.islice(documents, limit))
        for _ in scan.scan(itertools.islice(documents, limit)):
            pass
        registered = sorted(SUBWORD_PREFIX + char for char in scan.continuing)
        model, trainer = _model_and_trainer(cfg, registered)
        tokenizer.model = model
        stream = itertools.islice(documents, limit)
    else:
        stream = scan.scan(itertools.islice(documents, limit))
    try:
        tokenizer.train_from_iterator(stream, trainer=trainer)
    except CrammingError:
        raise
    except Exception as error:  # noqa: BLE001 - the Rust trainer's errors
        if "not large enough" in str(error) or "too small" in str(error).lower():
            raise _vocab_too_small(cfg, scan.minimum_vocab_size(cfg.tokenizer)) from None
        raise DataError(f"Tokenizer training failed: {type(error).__name__}: {error}") from None
    if cfg.tokenizer in ("wordpiece", "bpe"):
        missed = {token for token in tokenizer.get_vocab() if len(token) == 3
                  and token.startswith(SUBWORD_PREFIX)} - set(registered)
        if missed:  # a character our punctuation table and the Rust one disagree on
            log.warning("Continuation entries %s were not registered before training: ties "
                        "involving them may differ between builds.", sorted(missed)[:10])
    if tokenizer.get_vocab_size() > cfg.vocab_size:  # all characters kept, nothing learnt
        raise _vocab_too_small(cfg, max(tokenizer.get_vocab_size() if cfg.tokenizer != "unigram"
                                        else 0, scan.minimum_vocab_size(cfg.tokenizer)))
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


def _vocab_too_small(cfg: DataConfig, needed: int) -> DataError:
    return DataError(
        f"data.vocab_size={cfg.vocab_size} is too small for a {cfg.tokenizer} tokenizer of "
        f"this corpus: the {len(SPECIAL_TOKENS)} special tokens and the corpus's characters "
        f"alone need {needed} entries. Set data.vocab_size to at least {needed} (typical: "
        f"8192 to 32768).")


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a ``save_pretrained`` folder, a ``tokenizer.json`` file
    (e.g. GPT-BERT's, see :mod:`cramming.data.gpt_bert`) or, online, a hub name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        from cramming.data.gpt_bert import load_tokenizer_file

        return load_tokenizer_file(path)
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
